"""The worker's hot path in one process, without Kafka: where one event's CPU goes.

``python -m bench.hotpath [--events 200000] [--sinks/--no-sinks] [--profile FILE]``

Builds the seeded bench workload, encodes it with Sluice's codec once, then feeds it in
batches of ``--batch`` (the worker's ``SLUICE_BATCH_MAX``: 1,000 by default) to a real
:class:`streams.worker.Worker` — its ``process()``: decode, state updates, routing, sink
preparation — and times each stage alone over the same events (decode only; decode +
route + sink preparation; the whole ``process``). No broker, no checkpoints and no
sending (sinks point at a closed port and the loop never lets their senders run), so
it is a microbenchmark of the Python work per event, for comparing commits on one
machine, not a throughput figure of the worker (that is ``python -m bench.run``).
``--profile FILE`` writes a cProfile of the whole-``process`` pass (and, with
``--checkpoint``, one per checkpoint step beside it: ``FILE.snapshot`` ...). ``--checkpoint``
then times a checkpoint's CPU work over that state, step by step: the snapshot (what
runs under the state lock), the changelog's serialization into librdkafka's queue (a
producer with no broker: nothing is sent), and the rows written into an embedded chDB
store (a fresh one in a temporary directory). ``--store rocksdb`` gives the worker its
default local store (each partition opened first, as on assignment, and made the image,
as after a restore: before 2026-12-03 it stayed a rebuild's direct store, whose snapshot
cuts nothing), so the snapshot includes the store's cut.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class FakeMessage:
    """What the worker reads of a confluent-kafka ``Message``."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value


def encoded(events: int, seed: int) -> list[FakeMessage]:
    """The seeded bench workload as the messages the worker reads: Sluice's codec, and
    the record key and partition `sluice produce` gives each event (every event is read
    at its home partition, as in the bench: none is forwarded)."""
    from avro_schemas.codec import Codec
    from bench.workload import build
    from sluice.settings import Settings
    from topics.catalog import Catalog
    from topics.taxonomy import family_of

    settings = Settings()
    catalog, codec = Catalog.from_settings(settings), Codec(settings=settings)
    offsets: dict[tuple[str, int], int] = {}
    messages: list[FakeMessage] = []
    for event in build(events, seed).events:
        family = family_of(event["event_type"])
        assert family is not None
        spec = catalog.for_family(family)
        partition = spec.partition_of(event)
        offset = offsets.get((spec.name, partition), 0)
        offsets[(spec.name, partition)] = offset + 1
        key = spec.record_key(event)
        messages.append(FakeMessage(spec.name, partition, offset, key, codec.encode(family, event)))
    return messages


#: Every sink on, at a port nobody listens on (nothing is sent anyway).
SINK_ENV = {
    "POSTHOG_API_KEY": "phc_bench",
    "POSTHOG_HOST": "http://127.0.0.1:9",
    "PII_HMAC_KEY": "bench",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    "SIEM_HEC_URL": "http://127.0.0.1:9/services/collector/event",
    "SIEM_HEC_TOKEN": "bench",
    "SIEM_SYSLOG_ADDRESS": "127.0.0.1:9",
}


def _env(sinks: bool, data_dir: str, store: str) -> None:
    os.environ["SLUICE_DATA_DIR"] = data_dir
    os.environ["SLUICE_STATE_STORE"] = store
    os.environ["CLICKHOUSE_URL"] = f"chdb://{data_dir}/olap"
    os.environ.setdefault("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")  # nothing is sent
    if sinks:
        os.environ.update(SINK_ENV)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sinks", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--store", choices=["memory", "rocksdb"], default="memory")
    args = parser.parse_args(argv)
    _env(args.sinks, tempfile.mkdtemp(prefix="sluice-hotpath-"), args.store)

    from avro_schemas.codec import Codec
    from sluice.settings import Settings
    from streams.routing import sink_targets
    from streams.worker import Worker
    from topics.catalog import Catalog

    settings = Settings()
    codec = Codec(settings=settings)
    messages = encoded(args.events, args.seed)
    families = Catalog.from_settings(settings).families()
    batches = [messages[i : i + args.batch] for i in range(0, len(messages), args.batch)]
    n = len(messages)
    figures: dict[str, Any] = {}

    def timed(name: str, fn: Any) -> None:
        started, cpu0 = time.perf_counter(), time.process_time()
        fn()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu0  # what a busy machine distorts least
        figures[name] = seconds
        figures[f"{name} cpu"] = cpu
        print(
            f"{name:<34} {seconds:7.3f} s  {seconds / n * 1e6:6.2f} µs/event  "
            f"{n / seconds:9,.0f}/s  cpu {cpu / n * 1e6:6.2f} µs/event"
        )

    def decode_only() -> None:
        decode = Worker.decode_batch if hasattr(Worker, "decode_batch") else None
        if decode is not None:
            for batch in batches:
                decode(worker, batch)
            return
        for m in messages:
            codec.decode(m.value(), families[m.topic()])

    async def whole() -> None:
        for batch in batches:
            await worker.process(batch)
            worker.gc.tick()  # as the hot loop does between batches

    def route_and_prepare() -> None:
        from sinks.base import Envelope

        records = [(m, codec.decode(m.value(), families[m.topic()])) for m in messages]
        started = time.perf_counter()
        for i in range(0, len(records), args.batch):
            envs = [
                Envelope(r, m.topic(), m.partition(), m.offset(), m.key(), m.value())
                for m, r in records[i : i + args.batch]
                if sink_targets(r)
            ]
            worker.router.write(envs)
        figures["route + sink preparation"] = time.perf_counter() - started

    worker = Worker(settings)
    timed("decode", decode_only)
    route_and_prepare()
    s = figures["route + sink preparation"]
    print(f"{'route + sink preparation':<34} {s:7.3f} s  {s / n * 1e6:6.2f} µs/event")
    worker = Worker(settings)  # fresh state and sinks for the whole pass
    if args.store == "rocksdb":
        for partition in sorted({m.partition() for m in messages}):
            worker.engine.open(partition)
            db = worker.engine.partitions[partition].db
            assert db is not None
            db.imaged()  # a running worker's store: the image, its changes cut at a snapshot
    profiler = cProfile.Profile() if args.profile else None
    loop = asyncio.new_event_loop()
    if profiler is not None:
        profiler.enable()
    timed("process (decode, state, route, sinks)", lambda: loop.run_until_complete(whole()))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    if args.checkpoint:
        checkpoint_steps(worker, n, args.profile)
    worker.gc.stop()
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.close()
    return 0


def checkpoint_steps(worker: Any, n: int, profile: str | None) -> None:
    """Time one checkpoint's CPU work over the worker's state (see the module doc);
    ``profile``: each step's cProfile goes to ``<profile>.<step>``."""

    def step(name: str, fn: Any) -> Any:
        profiler = cProfile.Profile() if profile else None
        started, cpu0 = time.perf_counter(), time.process_time()
        out = fn() if profiler is None else profiler.runcall(fn)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        if profiler is not None:
            profiler.dump_stats(f"{profile}.{name.split()[0]}")
        print(
            f"checkpoint: {name:<22} {seconds:7.3f} s  {seconds / n * 1e6:6.2f} µs/event  "
            f"cpu {cpu:6.3f} s"
        )
        return out

    ckpt = step("snapshot", worker.engine.snapshot)
    rows = sum(len(r) for r in ckpt.rows.values())
    print(
        f"checkpoint: {len(ckpt.changelog):,} changelog entries, {rows:,} rows "
        + ", ".join(f"{t} {len(r):,}" for t, r in ckpt.rows.items())
    )
    step("changelog queued", lambda: worker.changelog.write(ckpt.changelog))
    worker.olap  # noqa: B018 - the store exists and is migrated before the timing
    from streams.worker import _Warehouse

    step("rows into chDB", lambda: _Warehouse(worker).write(ckpt.rows))
    if ckpt.cuts:
        runs = {p: (0, 1) for p in ckpt.cuts}  # nothing was sent: any run will do
        step("local store written", lambda: worker.engine.persist(ckpt, runs))


if __name__ == "__main__":
    raise SystemExit(main())
