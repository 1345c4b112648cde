"""docs/operations.md documents every setting, in sync with sluice/settings.py."""

from __future__ import annotations

from pathlib import Path

from sluice.settings import Settings, reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_is_documented():
    text = DOC.read_text()
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in text]
    assert not missing, f"settings missing from docs/operations.md: {missing}"


def test_reference_table_is_generated_from_settings():
    text = DOC.read_text()
    block = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block == reference_markdown(), (
        "docs/operations.md is out of date: regenerate the table between the settings "
        "markers: .venv/bin/python scripts/settings_doc.py"
    )


def test_readme_links_the_operators_guide():
    readme = (DOC.parents[1] / "README.md").read_text()
    assert "docs/operations.md" in readme
