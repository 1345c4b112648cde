"""Scenario 6: poison records among valid traffic.

About 1% of the records are undecodable — a bad magic byte, a truncated body, a schema
fingerprint nobody knows — plus one 2 MB message. Each must land on ``events.dlq``
exactly once, raw bytes unchanged, with its reason and its source topic, partition and
offset; the valid events around them must be exact.
"""

from __future__ import annotations

import random
import signal

import pytest

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

TWO_MB = 2 * 1024 * 1024


def test_poison_records_go_to_the_dlq_and_the_rest_is_exact(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=606)
    rng = random.Random(6)
    producer = RawProducer(dep)
    codec = producer.codec
    dep.prepare()

    poison: dict[str, tuple[str, bytes]] = {}  # label -> (expected reason, raw bytes)
    kinds = ["bad_magic", "truncated", "unknown_schema"]
    every = 100  # 1%
    for i, event in enumerate(wl.events):
        producer.send(event)
        if i % every == every // 2 or i == len(wl.events) // 2:
            family = family_of(event["event_type"])
            good = codec.encode(family, event)
            label = f"p{i}"
            if i == len(wl.events) // 2:
                reason, value = "malformed_avro", good + bytes(TWO_MB)  # the 2 MB message
            else:
                kind = kinds[(i // every) % len(kinds)]
                if kind == "bad_magic":
                    reason, value = "bad_magic", b"\x07" + good[1:]
                elif kind == "truncated":
                    reason, value = "malformed_avro", good[: rng.randrange(11, len(good) - 1)]
                else:
                    fingerprint = rng.getrandbits(64).to_bytes(8, "little")
                    reason, value = "unknown_schema", good[:2] + fingerprint + good[10:]
            poison[label] = (reason, value)
            producer.raw(dep.topic(family), producer.key(event), value, {"label": label}, label)
    producer.flush()
    assert len(producer.landed) == len(poison)

    dep.start_worker()
    drained = dep.wait_drained()
    figures = verify(dep, wl, reference_olap)
    letters = dead_letters(dep, expect=len(poison))
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()

    by_source = letters_by_source(letters)
    expected = {producer.landed[label]: poison[label] for label in poison}
    assert set(by_source) == set(expected), (
        sorted(set(expected) - set(by_source))[:5],
        sorted(set(by_source) - set(expected))[:5],
    )
    for source, (reason, value) in expected.items():
        headers, got = by_source[source]
        assert got == value, source  # raw bytes unchanged (the 2 MB one too)
        assert headers["reason"] == reason, (source, headers)
        assert headers["stage"] == "decode" and headers["error"], headers
    report(
        "6 poison records",
        produced=producer.sent,
        poison=len(poison),
        largest_poison_bytes=max(len(v) for _, v in poison.values()),
        dead_letters=len(letters),
        drain_s=round(drained, 1),
        **figures,
    )
