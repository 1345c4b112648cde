"""Scenario 7: schema evolution.

The operator ships ``email/v2.avsc`` (v1 plus an optional ``tracking_domain``) in the
worker's ``SLUICE_SCHEMA_DIR`` before any producer uses it; then v1 and v2 producers
interleave on the same topics. A third producer writes about 1% of records with an
incompatible v3 (``smtp_code`` becomes a string) that ``sluice schemas check`` refuses
and the worker does not know: those records must land on ``events.dlq`` exactly once
with reason ``unknown_schema`` and their source coordinates, the worker must keep
running, and every rollup must equal the reference (they are fresh sends that would
change the counts if they were applied).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from avro_schemas import SCHEMA_DIR, SchemaRepo
from avro_schemas.codec import Codec
from sluice.settings import Settings
from tests.faults._faults import (
    RawProducer,
    dead_letters,
    letters_by_source,
    report,
    verify,
    workload,
)
from topics.taxonomy import family_of

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

TRACKING_DOMAINS = [None, "track.acme.example", "links.globex.example"]


def _tree(root: Path) -> Path:
    shutil.copytree(SCHEMA_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def _write_version(root: Path, version: int, schema: dict[str, Any]) -> None:
    (root / "email" / f"v{version}.avsc").write_text(json.dumps(schema, indent=2))


def schema_trees(tmp: Path) -> tuple[Path, Path]:
    """(the worker's tree: v1 + compatible email v2, the same plus an incompatible v3)."""
    v1 = json.loads((SCHEMA_DIR / "email" / "v1.avsc").read_text())
    v2 = copy.deepcopy(v1)
    v2["fields"].append(
        {
            "name": "tracking_domain",
            "type": ["null", "string"],
            "default": None,
            "doc": "Custom link-tracking domain of the sending mailbox.",
        }
    )
    v3 = copy.deepcopy(v2)
    next(f for f in v3["fields"] if f["name"] == "smtp_code")["type"] = ["null", "string"]

    worker_tree = _tree(tmp / "schemas")
    _write_version(worker_tree, 2, v2)
    rogue_tree = _tree(tmp / "schemas-rogue")
    _write_version(rogue_tree, 2, v2)
    _write_version(rogue_tree, 3, v3)
    return worker_tree, rogue_tree


def test_v1_v2_interleave_and_an_incompatible_v3_is_refused_and_dead_lettered(
    deployment, reference_olap
):
    dep = deployment
    worker_tree, rogue_tree = schema_trees(dep.root)
    env = {"SLUICE_SCHEMA_DIR": str(worker_tree)}

    # `sluice schemas check` accepts the worker's tree (from SLUICE_SCHEMA_DIR) and
    # refuses v3 with one line per broken rule, naming the version and the field.
    ok = dep.run("schemas", "check", env_extra=env)
    assert "v1, v2" in ok.stdout, ok.stdout
    refused = dep.run("schemas", "check", "--dir", str(rogue_tree), check=False)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(line.startswith("error: email v3: ") for line in errors), errors
    assert all("smtp_code" in line for line in errors), errors
    assert any("v3 cannot read data written with v1" in line for line in errors), errors
    assert any("readers of v2 cannot read data of v3" in line for line in errors), errors

    wl = workload(seed=707)
    rng = random.Random(7)
    producer = RawProducer(dep)
    codec = producer.codec = Codec(
        settings=Settings(_env_file=None, sluice_schema_dir=str(worker_tree))
    )
    assert [sv.version for sv in codec.schemas.schema_versions("email")] == [1, 2]
    rogue = Codec(SchemaRepo(rogue_tree), settings=Settings(_env_file=None))

    dep.prepare()
    dep.start_worker(env_extra=env)  # the worker first, then the producers

    written = {1: 0, 2: 0}
    incompatible: dict[str, bytes] = {}  # label -> raw bytes
    template: dict[str, Any] | None = None
    every = 100  # 1%
    for i, event in enumerate(wl.events):
        family = family_of(event["event_type"])
        assert family is not None
        topic, key = dep.topic(family), producer.key(event)
        if family == "email":
            template = event
            if rng.random() < 0.5:
                value = codec.encode(family, event, version=1)
                written[1] += 1
            else:
                domain = rng.choice(TRACKING_DOMAINS)
                value = codec.encode(family, {**event, "tracking_domain": domain}, version=2)
                written[2] += 1
            producer.raw(topic, key, value)
        else:
            producer.send(event)
        if i % every == every // 2 and template is not None:
            # A send of a new email: the counts would move if the worker applied it.
            record = {
                **template,
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "event_type": "email_sent",
                "email_id": f"rogue-{i}",
                "smtp_code": "250",
            }
            label = f"v3-{i}"
            incompatible[label] = rogue.encode("email", record, version=3)
            producer.raw(
                dep.topic("email"),
                producer.key(record),
                incompatible[label],
                {"label": label},
                label,
            )
    producer.flush()
    assert written[1] and written[2]
    assert len(producer.landed) == len(incompatible)

    drained = dep.wait_drained()
    figures = verify(dep, wl, reference_olap)
    letters = dead_letters(dep, expect=len(incompatible))
    assert dep.worker is not None and dep.worker.poll() is None, dep.log_tail()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()

    by_source = letters_by_source(letters)
    expected = {producer.landed[label]: raw for label, raw in incompatible.items()}
    assert set(by_source) == set(expected), (
        sorted(set(expected) - set(by_source))[:5],
        sorted(set(by_source) - set(expected))[:5],
    )
    v3_fingerprint = rogue.schemas.get("email", 3).fingerprint.hex()
    for source, raw in expected.items():
        headers, got = by_source[source]
        assert got == raw, source  # raw bytes unchanged
        assert headers["reason"] == "unknown_schema", (source, headers)
        assert headers["stage"] == "decode", headers
        assert v3_fingerprint in headers["error"], headers
    report(
        "7 schema evolution",
        produced=producer.sent,
        email_v1=written[1],
        email_v2=written[2],
        incompatible_v3=len(incompatible),
        dead_letters=len(letters),
        drain_s=round(drained, 1),
        **figures,
    )
