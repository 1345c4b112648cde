"""The collector build (dev/otelcol) says one thing everywhere: the manifest's pinned
versions are what go.mod requires, go.sum vouches for, the Go sources import and build.sh
builds; CI starts the build; and without go the collector test fails under CI, skips
elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests import _otelcol

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "dev" / "otelcol"
MANIFEST = yaml.safe_load((HERE / "builder-config.yaml").read_text())


def manifest_modules() -> dict[str, str]:
    kinds = ("receivers", "exporters", "processors", "extensions", "connectors", "providers")
    return dict(entry["gomod"].split() for kind in kinds for entry in MANIFEST.get(kind, []) or [])


def go_mod_requires() -> dict[str, str]:
    text = (HERE / "go.mod").read_text()
    return dict(re.findall(r"^\s+(\S+) (v\S+)(?: // indirect)?$", text, re.M))


def test_build_script_builds_the_manifest_version():
    script = (HERE / "build.sh").read_text()
    (version,) = re.findall(r"^VERSION=(\S+)", script, re.M)
    assert version == MANIFEST["dist"]["version"]
    assert go_mod_requires()["go.opentelemetry.io/collector/otelcol"] == f"v{version}"


def test_go_mod_requires_exactly_the_pinned_versions():
    requires = go_mod_requires()
    for module, version in manifest_modules().items():
        assert requires.get(module) == version, module
    module_line = (HERE / "go.mod").read_text().splitlines()[0]
    assert module_line == f"module {MANIFEST['dist']['module']}"


def test_go_sum_vouches_for_every_pinned_module():
    lines = set((HERE / "go.sum").read_text().splitlines())
    for module, version in manifest_modules().items():
        assert any(line.startswith(f"{module} {version} h1:") for line in lines), module
        assert any(line.startswith(f"{module} {version}/go.mod h1:") for line in lines), module


def test_the_sources_import_each_component_of_the_manifest():
    sources = (HERE / "components.go").read_text() + (HERE / "main.go").read_text()
    for module in manifest_modules():
        assert f'"{module}"' in sources, module


def test_ci_builds_the_collector_in_the_background():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if not line.lstrip().startswith("#")]
    (build,) = [i for i, line in enumerate(commands) if "dev/otelcol/build.sh" in line]
    assert commands[build].rstrip().endswith("&")  # in the background
    assert build < commands.index("make setup")  # before the long installs


@pytest.mark.parametrize(
    "ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_no_go_toolchain_fails_under_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(_otelcol.shutil, "which", lambda name: None)
    with pytest.raises(outcome, match="no Go toolchain"):
        _otelcol.collector_binary()


@pytest.mark.parametrize(
    "ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_failed_build_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    broken = tmp_path / "build.sh"
    broken.write_text("echo 'go: module lookup disabled' >&2; exit 1\n")
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(_otelcol.shutil, "which", lambda name: "/usr/bin/go")
    monkeypatch.setattr(_otelcol, "BUILD", broken)
    with pytest.raises(outcome, match="failed"):
        _otelcol.collector_binary()
