"""Footprint: where the worker's resident memory goes before it holds any state.

``python -m bench.footprint`` starts a fresh interpreter per stage and prints its peak RSS
(``ru_maxrss``) after importing and opening what the worker does, in order:

1. Python, confluent-kafka and Sluice's codec (what the ``limit`` contender loads);
2. the worker's modules (Faust, aiokafka, aiohttp, rocksdict, the OTel SDK, the sinks);
3. pandas, which clickhouse-connect imports at the first insert whenever it is installed
   (a worker on the embedded store imports it when the store opens; one writing to a
   server does not load it at all: ``sluice.olap.client.without_dataframes``);
4. an embedded chDB store opened and asked one query (``CLICKHOUSE_URL=chdb://``).

The differences are the fixed costs of each layer; what grows with the work is measured
elsewhere (state: ``--memory`` and ``--restore`` of ``bench.run``; sink buffers: bounded
by ``SINK_MAX_BUFFERED``). No Kafka, no worker process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

STAGES: list[tuple[str, str]] = [
    ("python + confluent-kafka + codec", "import confluent_kafka, avro_schemas.codec"),
    ("+ the worker's modules", "import confluent_kafka, avro_schemas.codec, streams.worker"),
    ("+ pandas (clickhouse-connect's insert)", "import streams.worker, pandas"),
    (
        "+ embedded chDB opened",
        "import streams.worker, pandas\n"
        "from sluice.olap.client import connect\n"
        "connect('chdb://{tmp}/olap').query('SELECT 1')",
    ),
]

REPORT = "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def measure() -> list[tuple[str, int]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="sluice-footprint-") as tmp:
        for name, code in STAGES:
            done = subprocess.run(
                [sys.executable, "-c", code.format(tmp=tmp) + REPORT],
                capture_output=True,
                text=True,
                check=True,
            )
            out.append((name, int(done.stdout.split()[-1]) // 1024))
    return out


def main() -> None:
    previous = 0
    for name, mib in measure():
        print(f"{name:<42} {mib:5d} MiB  (+{mib - previous} MiB)")
        previous = mib


if __name__ == "__main__":
    main()
