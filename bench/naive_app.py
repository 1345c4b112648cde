"""The *naive* contender's worker: a straightforward per-event faust-streaming agent.

What one writes first with Faust: one agent over every event topic, ``async for`` one
event at a time, decode it with Sluice's codec, take the routing decision, and count it
in a Faust Table (in-memory store, a changelog topic, Faust's defaults otherwise — so
``producer_linger=0``: one changelog produce per update). Its own consumer group.

    python -m bench.naive_app --group G --events N --out FILE --data-dir DIR

Configuration comes from the environment like Sluice's (``KAFKA_BOOTSTRAP_SERVERS``,
``SLUICE_TOPIC_PREFIX``). When it has counted ``--events`` events it writes its result
(timing, the table's counts, routing tallies) to ``--out``; the harness then stops it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import faust

from avro_schemas.codec import Codec
from bench.measure import write_result
from bench.workload import count_key
from sluice.settings import get_settings
from streams.routing import route
from topics.catalog import Catalog


def build_app(group: str, events: int, out: str, data_dir: str) -> faust.App:
    settings = get_settings()
    brokers = [f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",")]
    app = faust.App(
        group,
        broker=brokers,
        store="memory://",
        topic_partitions=settings.sluice_topic_partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=data_dir,
    )
    families = Catalog.from_settings(get_settings()).families()
    source = app.topic(*families, key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=settings.sluice_topic_partitions)
    codec = Codec()
    progress = {"n": 0, "first": 0.0}
    destinations: Counter[str] = Counter()

    @app.agent(source)
    async def count(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if progress["n"] == 0:
                progress["first"] = time.perf_counter()
            record = codec.decode(event.value, families[event.message.topic])
            destinations.update(route(record))
            counts[count_key(record)] += 1
            progress["n"] += 1
            if progress["n"] == events:
                done = time.perf_counter()
                write_result(
                    out,
                    {
                        "events": progress["n"],
                        "seconds": done - progress["first"],
                        "counts": dict(counts.items()),
                        "destinations": dict(destinations),
                        "faust": faust.__version__,
                    },
                )

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)
    app = build_app(args.group, args.events, args.out, args.data_dir)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
