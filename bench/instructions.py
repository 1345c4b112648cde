"""Instructions per event of the worker's hot path: a figure that a busy machine cannot move.

``python -m bench.instructions [--events 40000] [--sinks/--no-sinks] [--store rocksdb]
[--snapshot] [--batch 5000] [--tree DIR ...]``

Wall and CPU times of one process vary by 20-30 % between identical runs on a shared
2-core machine (``bench.hotpath``: 17.6-25.7 µs an event for one commit in one hour), far
more than the few per cent one change to the hot path is worth. An instruction count
does not: the same run twice differs by 0.01 %. This runs the bench workload (encoded
once with Sluice's codec, into a temporary file) through a real
:class:`streams.worker.Worker`'s ``process()`` — decode, state, routing, sink
preparation; sinks at a closed port, nothing sent, as in ``bench.hotpath`` — under
valgrind's cachegrind (``--cache-sim=no``: instructions only, about 50 times slower), and
once more loading the same events without processing them, and prints the difference per
event, in batches of ``--batch`` events (``SLUICE_BATCH_MAX``; 5,000 by default, as
every figure before 2026-12-03's eleventh session). ``--snapshot`` adds one checkpoint
snapshot (``Engine.snapshot``) after the last batch. ``--tree DIR`` measures the source
tree at ``DIR`` instead of this one (several: one line each, e.g. a ``git archive`` of an
older commit beside this one).

``PYTHONHASHSEED=0`` in every run (a seed changes set and dict layouts, and the count).
Threads (librdkafka's) add a little noise: differences under ~0.5 % are not results. An
instruction is not a nanosecond — a change that allocates less can save more time than
its count says, and the reverse — so confirm a gain with ``bench.run`` end to end.
Needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def child(mode: str, path: str, batch: str = "5000") -> None:
    """One measured process: load the messages; then (``mode`` != load) process them."""
    import asyncio
    import gc

    from bench.hotpath import FakeMessage
    from sluice.settings import Settings
    from streams.worker import Worker

    # (topic, partition, offset, key, value): plain tuples, so that a tree without
    # today's bench.hotpath reads them too
    messages = [FakeMessage(*m) for m in pickle.loads(Path(path).read_bytes())]
    worker = Worker(Settings())
    if os.environ["SLUICE_STATE_STORE"] == "rocksdb":
        for partition in sorted({m.partition() for m in messages}):
            worker.engine.open(partition)
            db = worker.engine.partitions[partition].db
            assert db is not None
            db.imaged()  # a running worker's store: the image, every change cut at a snapshot
    gc.disable()  # a collection's instructions land wherever it happens to start
    if mode != "load":
        size = int(batch)

        async def run() -> None:
            for i in range(0, len(messages), size):
                await worker.process(messages[i : i + size])

        asyncio.new_event_loop().run_until_complete(run())
        if mode == "snapshot":
            worker.engine.snapshot()
    os._exit(0)  # no teardown: its instructions are not the hot path's


def count(tree: Path, mode: str, path: Path, sinks: bool, store: str, batch: int = 5_000) -> int:
    """Instructions of one child run in source tree ``tree``."""
    # here, not at the top: a child of an older ``tree`` imports that tree's bench.hotpath
    from bench.hotpath import SINK_ENV

    scratch = tempfile.mkdtemp(prefix="sluice-instructions-")
    env = {
        **{k: v for k, v in os.environ.items() if k not in SINK_ENV},
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": str(tree),
        "SLUICE_DATA_DIR": scratch,
        "SLUICE_STATE_STORE": store,
        "CLICKHOUSE_URL": f"chdb://{scratch}/olap",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing is sent
        **(SINK_ENV if sinks else {}),
    }
    cmd = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-c",
        # this file, run as a script without its directory on sys.path: every import
        # comes from ``tree`` (which need not have this module)
        "import runpy, sys; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')",
        __file__,
        "--child",
        mode,
        str(path),
        str(batch),
    ]
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = _REFS.search(done.stderr)
    if found is None:
        tail = done.stderr.strip().splitlines()[-3:]
        raise SystemExit(f"bench.instructions: no instruction count from valgrind: {tail}")
    return int(found.group(1).replace(",", ""))


def _packages(tree: Path) -> list[Path]:
    """The tree's top-level packages (what the worker imports from it)."""
    return [p for p in sorted(tree.iterdir()) if (p / "__init__.py").is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sinks", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--store", choices=["memory", "rocksdb"], default="rocksdb")
    parser.add_argument("--snapshot", action="store_true")
    parser.add_argument("--batch", type=int, default=5_000, help="events per process() call")
    parser.add_argument("--tree", action="append", type=Path, default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.events <= 0:
        parser.error("--events must be positive")
    if args.batch <= 0:
        parser.error("--batch must be positive")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not on the PATH (apt-get install valgrind)")
    trees = [t.resolve() for t in args.tree or [Path(__file__).resolve().parent.parent]]
    for tree in trees:
        if not (tree / "streams" / "worker.py").is_file():
            parser.error(f"{tree} is not a Sluice source tree")
    with tempfile.TemporaryDirectory(prefix="sluice-instructions-") as tmp:
        path = Path(tmp) / "messages.pickle"
        from bench.hotpath import encoded

        path.write_bytes(
            pickle.dumps(
                [
                    (m.topic(), m.partition(), m.offset(), m.key(), m.value())
                    for m in encoded(args.events, args.seed)
                ]
            )
        )
        mode = "snapshot" if args.snapshot else "process"
        for tree in trees:
            # bytecode first: else the first run (the load) compiles a fresh tree's
            # modules, and the difference undercounts that tree by ~4,500 an event
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", *map(str, _packages(tree))],
                check=False,
                capture_output=True,
            )
            loaded = count(tree, "load", path, args.sinks, args.store, args.batch)
            ran = count(tree, mode, path, args.sinks, args.store, args.batch)
            per_event = (ran - loaded) / args.events
            print(
                f"{tree}  {mode}  batch {args.batch:,}  {per_event:,.0f} instructions/event  "
                f"({ran:,} - {loaded:,})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
