"""The hot path: read a batch → decode → route → apply to state; checkpoint every interval.

Who does what
-------------
Faust (:mod:`streams.app`) is the application: its consumer group assigns this worker its
partitions and rebalances them (with static membership when ``SLUICE_INSTANCE_ID`` is
set), its producer writes dead letters, its web server answers (:mod:`streams.web`). The
event topics' partitions are *handed off* to :class:`streams.fetch.Reader`
(confluent-kafka, batches of thousands): Faust's fetcher skips them
(:func:`streams.seam.hand_off`), because its per-event machinery (~90 µs of CPU per event,
measured) would cap the worker near 11,000 events/s before any work. The state is
restored by Sluice itself (:mod:`streams.restore`): each partition's local store
(:mod:`streams.store`) reopened and the changelog after its marker joined, or the
changelog read in large batches.

Delivery semantics
------------------
At-least-once from Kafka, made exact by idempotent state merges and idempotent OLAP
writes (see :mod:`streams.engine`). Sluice commits offsets itself, through Faust's
consumer (so under the group's current generation), only after the checkpoint that
covers them succeeded (:mod:`streams.checkpoint`): the committed offset of a partition is
one past the last event applied.

The reader is assigned a partition once its state is restored (:meth:`Worker.on_assigned`
starts one restore per partition), starts at the group's committed offset, and lets go of
it before Faust revokes it (a drain checkpoint commits everything applied first). Reading
and assignment changes never overlap, and a batch is applied under the state lock, so no
offset is committed for an event that was not applied (or dead-lettered) in full.

Every decoded event is also handed to the sinks its route names (:mod:`streams.routing`),
which buffer it in bounded batches. A sink that stays down fails the checkpoint, so events
pile up only to :data:`MAX_PENDING` (then the reader stops taking: backpressure). A sink
whose destination refuses Sluice (401/403) stops its route instead, as ``SINK_ON_REFUSED``
says: its events dead-lettered (``destination_refused``) while the checkpoint commits, or
held, in which case the checkpoint fails before its snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Message
from faust.types import TP

from avro_schemas.codec import Codec, DecodeError
from sinks.base import DESTINATION_REFUSED, Envelope, Rejected
from sinks.registry import build_sinks
from sluice.kafka import kafka_config
from sluice.olap import OlapClient, OlapError, migrate, open_store
from sluice.settings import Settings
from streams import seam, web
from streams.checkpoint import Checkpointer, Outcome, Ports, Progress
from streams.engine import Engine
from streams.fetch import ChangelogWriter, Reader
from streams.metrics import HealthMetrics
from streams.restore import ChangelogSource, Restorer
from streams.routing import Router
from topics.catalog import Catalog
from topics.dead_letters import dead_letter_headers

log = logging.getLogger("sluice.worker")

# Most unacknowledged events held between checkpoints before the reader stops taking more
# (backpressure when ClickHouse is down: Kafka keeps the events, not our memory).
MAX_PENDING = 200_000


class Worker:
    """The engine, the codec, the sinks and the reader, driven by one Faust app."""

    def __init__(self, settings: Settings, olap: OlapClient | None = None) -> None:
        self.settings = settings
        self.catalog = Catalog.from_settings(settings)
        self.engine = Engine.for_settings(settings, persistent=True)
        self.codec = Codec(settings=settings)
        self._olap = olap
        self.health = HealthMetrics()
        self.router = Router(
            build_sinks(settings, self.health.observer()),
            on_routed=lambda sink, n: self.health.routed.labels(sink).inc(n),
            on_refused=settings.sink_on_refused,
            on_refused_by_sink=settings.sink_on_refused_by_sink,
        )
        self.families = self.catalog.families()
        self.progress = Progress()
        self.reader = Reader(kafka_config(settings), settings.sluice_app_id)
        self.changelog = ChangelogWriter(kafka_config(settings), self.catalog.changelog.name)
        self.draining = False
        self.last_checkpoint = time.monotonic()
        # the state: a batch is applied, or a snapshot taken, under it
        self.state_lock = asyncio.Lock()
        self._ckpt_task: asyncio.Task | None = None
        changelog = self.catalog.changelog
        self.restorer = Restorer(
            self.engine,
            self.state_lock,
            ChangelogSource(
                kafka_config(settings), changelog.name, int(changelog.config["delete.retention.ms"])
            ),
            processes=(
                settings.sluice_restore_processes
                if settings.sluice_restore_processes is not None
                else os.cpu_count() or 1
            ),
        )
        self._restores: dict[int, asyncio.Task] = {}
        self.owned: set[int] = set()  # partition numbers of the current assignment
        self._reaped = False
        self.api_token = web.api_token(settings)
        self.stats: dict[str, Any] = {
            "events": 0,
            "dead_letters": 0,
            "checkpoints": 0,
            "checkpoint_failures": 0,
            "last_flush": {},
        }
        self.app: Any = None  # the Faust app, set by bind()
        self.checkpointer: Checkpointer | None = None

    def bind(self, app: Any) -> None:
        """Attach the Faust app that drives this worker (:func:`streams.app.build_app`)."""
        self.app = app
        self.checkpointer = Checkpointer(
            self.engine,
            self.progress,
            Ports(
                sinks=self.router,
                dead_letters=_DeadLetters(self),
                changelog=self.changelog,
                warehouse=_Warehouse(self),
                group=_Group(app),
            ),
            self.state_lock,
            on_late=self._count_late,
        )

    @property
    def olap(self) -> OlapClient:
        """The OLAP store, opened and migrated on first use."""
        if self._olap is None:
            self._olap = open_store(self.settings)
            try:
                migrate(self._olap, cluster=self.settings.clickhouse_cluster)
            except OlapError as exc:
                raise OlapError(
                    f"{exc} (the store needs migrating: run `sluice olap migrate` as a user "
                    "allowed to create tables, see docs/operations.md)"
                ) from None
        return self._olap

    # -- the hot path -------------------------------------------------------------------
    async def agent(self, stream: Any) -> None:
        """Subscribes the event topics, so Faust's group assigns their partitions.

        Faust never fetches them (they are handed off to the reader); anything fetched in
        the moment before a new assignment is handed off is ignored: the reader starts at
        the committed offsets and reads it again.
        """
        async for _ in stream.events():
            pass

    async def hot_loop(self) -> None:
        """Fetch batches from the reader, apply them, checkpoint every interval."""
        interval = self.settings.sluice_flush_interval_s
        while True:
            seam.still_consuming(self.app.consumer)
            messages = await self.reader.fetch()
            if messages:
                async with self.state_lock:
                    await self.process(messages)
            elif not self.reader.assigned:
                await asyncio.sleep(0.05)
            if self.draining or time.monotonic() - self.last_checkpoint >= interval:
                self._start_checkpoint()
            while self.progress.unflushed >= MAX_PENDING:
                # backpressure: take nothing more until a checkpoint gets through
                await asyncio.sleep(1.0)
                await self.checkpoint()
                seam.still_consuming(self.app.consumer)

    def _start_checkpoint(self) -> None:
        """Checkpoint in the background (reading and applying go on meanwhile)."""
        if self._ckpt_task is None or self._ckpt_task.done():
            self._ckpt_task = asyncio.ensure_future(self.checkpoint())

    async def process(self, messages: Sequence[Message]) -> None:
        """Decode and apply one batch; dead-letter what cannot be decoded.

        Called with the state lock held, so a checkpoint never commits an offset whose
        dead letter is not queued yet.
        """
        applied = self.progress.applied
        decode = self.codec.decode
        engine = self.engine
        families = self.families
        routed: list[Envelope] = []
        add = routed.append
        consumed: dict[str, int] = {}
        letters: list[tuple[Message, DecodeError]] = []
        for message in messages:
            topic = message.topic()
            partition = message.partition()
            offset = message.offset()
            value = message.value()
            family = families[topic]
            consumed[family] = consumed.get(family, 0) + 1
            try:
                record = decode(value, family)
            except DecodeError as exc:
                letters.append((message, exc))
                engine.advance(engine.state(partition), topic, offset)
            else:
                engine.apply(partition, topic, offset, family, record)
                add(Envelope(record, topic, partition, offset, message.key(), value))
            applied[TP(topic, partition)] = offset + 1
        self.router.write(routed)
        for family, n in consumed.items():
            self.health.consumed.labels(family).inc(n)
        self.progress.unflushed += len(messages)
        self.stats["events"] += len(messages)
        for message, exc in letters:
            await self.dead_letter(message, exc.reason, exc.detail)

    async def dead_letter(self, message: Message, reason: str, detail: str) -> None:
        """Queue an undecodable record for the dead-letter topic (raw bytes unchanged)."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        self.stats["dead_letters"] += 1
        self.health.dead_letters.labels("decode", reason).inc()
        log.warning("dead letter %s[%s]@%s: %s: %s", topic, partition, offset, reason, detail)
        await self.app.dlq.send(
            key=message.key(),
            value=message.value(),
            headers=dead_letter_headers(
                reason=reason,
                detail=detail,
                topic=topic,
                partition=partition,
                offset=offset,
                stage="decode",
            ),
        )

    # -- checkpoints --------------------------------------------------------------------
    async def drain(self) -> None:
        """Stop reading and checkpoint everything (before a revoke and before shutdown)."""
        self.draining = True
        await self.reader.unassign()
        await self.checkpoint()

    async def checkpoint(self) -> bool:
        """One checkpoint (:mod:`streams.checkpoint`); True when it succeeded."""
        assert self.checkpointer is not None, "bind() the Faust app first"
        self.last_checkpoint = time.monotonic()
        outcome = await self.checkpointer.run()
        self._record(outcome)
        return outcome.ok

    def _record(self, outcome: Outcome) -> None:
        if not outcome.ok:
            self.health.checkpoint_failures.inc()
            self.stats["checkpoint_failures"] += 1
            return
        if not (outcome.events or outcome.changelog or outcome.rows or outcome.committed):
            return
        self.stats["checkpoints"] += 1
        self.health.checkpoint_seconds.observe(outcome.seconds)
        now = time.time()
        for table in outcome.rows:
            self.stats["last_flush"][table] = now
        log.info(
            "checkpoint: %d events, %d changelog entries, %s rows in %.3fs",
            outcome.events,
            outcome.changelog,
            outcome.rows,
            outcome.seconds,
        )

    def _count_late(self, late: dict[str, int]) -> None:
        counts = self.stats.setdefault("late_events", {})
        for event_type, n in late.items():
            self.health.late.labels(event_type).inc(n)
            counts[event_type] = counts.get(event_type, 0) + n

    # -- rebalancing --------------------------------------------------------------------
    async def on_revoked(self, app: Any, revoked: set, **_: Any) -> None:
        """drain() ran before (Faust's wait for in-flight events); whatever was not
        committed is reprocessed by the partition's next owner (maybe this worker).

        Every partition is revoked at each rebalance, even those we keep: their state
        goes (or stays) in :meth:`on_assigned`.
        """
        self.owned = set()  # a restore finishing now must not hand its partition out
        await self.reader.unassign((tp.topic, tp.partition) for tp in revoked)
        self.router.forget({(tp.topic, tp.partition) for tp in revoked})
        self.progress.forget(revoked)

    async def on_assigned(self, app: Any, assigned: set, **_: Any) -> None:
        """Restore every assigned partition, then read it (each as soon as it is ready).

        A partition that moved away leaves memory (its local store stays on disk, for a
        return); one still being restored from an earlier assignment goes on; one kept
        in memory joins what the changelog gained meanwhile.
        """
        self.draining = False
        mine = {tp for tp in assigned if tp.topic in self.families}
        owned = {tp.partition for tp in mine}
        self.owned = owned
        for partition, task in list(self._restores.items()):
            if partition not in owned and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._restores = {p: t for p, t in self._restores.items() if p in owned}
        async with self.state_lock:
            self.engine.drop(set(self.engine.partitions) - owned)
            if not self._reaped and self.engine.store is not None:
                # stores of partitions held elsewhere now, too old to be reused ever
                self._reaped = True
                retention = self.restorer.source.delete_retention_ms
                gone = self.engine.store.reap(owned, retention)
                if gone:
                    log.info("deleted the local stores of partitions %s (too old)", gone)
        seam.pause_prefetch(self.app.consumer, mine)
        for partition in sorted(owned):
            task = self._restores.get(partition)
            if task is None or task.done():
                self._restores[partition] = asyncio.ensure_future(self._restore(partition))

    async def _restore(self, partition: int) -> None:
        """Restore one partition (retrying while it is ours), then hand it to the reader."""
        delay = 1.0
        while partition in self.owned:
            try:
                done = await self.restorer.restore(partition)
                self.health.restores.labels(done.mode, done.reason or "-").inc()
                self.health.restore_seconds.labels(done.mode).observe(done.seconds)
                self.health.restore_entries.labels(done.mode).inc(done.entries)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("partition %d: restoring its state failed (%s); retrying", partition, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if partition not in self.owned:
            return  # revoked meanwhile: the next assignment restores it again
        tps = {tp for tp in self.app.consumer.assignment() if tp.topic in self.families}
        mine = {tp for tp in tps if tp.partition == partition}
        seam.pause_prefetch(self.app.consumer, mine)
        await self.reader.assign((tp.topic, tp.partition) for tp in mine)

    async def stop(self) -> None:
        """Shutdown, after the consumer stopped (its last drain flushed every sink and
        wrote the local stores' images)."""
        self.owned = set()
        for task in self._restores.values():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.router.close()
        self.reader.close()
        self.restorer.close()
        async with self.state_lock:
            self.engine.close()


class _DeadLetters:
    """The checkpoint's dead-letter port: Faust's producer on the dead-letter topic."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def rejected(self, item: Rejected) -> None:
        """Dead-letter an event a sink refused for good (stage = the sink's name)."""
        w, env = self.worker, item.envelope
        w.stats["dead_letters"] += 1
        w.health.dead_letters.labels(item.sink, item.reason).inc()
        if item.reason != DESTINATION_REFUSED:  # those: one line per sink and interval
            # reason only: a destination's error text may echo the event back
            log.warning(
                "dead letter %s[%s]@%s: %s refused it: %s",
                env.topic,
                env.partition,
                env.offset,
                item.sink,
                item.reason,
            )
        await w.app.dlq.send(
            key=env.key,
            value=env.value,
            headers=dead_letter_headers(
                reason=item.reason,
                detail=item.detail,
                topic=env.topic,
                partition=env.partition,
                offset=env.offset,
                stage=item.sink,
            ),
        )

    async def flush(self) -> None:
        await self.worker.app.producer.flush()


class _Warehouse:
    """The checkpoint's OLAP port: rows in the engine's column order."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def write(self, rows: dict[str, list[list]]) -> None:
        engine = self.worker.engine
        self.worker.olap.write({t: (engine.columns(t), r) for t, r in rows.items()})


class _Group:
    """The checkpoint's consumer-group port: Faust's consumer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def generation(self) -> int:
        return self.app.consumer_generation_id

    def assignment(self) -> set:
        return self.app.consumer.assignment()

    async def commit(self, offsets: Any) -> bool:
        return await seam.commit(self.app.consumer, offsets)
