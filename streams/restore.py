"""A partition's state, back before its events are read: its local store reused and the
changelog after the store's marker joined, or the whole changelog read in large batches.

Sluice restores its state itself, not through Faust's table recovery: that reads the
changelog entry by entry (measured: ~5,000 entries/s at millions of emails, 980 s for
5,000,000), while this reads it with librdkafka in batches of :data:`BATCH` records
(:func:`sluice.kafka.read_ranges`, as the hot path reads events) and joins a batch at a
time (:meth:`streams.state.Component.restore_many`), streaming into the maps of the
partition's store, whose memory budget bounds the worker's RSS however large the state.

Per partition (:meth:`Restorer.restore`), once the group assigned it:

* **kept** — still in memory from before the rebalance: join what the changelog gained
  since (normally nothing; after a freeze past the session timeout, what the member
  that held it meanwhile wrote);
* **reused** — its store on disk holds up (:func:`streams.store.check`): opened as it is
  (no load of millions of entries), then the changelog after its marker is joined;
* **rebuilt** — no usable store (the log line says why): the whole changelog, from its
  first retained offset to the end it had when the rebuild began.

Every join is idempotent and commutative (the state is a semilattice), so an entry read
twice, or an entry already in the store, changes nothing. Only then is the partition
handed to the reader (:mod:`streams.worker`).

A rebuild is CPU-bound Python (decode, join, accumulate rows, encode and write two
store entries per email — its state as JSON, its lead's row with the row's tallies as a
pickle: ~16-18 µs of CPU per entry, ``python -m bench.rebuild``, against 19-29 µs with
three entries per email, all pickles), so a large one runs in a process of its own
(``python -m streams.restore rebuild``), several at once (``SLUICE_RESTORE_PROCESSES``,
one per CPU by default), each with a share of the memory budget: it writes the
partition's store and its image, the worker reopens it as a reused store, and its RSS
never holds the rebuild. The cyclic garbage collector is off
while a batch is joined: the state is acyclic, and with millions of live objects each
collection costs more than the batch (measured: half the rebuild's CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import sys
import time
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from sluice.kafka import Range, read_ranges
from streams.engine import Engine
from streams.store import Changelog, describe

log = logging.getLogger("sluice.restore")

BATCH = 20_000  # changelog records per batch joined under the state lock
# a rebuild of fewer entries than this stays in the worker (a process costs ~0.5 s)
PROCESS_MIN_ENTRIES = 50_000
# how long the changelog topic's id and delete.retention.ms are taken as known
TOPIC_FACTS_S = 30.0


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is joined (see the module doc)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class Restored:
    """How one partition's state came back (``sluice status`` shows the last one)."""

    partition: int
    mode: str  # kept | reused | rebuilt
    reason: str | None = None  # why it was rebuilt (a key of streams.store.REASONS)
    process: bool = False  # rebuilt in a process of its own
    entries: int = 0  # changelog records joined
    low: int = 0  # changelog offsets read: [low, high)
    high: int = 0
    seconds: float = 0.0
    at: float = 0.0  # epoch seconds it finished

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def begin(engine: Engine, partition: int, info: Changelog) -> Restored:
    """Decide how ``partition`` comes back (kept, reused or rebuilt) and open it; the
    changelog records ``[result.low, result.high)`` are to be joined next, then
    :func:`finish`. Under the state lock."""
    ps = engine.partitions.get(partition)
    if ps is not None:
        result = Restored(partition, "kept", low=ps.changelog_position, high=info.high)
        if result.low < result.high:
            engine.begin(partition)
        return result
    opened = engine.open(partition, info)
    ps = engine.partitions[partition]
    if opened is not None and opened.reused:
        return Restored(partition, "reused", low=ps.changelog_position, high=info.high)
    if opened is not None:
        # a first start (nothing in the changelog yet) is no news; anything else is
        level = logging.WARNING if info.high > info.low else logging.INFO
        log.log(level, "%s: rebuilding it from the changelog", describe(opened, partition))
    reason = opened.reason if opened is not None else "memory"
    return Restored(partition, "rebuilt", reason=reason, low=info.low, high=info.high)


def finish(engine: Engine, partition: int, result: Restored) -> None:
    """Every record up to ``result.high`` is joined: reconcile. Under the state lock, with
    a rebuilt partition's direct writes flushed (:meth:`streams.store.PartitionDB.flush`)."""
    if result.mode == "rebuilt" and not result.process:
        engine.rebuilt(partition, result.high)
        return
    ps = engine.partitions[partition]
    ps.changelog_position = max(ps.changelog_position, result.high)
    if result.mode == "reused" or result.entries:
        engine.restored([partition])
    ps.joining = False  # complete up to the changelog's end: the marker may follow it


def restore_now(
    engine: Engine, partition: int, info: Changelog, records: Iterable[tuple[str, Any]]
) -> Restored:
    """:class:`Restorer`'s steps without an event loop (tests, tools): ``records``, the
    changelog partition decoded, offset by offset from ``info.low``."""
    result = begin(engine, partition, info)
    if result.low < result.high:
        batch = list(itertools.islice(records, result.low - info.low, result.high - info.low))
        with gc_paused():
            engine.join(batch, partition)
        result.entries = len(batch)
    db = engine.partitions[partition].db
    if result.mode == "rebuilt" and db is not None and db.unflushed:
        db.flush()
    finish(engine, partition, result)
    return result


def decode_batch(messages: Iterable[Any]) -> list[tuple[str, Any]]:
    """Changelog records (confluent-kafka messages) as :meth:`Engine.join` takes them
    (:func:`streams.engine.decode_entry`, inlined: one call less per record)."""
    loads = orjson.loads
    return [(loads(m.key()), None if (v := m.value()) is None else loads(v)) for m in messages]


class ChangelogSource:
    """The state changelog, read with confluent-kafka (blocking calls: run in a thread).

    ``delete_retention_ms``: what the topic catalog asks for; the broker's own value of
    the topic wins when it answers (an operator may have changed it).
    """

    def __init__(self, conf: dict[str, Any], topic: str, delete_retention_ms: int) -> None:
        # librdkafka's read-ahead: two batches' worth, not its default 64 MiB (a rebuild
        # process must stay small: measured ~100 MiB of its baseline were this queue)
        self.conf = {**conf, "queued.max.messages.kbytes": 16 * 1024}
        self.topic = topic
        self.delete_retention_ms = delete_retention_ms
        self._consumer: Any = None
        self._admin: Any = None
        self._facts: tuple[float, int, str | None] | None = None  # (when, retention, id)

    def _clients(self) -> tuple[Any, Any]:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        if self._consumer is None:
            self._consumer = Consumer(
                {**self.conf, "group.id": "sluice-restore", "enable.auto.commit": False}
            )
            self._admin = AdminClient(self.conf)
        return self._consumer, self._admin

    def describe(self, partition: int, timeout: float = 15.0) -> Changelog:
        """Offsets, topic id and delete.retention.ms of one changelog partition."""
        from confluent_kafka import TopicPartition

        consumer, admin = self._clients()
        low, high = consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=timeout
        )
        if self._facts is None or time.monotonic() - self._facts[0] > TOPIC_FACTS_S:
            retention = self._retention(admin, timeout)
            self._facts = (time.monotonic(), retention, self._topic_id(admin, timeout))
        _, retention, topic_id = self._facts
        return Changelog(low=low, high=high, delete_retention_ms=retention, topic_id=topic_id)

    def _retention(self, admin: Any, timeout: float) -> int:
        from confluent_kafka.admin import ConfigResource

        try:
            resource = ConfigResource(ConfigResource.Type.TOPIC, self.topic)
            found = admin.describe_configs([resource], request_timeout=timeout)
            entries = next(iter(found.values())).result(timeout)
            return int(entries["delete.retention.ms"].value)
        except Exception as exc:  # the catalog's value, then
            log.debug("delete.retention.ms of %s unknown (%s)", self.topic, exc)
            return self.delete_retention_ms

    def _topic_id(self, admin: Any, timeout: float) -> str | None:
        try:
            from confluent_kafka import TopicCollection

            found = admin.describe_topics(TopicCollection([self.topic]), request_timeout=timeout)
            return str(next(iter(found.values())).result(timeout).topic_id)
        except Exception as exc:
            log.debug("topic id of %s unknown (%s)", self.topic, exc)
            return None

    def read(self, partition: int, low: int, high: int) -> Generator[list[tuple[str, Any]]]:
        """Changelog records ``[low, high)`` of one partition, decoded, in batches."""
        for messages in read_ranges(
            self.conf, [Range(self.topic, partition, low, high)], batch=BATCH
        ):
            yield decode_batch(messages)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class Restorer:
    """Restores partitions into ``engine`` (on the event loop; the engine only changes
    under ``lock``, a batch at a time, so the hot loop and checkpoints of other
    partitions go on meanwhile)."""

    def __init__(
        self,
        engine: Engine,
        lock: asyncio.Lock,
        source: ChangelogSource,
        processes: int = 0,
        process_min_entries: int = PROCESS_MIN_ENTRIES,
    ) -> None:
        """``processes``: rebuilds run in processes of their own at once (0: none)."""
        self.engine = engine
        self.lock = lock
        self.source = source
        self.processes = processes if engine.store is not None else 0
        self.process_min_entries = process_min_entries
        self._slots = asyncio.Semaphore(max(1, processes))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sluice-restore")
        self.last: dict[int, Restored] = {}

    @property
    def running(self) -> set[int]:
        """The partitions being restored: the engine's (it rewrites no rows meanwhile)."""
        return self.engine.restoring

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def restore(self, partition: int) -> Restored:
        """Bring ``partition``'s state up to the changelog's current end."""
        started = time.monotonic()
        self.running.add(partition)
        try:
            info: Changelog = await self._blocking(self.source.describe, partition)
            result = await self._restore(partition, info)
        except BaseException:
            # a partial restore must never pass for a complete state: the next attempt
            # starts from the store on disk (or the changelog) again
            self.engine.drop([partition])
            raise
        finally:
            self.running.discard(partition)
        result.seconds = round(time.monotonic() - started, 3)
        result.at = time.time()
        self.last[partition] = result
        if result.mode != "kept" or result.entries:
            log.info(
                "partition %d: state %s, %d changelog entries [%d, %d) joined in %.1fs",
                partition,
                result.mode,
                result.entries,
                result.low,
                result.high,
                result.seconds,
            )
        return result

    async def _restore(self, partition: int, info: Changelog) -> Restored:
        async with self.lock:
            result = begin(self.engine, partition, info)
        if (
            result.mode == "rebuilt"
            and self.processes
            and result.high - result.low >= self.process_min_entries
            and await self._rebuild_in_process(partition, info)
        ):
            async with self.lock:
                reopened = begin(self.engine, partition, info)
            if reopened.mode == "reused":
                result.process = True
                result.entries = result.high - result.low
                tail = reopened.low  # what the process left to join: nothing, normally
            else:  # its store does not hold up after all: here, then
                result = reopened
                tail = result.low
        else:
            tail = result.low
        if tail < result.high:
            result.entries += await self._join(partition, tail, result.high)
        async with self.lock:
            db = self.engine.partitions[partition].db
            if result.mode == "rebuilt" and db is not None and db.unflushed:
                await self._blocking(db.flush)  # still under the lock: no direct write meanwhile
            finish(self.engine, partition, result)
        return result

    async def _rebuild_in_process(self, partition: int, info: Changelog) -> bool:
        """Rebuild ``partition``'s store in a process of its own; True when it wrote the
        image (the partition is then reopened from it)."""
        async with self._slots:
            async with self.lock:
                self.engine.drop([partition])  # its database, for the process to open
            budget = self.engine.store.budget  # type: ignore[union-attr]
            # a quarter of what this worker's memory budget has left: a process of its
            # own costs ~250 MiB besides its entries (read-ahead, RocksDB's buffers, one
            # batch), and the worker and its rebuilds together must stay below its steady
            # state. A small budget costs a rebuild little (measured: 127,519 entries in
            # 6.1 s with 10,000 entries in memory, 7.9 s with 250,000).
            share = max((budget.capacity - budget.hot) // (4 * self.processes), 10_000)
            command = [
                sys.executable,
                "-m",
                "streams.restore",
                "rebuild",
                str(partition),
                str(info.low),
                str(info.high),
                f"--memory-items={share}",
                f"--topic-id={info.topic_id or ''}",
            ]
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*command, env=dict(os.environ))
            try:
                code = await proc.wait()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
            if code != 0:
                log.error(
                    "partition %d: the rebuild process exited %s; rebuilding here", partition, code
                )
                return False
            log.info(
                "partition %d: rebuilt in a process of its own in %.1fs",
                partition,
                time.monotonic() - started,
            )
            return True

    async def _join(self, partition: int, low: int, high: int) -> int:
        """Join changelog records ``[low, high)``; the next batch is read while one is
        joined."""
        batches = self.source.read(partition, low, high)
        joined = 0
        pending = asyncio.ensure_future(self._blocking(next, batches, None))
        try:
            while True:
                batch = await pending
                if batch is None:
                    return joined
                pending = asyncio.ensure_future(self._blocking(next, batches, None))
                async with self.lock:
                    with gc_paused():
                        self.engine.join(batch, partition)
                joined += len(batch)
        finally:
            # the generator's consumer lives in the pool's thread: close it there, after
            # the read in flight
            with contextlib.suppress(BaseException):
                await pending
            with contextlib.suppress(BaseException):
                await self._blocking(batches.close)

    def status(self) -> dict[str, Any]:
        return {
            "restoring": sorted(self.running),
            "partitions": {p: r.as_dict() for p, r in sorted(self.last.items())},
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.source.close()


def rebuild(
    engine: Engine,
    source: ChangelogSource,
    partition: int,
    low: int,
    high: int,
    topic_id: str | None = None,
) -> int:
    """Rebuild ``partition``'s local store from changelog records ``[low, high)`` and write
    its image (the body of ``python -m streams.restore rebuild``); return the records read."""
    engine.open(partition, None)  # no changelog facts: never reused, emptied
    db = engine.partitions[partition].db
    assert db is not None
    db.changelog_id = topic_id
    joined = 0
    for batch in source.read(partition, low, high):
        engine.join(batch, partition)
        joined += len(batch)
    db.flush()
    engine.rebuilt(partition, high)
    engine.write_image(partition)
    return joined


def main(argv: list[str] | None = None) -> int:
    """``python -m streams.restore rebuild PARTITION LOW HIGH``: one partition's rebuild in
    a process of its own (the worker starts it; settings from the same environment)."""
    import argparse

    from sluice.kafka import kafka_config
    from sluice.settings import Settings
    from topics.catalog import Catalog

    parser = argparse.ArgumentParser(prog="python -m streams.restore")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("rebuild", help="rebuild one partition's local store")
    cmd.add_argument("partition", type=int)
    cmd.add_argument("low", type=int)
    cmd.add_argument("high", type=int)
    cmd.add_argument("--memory-items", type=int, default=None)
    cmd.add_argument("--topic-id", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
    )
    gc.disable()  # short-lived, acyclic state: see the module doc
    settings = Settings()
    if args.memory_items:
        settings = settings.model_copy(update={"sluice_state_memory_items": args.memory_items})
    spec = Catalog.from_settings(settings).changelog
    source = ChangelogSource(
        kafka_config(settings), spec.name, int(spec.config["delete.retention.ms"])
    )
    engine = Engine.for_settings(settings, persistent=True)
    started = time.monotonic()
    try:
        joined = rebuild(engine, source, args.partition, args.low, args.high, args.topic_id or None)
        entries = engine.store.stats()["entries"] if engine.store is not None else 0
    finally:
        engine.close()
        source.close()
    log.info(
        "partition %d: %d changelog entries [%d, %d) rebuilt into %d state entries in %.1fs",
        args.partition,
        joined,
        args.low,
        args.high,
        entries,
        time.monotonic() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
