"""Vendor the slices of two public references that Sluice's sink tests check against.

    python dev/refdata/vendor.py --semconv-git DIR --ecs-git DIR

``DIR`` is a git clone (bare or not) of open-telemetry/semantic-conventions and of
elastic/ecs; the files are read at the pinned tags below with ``git show``, so the output
does not depend on what is checked out. Writes, under tests/unit/reference/:

* ``semconv-<version>.json``: every metric of ``model/db/metrics.yaml`` (instrument, unit,
  stability, the attributes it lists with their requirement level), the advisory bucket
  boundaries that ``docs/db/database-metrics.md`` gives, the members of the enum
  attributes Sluice sets, and every top-level namespace used by the registry (so a
  ``sluice.`` prefix can be checked not to clash).
* ``ecs-<version>.json``: from ``generated/ecs/ecs_flat.yml``, the definition (type,
  level, normalize, allowed values, expected event types) of every field Sluice's ECS
  documents use outside ``sluice.*``.

Data only: nothing of either project's code is copied. Re-run when moving to a new version
and update the version constants in sinks/observability.py and sinks/ecs.py with it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

SEMCONV_TAG = "v1.44.0"
ECS_TAG = "v9.4.0"
OUT = Path(__file__).resolve().parents[2] / "tests" / "unit" / "reference"
ATTRIBUTES = ("db.system.name", "db.client.connection.state", "db.client.connection.pool.name")
ECS_FIELDS = (
    "@timestamp",
    "ecs.version",
    "event.id",
    "event.kind",
    "event.category",
    "event.type",
    "event.action",
    "event.outcome",
    "event.dataset",
    "event.provider",
    "event.reason",
    "event.risk_score",
    "event.risk_score_norm",
    "event.severity",
    "organization.id",
    "user.id",
    "user.effective.id",
    "user.target.id",
    "source.ip",
    "source.geo.country_iso_code",
    "user_agent.original",
)


def git(repo: str, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, *args], check=True, capture_output=True, text=True
    ).stdout


def semconv(repo: str) -> dict[str, Any]:
    commit = git(repo, "rev-parse", f"{SEMCONV_TAG}^{{commit}}").strip()
    metrics_yaml = yaml.safe_load(git(repo, "show", f"{SEMCONV_TAG}:model/db/metrics.yaml"))
    doc = git(repo, "show", f"{SEMCONV_TAG}:docs/db/database-metrics.md")
    metrics: dict[str, Any] = {}
    for group in metrics_yaml["groups"]:
        if group.get("type") != "metric":
            continue
        name = group["metric_name"]
        attributes = {}
        for attr in group.get("attributes", []):
            level = attr.get("requirement_level", "recommended")
            attributes[attr["ref"]] = level if isinstance(level, str) else next(iter(level))
        metrics[name] = {
            "instrument": group["instrument"],
            "unit": group["unit"],
            "stability": group["stability"],
            "attributes": attributes,
            "extends": group.get("extends"),
        }
    # "#### Metric: `name`" ... "advisory parameter ... of `[ 0.001, ... ]`"
    sections = re.split(r"^#+ Metric: `([^`]+)`", doc, flags=re.M)
    for name, body in zip(sections[1::2], sections[2::2], strict=True):
        match = re.search(r"advisory parameter\]\([^)]*\) of `\[([^\]]*)\]`", body)
        if match and name in metrics:
            metrics[name]["advisory_buckets"] = [float(x) for x in match.group(1).split(",")]
    registry: dict[str, Any] = {}
    namespaces: set[str] = set()
    for path in git(repo, "ls-tree", "-r", "--name-only", SEMCONV_TAG, "model/").split():
        if not path.endswith(".yaml") or "/deprecated/" in path:
            continue
        for group in (
            yaml.safe_load(git(repo, "show", f"{SEMCONV_TAG}:{path}")).get("groups", []) or []
        ):
            for attr in group.get("attributes", []) or []:
                if "id" in attr:
                    namespaces.add(attr["id"].split(".")[0])
                    if attr["id"] in ATTRIBUTES:
                        kind = attr["type"]
                        registry[attr["id"]] = {
                            "stability": attr.get("stability"),
                            "members": [m["value"] for m in kind["members"]]
                            if isinstance(kind, dict)
                            else None,
                        }
            if group.get("type") == "metric":
                namespaces.add(group["metric_name"].split(".")[0])
    return {
        "_provenance": {
            "repository": "https://github.com/open-telemetry/semantic-conventions",
            "tag": SEMCONV_TAG,
            "commit": commit,
            "files": ["model/db/metrics.yaml", "docs/db/database-metrics.md", "model/**.yaml"],
            "by": "dev/refdata/vendor.py",
        },
        "metrics": metrics,
        "attributes": registry,
        "namespaces": sorted(namespaces),
    }


def ecs(repo: str) -> dict[str, Any]:
    commit = git(repo, "rev-parse", f"{ECS_TAG}^{{commit}}").strip()
    flat = yaml.safe_load(git(repo, "show", f"{ECS_TAG}:generated/ecs/ecs_flat.yml"))
    version = git(repo, "show", f"{ECS_TAG}:version").strip()
    fields: dict[str, Any] = {}
    for name in ECS_FIELDS:
        f = flat[name]
        entry: dict[str, Any] = {"type": f["type"], "level": f["level"]}
        if f.get("normalize"):
            entry["normalize"] = f["normalize"]
        if f.get("allowed_values"):
            entry["allowed_values"] = {
                a["name"]: a.get("expected_event_types") for a in f["allowed_values"]
            }
        fields[name] = entry
    return {
        "_provenance": {
            "repository": "https://github.com/elastic/ecs",
            "tag": ECS_TAG,
            "commit": commit,
            "file": "generated/ecs/ecs_flat.yml",
            "by": "dev/refdata/vendor.py",
        },
        "version": version,
        "fields": fields,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--semconv-git", required=True)
    parser.add_argument("--ecs-git", required=True)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in (
        (f"semconv-{SEMCONV_TAG[1:]}.json", semconv(args.semconv_git)),
        (f"ecs-{ECS_TAG[1:]}.json", ecs(args.ecs_git)),
    ):
        (OUT / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(OUT / name)


if __name__ == "__main__":
    main()
