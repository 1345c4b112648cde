"""Contender *limit*: what one Python process can do at best, no framework.

confluent-kafka batch consume (``consume(num_messages=…)``), Sluice's codec
(:meth:`avro_schemas.codec.Codec.decode`: framing, schema resolution, taxonomy checks — the
same decode the worker pays), the routing decision of ``streams/routing.py`` for every
event, and rollup counters per (tenant, campaign, day, event type) in a plain dict.
No state store, no changelog, no offset commits, no sinks: the ceiling, not a design.

Run by :mod:`bench.run`; the child side is ``python -m bench.limit --out FILE ...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from bench.measure import Result, RunContext, run_child, write_result

BATCH = 10_000


def run(ctx: RunContext, name: str = "limit") -> Result:
    """Run the child process and verify its counts; ``name``: the contender's (its
    consumer group, files and result), e.g. ``limit-after`` for a second run."""
    out = ctx.root / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.limit",
        "--group",
        ctx.group(name),
        "--events",
        str(ctx.events),
        "--out",
        str(out),
    ]
    raw, peak = run_child(cmd, out, ctx.root / f"{name}.log", env=ctx.env(), timeout=ctx.timeout)
    return ctx.verify(name, raw, peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)

    from confluent_kafka import Consumer

    from avro_schemas.codec import Codec
    from bench.workload import count_key
    from sluice.settings import get_settings
    from streams.routing import route
    from topics.catalog import Catalog

    settings = get_settings()
    families = Catalog.from_settings(get_settings()).families()
    codec = Codec()
    decode = codec.decode
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(list(families))
    counts: dict[str, int] = {}
    destinations: Counter[str] = Counter()
    n = 0
    first: float | None = None
    deadline = time.monotonic() + args.timeout
    try:
        while n < args.events and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=BATCH, timeout=0.5)
            if not batch:
                continue
            if first is None:
                first = time.perf_counter()
            for msg in batch:
                if msg.error() is not None:
                    raise RuntimeError(msg.error())
                e = decode(msg.value(), families[msg.topic()])
                destinations.update(route(e))
                key = count_key(e)
                counts[key] = counts.get(key, 0) + 1
            n += len(batch)
        done = time.perf_counter()
    finally:
        consumer.close()
    write_result(
        args.out,
        {
            "events": n,
            "seconds": done - first if first is not None else 0.0,
            "counts": counts,
            "destinations": dict(destinations),
            "decoder": "avro_schemas.codec.Codec (compiled reader)"
            if codec.compiled
            else "fastavro",
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
