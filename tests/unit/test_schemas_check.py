"""``sluice schemas check``: the evolution rules over a schema tree."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from avro_schemas import SCHEMA_DIR
from avro_schemas.evolution import Problem, check_tree
from cli.schemas import app
from topics.taxonomy import FAMILIES

Change = Callable[[dict[str, Any]], None]


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def with_v2(tmp_path: Path, change: Change, family: str = "email") -> Path:
    root = copy_tree(tmp_path)
    schema = json.loads((root / family / "v1.avsc").read_text())
    change(schema)
    (root / family / "v2.avsc").write_text(json.dumps(schema, indent=2))
    return root


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def add_optional(schema: dict[str, Any]) -> None:
    schema["fields"].append(
        {"name": "campaign_name", "type": ["null", "string"], "default": None, "doc": "Name."}
    )


def add_required(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "campaign_name", "type": "string", "doc": "Name."})


def change_type(schema: dict[str, Any]) -> None:
    field(schema, "smtp_code")["type"] = ["null", "string"]


def messages(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


def test_shipped_tree_passes() -> None:
    assert check_tree(SCHEMA_DIR) == []


def test_optional_field_in_v2_passes(tmp_path: Path) -> None:
    assert check_tree(with_v2(tmp_path, add_optional)) == []


def test_required_field_without_default_fails(tmp_path: Path) -> None:
    problems = check_tree(with_v2(tmp_path, add_required))
    text = messages(problems)
    assert all(p.family == "email" and p.version == 2 for p in problems)
    assert "field 'campaign_name' has no default" in text
    assert "v2 cannot read data written with v1" in text  # FULL: backward part


def test_changed_field_type_fails(tmp_path: Path) -> None:
    problems = check_tree(with_v2(tmp_path, change_type))
    text = messages(problems)
    assert "v2 cannot read data written with v1" in text
    assert "readers of v1 cannot read data of v2" in text
    assert "smtp_code" in text or "/fields/" in text


def test_transitive_not_just_adjacent(tmp_path: Path) -> None:
    # v2 adds an optional string, v3 drops it, v4 brings it back as a long: every
    # neighbour pair is compatible, but v4 and v2 are not, and FULL_TRANSITIVE sees it.
    root = with_v2(tmp_path, add_optional)
    v3 = json.loads((root / "email" / "v1.avsc").read_text())
    v3["fields"].append(
        {"name": "step_count", "type": ["null", "int"], "default": None, "doc": "Steps."}
    )
    (root / "email" / "v3.avsc").write_text(json.dumps(v3))
    v4 = json.loads(json.dumps(v3))
    v4["fields"].append(
        {"name": "campaign_name", "type": ["null", "long"], "default": None, "doc": "Now a number."}
    )
    (root / "email" / "v4.avsc").write_text(json.dumps(v4))
    problems = check_tree(root)
    assert {(p.version, str(p).split(":")[1].strip()) for p in problems} == {
        (4, "v4 cannot read data written with v2"),
        (4, "readers of v2 cannot read data of v4"),
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["fields"].pop(0), "envelope field 'event_id' is missing"),
        (
            lambda s: s["fields"].insert(0, s["fields"].pop(3)),
            "must start with the envelope fields",
        ),
        (
            lambda s: field(s, "event_type").update(
                type={"type": "enum", "name": "T", "symbols": ["email_sent"]}
            ),
            "envelope field 'event_type' must have type \"string\"",
        ),
        (
            lambda s: field(s, "occurred_at").update(type="long"),
            "envelope field 'occurred_at' must have type",
        ),
        (
            lambda s: field(s, "lead_id").update(type=["null", "string"], default=None),
            "documented field 'lead_id' must have type",
        ),
        (
            lambda s: s["fields"].remove(field(s, "bounce_type")),
            "documented field 'bounce_type' is missing",
        ),
        (lambda s: field(s, "link_url").pop("doc"), "field 'link_url' has no doc"),
        (
            lambda s: field(s, "link_url").update(doc="Changed words only."),
            "same Parsing Canonical Form as v1",
        ),
        (lambda s: s.update(name="Email"), "record must be io.sluice.events.EmailEvent"),
    ],
)
def test_rules(tmp_path: Path, change: Change, expected: str) -> None:
    assert expected in messages(check_tree(with_v2(tmp_path, change)))


def test_tree_shape_problems(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    (root / "warmup" / "v1.avsc").rename(root / "warmup" / "v2.avsc")
    shutil.rmtree(root / "infra")
    (root / "telemetry").mkdir()
    (root / "telemetry" / "v1.avsc").write_text("{}")
    (root / "email" / "latest.avsc").write_text("{}")
    (root / "business" / "v2.avsc").write_text("{not json")
    text = messages(check_tree(root))
    assert "warmup: versions must be v1..vN without gaps, found [2]" in text
    assert "infra: missing directory" in text
    assert "telemetry: directory is not a family of the taxonomy" in text
    assert "email: latest.avsc: schema files must be named v<N>.avsc" in text
    assert "business v2: v2.avsc is not valid JSON" in text


def test_every_file_parses_with_fastavro(tmp_path: Path) -> None:
    text = messages(
        check_tree(with_v2(tmp_path, lambda s: field(s, "link_url").update(type="strang")))
    )
    assert "fastavro cannot parse v2.avsc" in text


# --------------------------------------------------------------------------- the command

runner = CliRunner()


def test_command_passes_on_shipped_tree() -> None:
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    for family in FAMILIES:
        assert family in result.stdout


def test_command_fails_with_one_line_per_problem(tmp_path: Path) -> None:
    root = with_v2(tmp_path, add_required)
    result = runner.invoke(app, ["check", "--dir", str(root)])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {p}" for p in check_tree(root)]
    assert any("campaign_name" in line for line in lines)


def test_command_passes_on_good_v2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", "--dir", str(with_v2(tmp_path, add_optional))])
    assert result.exit_code == 0, result.output
    assert "v1, v2" in result.stdout


def test_incompatibility_names_the_field(tmp_path: Path) -> None:
    lines = [str(p) for p in check_tree(with_v2(tmp_path, change_type))]
    assert lines and all("[field 'smtp_code']" in line for line in lines), lines


def test_command_checks_sluice_schema_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.settings import get_settings

    root = with_v2(tmp_path, change_type)
    monkeypatch.setenv("SLUICE_SCHEMA_DIR", str(root))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["check"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert str(root) in result.stderr
    assert "error: email v2: v2 cannot read data written with v1" in result.stderr
