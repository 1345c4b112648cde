"""Rebuild: the CPU of one partition's full rebuild from its changelog, without Kafka.

``python -m bench.rebuild --emails 300000`` makes the changelog of one partition holding
N emails of the ``--restore`` workload (:func:`bench.memory.emails`: ``email_sent`` and
``email_delivered`` each, 64 tenants, 1,000 campaigns, one lead per email), as the bytes
:class:`streams.fetch.ChangelogWriter` writes, then times what a rebuild process
(``python -m streams.restore rebuild``) does with it: :func:`streams.restore.rebuild`
over a source handing out batches of :data:`streams.restore.BATCH` records (the decode
included), into a local store with ``--memory-items`` entries in memory (a rebuild
process's share at the bench's defaults: 1,000,000 / (4 · 2)). Kafka's own reading is
left out (librdkafka, in its threads). ``--profile FILE``: a cProfile of the rebuild.

The changelog is cached under ``--work-dir`` (it takes a while to make at millions).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pickle
import resource
import shutil
import time
from pathlib import Path

from bench.memory import emails
from dev.changelog import MemoryChangelog
from streams.engine import Engine, default_components, state_schema
from streams.restore import BATCH
from streams.store import Identity, StateStore

PARTITION = 0


def changelog(n: int, work_dir: Path) -> list[tuple[bytes, bytes | None]]:
    """One partition's changelog of ``n`` emails (cached)."""
    import orjson

    path = work_dir / f"changelog-{n}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    engine = Engine()
    records: list[tuple[bytes, bytes | None]] = []
    for i, event in enumerate(emails(n)):
        engine.apply_email(PARTITION, "email-events", i, event)
        if i % 100_000 == 99_999:
            records += [
                (orjson.dumps(k), None if v is None else orjson.dumps(v))
                for _, k, v in engine.snapshot().changelog
            ]
    records += [
        (orjson.dumps(k), None if v is None else orjson.dumps(v))
        for _, k, v in engine.snapshot().changelog
    ]
    work_dir.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(records, 5))
    return records


def run(n: int, memory_items: int, work_dir: Path, profile: Path | None = None) -> dict:
    from streams.restore import rebuild

    records = changelog(n, work_dir)
    root = work_dir / "state"
    shutil.rmtree(root, ignore_errors=True)
    ident = Identity("bench", 1, state_schema(default_components, "window_ms=None"), "cl")
    engine = Engine(store=StateStore(root, memory_items, ident))
    source = MemoryChangelog(records, BATCH)
    gc.disable()  # as the rebuild process (streams.restore.main)
    cpu0, wall0, main0 = time.process_time(), time.perf_counter(), time.thread_time()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    joined = rebuild(engine, source, PARTITION, 0, len(records))  # type: ignore[arg-type]
    if prof:
        prof.disable()
        prof.dump_stats(str(profile))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    main_cpu = time.thread_time() - main0  # without RocksDB's threads (flushes, compactions)
    entries = engine.store.stats()["entries"]  # type: ignore[union-attr]
    engine.close()
    gc.enable()
    return {
        "changelog_entries": joined,
        "state_entries": entries,
        "memory_items": memory_items,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "entries_per_s": round(joined / wall),
        "cpu_us_per_entry": round(cpu / joined * 1e6, 2),
        "main_thread_us_per_entry": round(main_cpu / joined * 1e6, 2),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rebuild")
    parser.add_argument("--emails", type=int, default=300_000)
    parser.add_argument("--memory-items", type=int, default=125_000)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/sluice-rebuild-bench"))
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    print(run(args.emails, args.memory_items, args.work_dir, args.profile))


if __name__ == "__main__":
    main()
