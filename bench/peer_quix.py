"""The *peer* contender's app: Quix Streams counting the same rollups (its own venv).

Runs under ``bench/.venv-quix`` (Quix Streams pins an older confluent-kafka than
Sluice's), so it imports nothing from Sluice: topic names, schemas and the expected
event count come in a JSON config written by :mod:`bench.peer`.

The pipeline is what the Quix docs suggest for a windowed count, once per event topic:
Avro single-object messages decoded with fastavro by a custom deserializer (writer
schema by fingerprint, resolved against the family's newest schema); event time from
``occurred_at``; ``group_by`` on (tenant, campaign, event type) — a repartition through
Kafka — then a 1-day tumbling window ``.count()`` emitting ``.current()`` on every
update. The grace period is a year so no late event is dropped (the workload has events
days late). The last update per (key, window) is the count.

One pipeline per topic rather than ``concat`` of the eight: Quix names internal topics
after every input topic, and the concatenated names exceed Kafka's 249-character topic
name limit. Event types are disjoint across families, so the counts are the same.

    bench/.venv-quix/bin/python bench/peer_quix.py CONFIG.json
"""

from __future__ import annotations

import io
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import fastavro
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

DAY_MS = 86_400_000


class AvroSingleObject(Deserializer):
    """Sluice's wire format: ``C3 01`` + 8-byte fingerprint + schemaless Avro body."""

    def __init__(self, writers: dict[bytes, Any], readers: dict[str, Any], families: dict):
        super().__init__()
        self.writers = writers
        self.readers = readers
        self.families = families
        self.first = 0.0  # when the first message arrived: the start of the measurement

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        if not self.first:
            self.first = time.perf_counter()
        if value[:2] != b"\xc3\x01":
            raise ValueError(f"not an Avro single-object message: {value[:2].hex()}")
        reader = self.readers[self.families[ctx.topic]]
        return fastavro.schemaless_reader(io.BytesIO(value[10:]), self.writers[value[2:10]], reader)


def main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    families: dict[str, str] = cfg["topics"]
    expected: int = cfg["events"]
    writers = {bytes.fromhex(fp): fastavro.parse_schema(s) for fp, s in cfg["writers"].items()}
    readers = {f: fastavro.parse_schema(s) for f, s in cfg["readers"].items()}
    deserializer = AvroSingleObject(writers, readers, families)

    app = Application(
        broker_address=cfg["bootstrap"],
        consumer_group=cfg["group"],
        auto_offset_reset="earliest",
        state_dir=cfg["state_dir"],
        loglevel="WARNING",
    )

    def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
        return value["occurred_at"]

    late: list[int] = [0]

    def on_late(*_: Any, **__: Any) -> bool:
        late[0] += 1
        return False  # counted and checked instead of logged

    def rollup_key(e: dict[str, Any]) -> str:
        return f"{e['tenant_id']}|{e.get('campaign_id') or ''}|{e['event_type']}"

    pipelines = []
    for name in families:
        sdf = app.dataframe(
            app.topic(
                name,
                value_deserializer=deserializer,
                key_deserializer="bytes",
                timestamp_extractor=event_time,
            )
        )
        sdf = sdf.group_by(rollup_key, name="rollup_key")
        sdf = (
            sdf.tumbling_window(timedelta(days=1), grace_ms=timedelta(days=365), on_late=on_late)
            .count()
            .current()
        )
        pipelines.append(sdf)

    latest: dict[tuple[str, int], int] = {}
    progress = {"n": 0, "done": 0.0}

    def record(value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> None:
        k = key.decode() if isinstance(key, bytes) else str(key)
        latest[(k, value["start"])] = value["value"]
        progress["n"] += 1
        if progress["n"] == expected:
            progress["done"] = time.perf_counter()
            app.stop()

    for sdf in pipelines:
        sdf.update(record, metadata=True)
    app.run()

    counts: dict[str, int] = {}
    for (k, start), n in latest.items():
        tenant, campaign, event_type = k.split("|")
        counts[f"{tenant}|{campaign}|{start // DAY_MS}|{event_type}"] = n
    import quixstreams

    result = {
        "events": progress["n"],
        # first message decoded to the last window update (start-up excluded, as for
        # every contender)
        "seconds": progress["done"] - deserializer.first,
        "counts": counts,
        "late_dropped": late[0],
        "quixstreams": quixstreams.__version__,
    }
    tmp = cfg["out"] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    import os

    os.rename(tmp, cfg["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
