"""Shares of a py-spy profile of the worker, in the buckets bench/README.md reports.

``python -m bench.pyspy_shares PROFILE.txt [...]`` where each file is what
``py-spy record --pid <worker pid> --duration 8 --rate 100 --gil --format raw -o FILE``
wrote (collapsed stacks: frames joined by ``;``, then a sample count). Each stack goes to
the first bucket whose needles appear anywhere in it, so a sink's preparation reached
from the hot loop counts as the sink, not as the loop.
"""

from __future__ import annotations

import sys
from collections import Counter

RULES: list[tuple[str, list[str]]] = [
    ("pandas import (clickhouse-connect's first insert)", ["_resolve_pandas"]),
    (
        "checkpoint (snapshot, changelog, rows to chDB)",
        ["Checkpointer.", "Engine.snapshot", "_Warehouse.write"],
    ),
    ("state updates (Engine.apply)", ["Engine.apply", "Engine.advance"]),
    ("PostHog event preparation", ["PostHogSink.prepare"]),
    (
        "other sinks' preparation (OTel, syslog, HEC)",
        ["ObservabilitySink.prepare", "SyslogSink.prepare", "HecSink.prepare"],
    ),
    (
        "sink sending (encode, gzip, post)",
        ["PostHogSink._post", "PostHogSink.send", "HecSink.send", "SyslogSink.send"]
        + ["ObservabilitySink.send", "BatchingSink._drain", "BatchingSink._deliver", "in_thread"],
    ),
    ("Avro decoding (Codec.decode)", ["Codec.decode"]),
    ("routing and sink batching", ["Router.write", "BatchingSink.write", "sink_targets"]),
    ("hot loop itself (envelopes, offsets, metrics)", ["Worker.process"]),
    ("fetching (confluent-kafka batches)", ["Reader.fetch", "fetch.py"]),
    ("status/metrics endpoints", ["streams/web.py", "aiohttp"]),
]
OTHER = "Faust, aiokafka, asyncio, other"


def shares(path: str) -> tuple[int, dict[str, float]]:
    """(samples, bucket -> share of samples) of one raw py-spy profile."""
    counts: Counter[str] = Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip().rpartition(" ")
            total += int(n)
            bucket = next(
                (name for name, needles in RULES if any(x in stack for x in needles)), OTHER
            )
            counts[bucket] += int(n)
    return total, {name: n / total for name, n in counts.most_common()}


def main(argv: list[str]) -> int:
    for path in argv:
        total, found = shares(path)
        print(f"{path}: {total} GIL samples")
        for name, share in found.items():
            print(f"  {100 * share:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
