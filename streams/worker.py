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

Where an event is applied
-------------------------
On its *home* partition (:meth:`topics.catalog.TopicSpec.home`): the one it was read from
when it carries the catalog's key. A record with another key (from a producer that still
uses the tenant key of an older release, a replayed dead letter of that time, a history
read again) may belong to another partition's state: it is not applied here but forwarded,
unchanged, to its home partition by the next checkpoint, before the offset that read it is
committed (:class:`streams.engine.Forward`); its home applies it like any redelivery. The
state itself must be where the catalog's keys put it: a restore whose sample of
attribution state is not refuses to run (:func:`streams.rekey.misplaced`; run ``sluice
topics rekey``).

Every decoded event is also handed to the sinks its route names (:mod:`streams.routing`),
which buffer it in bounded batches and send them in the background; a sink holding more
than ``SINK_MAX_BUFFERED`` unsent events stops the reader until it caught up (a slow
destination costs throughput, not memory). A sink that stays down fails the checkpoint, so
events pile up only to :data:`MAX_PENDING` (then the reader stops taking: backpressure). A sink
whose destination refuses Sluice (401/403) stops its route instead, as ``SINK_ON_REFUSED``
says: its events dead-lettered (``destination_refused``) while the checkpoint commits, or
held, in which case the checkpoint fails before its snapshot.

Erasure (docs/erasure.md)
-------------------------
Before Faust starts, the worker reads the erasure registry whole
(:meth:`Worker.load_registry`), so no state restored from the changelog and no event
read later can bring an erased lead back; then it follows the registry
(:meth:`Worker.follow_registry`) and hands each newly erased lead to every partition it
holds. Its checkpoints write the registry records of the erasure requests they cover,
purge erased leads' OLAP rows and ask PostHog to delete what it holds of them
(:class:`_Erasures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Message
from faust.types import TP

from avro_schemas.codec import Codec, DecodeError
from sinks.base import DESTINATION_REFUSED, Envelope, PermanentError, Rejected, TransientError
from sinks.posthog import lead_distinct_id
from sinks.registry import build_deletion, build_sinks
from sluice.kafka import kafka_config
from sluice.olap import OlapClient, OlapError, migrate, open_store
from sluice.olap.reader import OlapReader, open_reader
from sluice.privacy import (
    Erasure,
    Registry,
    RegistryFollower,
    RegistryWriter,
    now_ms,
    read_registry,
)
from sluice.privacy import (
    Outcome as DeletionOutcome,
)
from sluice.settings import Settings
from streams import gcpolicy, seam
from streams.checkpoint import Checkpointer, Outcome, Ports, Progress
from streams.engine import Engine, ErasureWork, Forward
from streams.erasure import Forget, LeadKeys
from streams.fetch import BATCH, ChangelogWriter, Forwarder, Reader
from streams.metrics import HealthMetrics
from streams.rekey import Placement, misplaced
from streams.restore import ChangelogSource, Restorer
from streams.routing import Router
from topics.catalog import Catalog
from topics.dead_letters import dead_letter_headers

log = logging.getLogger("sluice.worker")
new_tuple = tuple.__new__  # builds an Envelope without its Python-level __new__

# Most unacknowledged events held between checkpoints before the reader stops taking more
# (backpressure when ClickHouse is down: Kafka keeps the events, not our memory).
MAX_PENDING = 200_000
# how often the hot loop looks again at a sink it waits for (SINK_MAX_BUFFERED)
SINK_WAIT_S = 0.01


class Worker:
    """The engine, the codec, the sinks and the reader, driven by one Faust app."""

    def __init__(self, settings: Settings, olap: OlapClient | None = None) -> None:
        self.settings = settings
        self.started_with: list[str] = []  # facts of the start, logged once logging is set up
        self.catalog = Catalog.from_settings(settings)
        # the erased leads: read whole before any state is restored (load_registry)
        self.registry = Registry()
        self._registry_offset: int | None = None
        self.engine = Engine.for_settings(settings, self.registry, persistent=True)
        self.engine.pace_rewrites(settings.sluice_flush_interval_s)
        self.codec = Codec(settings=settings)
        self._olap = olap
        self._reader: OlapReader | None = None
        self.health = HealthMetrics()
        self.router = Router(
            build_sinks(settings, self.health.observer(), lead_secrets=_LeadSecrets(self.engine)),
            on_routed=lambda sink, n: self.health.routed.labels(sink).inc(n),
            on_refused=settings.sink_on_refused,
            on_refused_by_sink=settings.sink_on_refused_by_sink,
        )
        self.families = self.catalog.families()
        self.specs = {spec.name: spec for spec in self.catalog.event_topics()}
        self.placement = Placement.of(self.catalog)
        self.progress = Progress()
        # fetches stay large (a fetch's round trip to the reader's thread is paid per
        # fetch); the hot loop applies them SLUICE_BATCH_MAX events at a time
        self.fetcher = Reader(
            kafka_config(settings), settings.sluice_app_id, max(BATCH, settings.sluice_batch_max)
        )
        self.changelog = ChangelogWriter(kafka_config(settings), self.catalog.changelog.name)
        self.forwarder = Forwarder(kafka_config(settings))
        self.registry_writer = RegistryWriter(kafka_config(settings), self.catalog.erasures.name)
        self.draining = False
        self._next_wait_log = 0.0  # monotonic: the next "reader waited" line (rate-limited)
        self.last_checkpoint = time.monotonic()
        self.gc = gcpolicy.GcPolicy()  # full collections once a minute, not once a second
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
        # the bearer token of the query and rows endpoints (streams/web.py)
        self.api_token = settings.ensure_api_token()
        if settings.sluice_api_token is None:
            log.info(
                "no SLUICE_API_TOKEN: the query endpoint's token is in %s", settings.api_token_file
            )
        self.stats: dict[str, Any] = {
            "events": 0,
            "dead_letters": 0,
            "forwarded": 0,
            "sink_waits": 0,  # times the reader waited for a sink (SINK_MAX_BUFFERED)
            "sink_wait_s": 0.0,
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
                forwarder=self.forwarder,
                erasures=_Erasures(self),
            ),
            self.state_lock,
            on_late=self._count_late,
        )

    @property
    def olap_reader(self) -> OlapReader:
        """The query path's own connection (never the writer's client, lock or executor)."""
        if self._reader is None:
            self.olap  # noqa: B018 - the store exists and is migrated first
            self._reader = open_reader(self.settings)
        return self._reader

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

    # -- the erasure registry -----------------------------------------------------------
    def load_registry(self) -> None:
        """Read the erasure registry whole (creating its topic if missing) before Faust
        starts: every state restored afterwards is checked against it. Raises if Kafka
        does not answer: a worker that cannot know which leads are erased must not run."""
        from sluice.kafka import create_missing

        conf = kafka_config(self.settings)
        create_missing(conf, [self.catalog.erasures])
        _, self._registry_offset = read_registry(conf, self.catalog.erasures.name, self.registry)
        self.engine.purge_all()  # a crash may have come between an erasure and its purge
        log.info("erasure registry: %d erased lead(s)", len(self.registry))

    async def follow_registry(self) -> None:
        """Follow the registry: each newly erased lead is erased on every partition held."""
        offset = self._registry_offset or 0  # not loaded (tests): read it all now
        conf = kafka_config(self.settings)
        follower = RegistryFollower(conf, self.catalog.erasures.name, offset)
        pool = ThreadPoolExecutor(1, thread_name_prefix="sluice-registry")
        loop = asyncio.get_running_loop()
        try:
            while True:
                entries = await loop.run_in_executor(pool, follower.poll, 0.5)
                if not entries:
                    continue
                async with self.state_lock:
                    new = self.engine.erase(entries)
                if new:
                    self.health.erasures.inc(new)
                    log.info("erased %d lead(s) from this worker's state", new)
        finally:
            pool.shutdown(wait=True)  # a poll in flight returns within its timeout
            follower.close()

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
        for fact in self.started_with:
            log.info("%s", fact)
        self.gc.prepare()  # start-up's garbage collected before any event is waiting
        while True:
            seam.still_consuming(self.app.consumer)
            messages = await self.fetcher.fetch()
            if messages:
                async with self.state_lock:  # one fetch is applied as one, as to a checkpoint
                    await self._apply_in_steps(messages)
                self.gc.tick()
            elif not self.fetcher.assigned:
                await asyncio.sleep(0.05)
            if self.draining or time.monotonic() - self.last_checkpoint >= interval:
                self._start_checkpoint()
            await self._sinks_catch_up(interval)
            while self.progress.unflushed >= MAX_PENDING:
                # backpressure: take nothing more until a checkpoint gets through
                await asyncio.sleep(1.0)
                await self.checkpoint()
                seam.still_consuming(self.app.consumer)

    async def _sinks_catch_up(self, interval: float) -> None:
        """Read nothing more while a sink holds over ``SINK_MAX_BUFFERED`` unsent events
        (its background sends are behind its destination): what bounds the sinks'
        memory between checkpoints. Checkpoints still start on time meanwhile (their
        flush is what gets a failing sink's events out, or fails and retries)."""
        limit = self.settings.sink_max_buffered
        router = self.router
        sink = router.backlogged(limit)
        if sink is None:
            return
        self.stats["sink_waits"] += 1
        started = time.monotonic()
        while not self.draining and router.backlogged(limit) is not None:
            await asyncio.sleep(SINK_WAIT_S)
            if time.monotonic() - self.last_checkpoint >= interval:
                self._start_checkpoint()
            seam.still_consuming(self.app.consumer)
        waited = time.monotonic() - started
        self.stats["sink_wait_s"] = self.stats.get("sink_wait_s", 0.0) + waited
        if waited >= 1.0 or self._next_wait_log <= started:
            self._next_wait_log = started + 30.0
            log.info("reader waited %.2f s for sink %s (SINK_MAX_BUFFERED=%d)", waited, sink, limit)

    async def _apply_in_steps(self, messages: Sequence[Message]) -> None:
        """Process a fetch ``SLUICE_BATCH_MAX`` events at a time, giving the event loop a
        turn between them (sink sends, timers, the checkpoint's flush run meanwhile; the
        checkpoint's snapshot waits for the whole fetch, under the state lock)."""
        step = self.settings.sluice_batch_max
        if len(messages) <= step:
            await self.process(messages)
            return
        for start in range(0, len(messages), step):
            if start:
                await asyncio.sleep(0)
            await self.process(messages[start : start + step])

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
        specs = self.specs
        routed: list[Any] = []  # envelopes, or only the records when no sink is on
        add = routed.append
        routing = bool(self.router.sinks)
        consumed: dict[str, int] = {}
        letters: list[tuple[Message, DecodeError]] = []
        last: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset read
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
                key = message.key()
                spec = specs[topic]
                home = spec.home(record, partition, key)
                if home == partition:
                    engine.apply(partition, topic, offset, family, record)
                    add(
                        # tuple.__new__: the named tuple's own __new__ is a Python call
                        new_tuple(Envelope, (record, topic, partition, offset, key, value))
                        if routing
                        else record
                    )
                else:  # another partition's state: its home applies (and routes) it
                    origin = f"{partition}:{offset}"
                    forward = Forward(topic, home, spec.record_key(record), value, origin)
                    engine.forward(partition, topic, offset, forward)
                    self.stats["forwarded"] += 1
                    self.health.forwarded.labels(family).inc()
            last[(topic, partition)] = offset
        engine.settle()
        for (topic, partition), offset in last.items():
            applied[TP(topic, partition)] = offset + 1
        if routing:
            self.router.write(routed)
        else:
            self.router.unrouted(routed)
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
        await self.fetcher.unassign()
        await self.checkpoint()

    async def on_timer(self) -> None:
        """Faust's timer, every ``SLUICE_FLUSH_INTERVAL_S``: a checkpoint in the background,
        unless one started within the interval. The hot loop starts checkpoints on time
        after every fetch (an idle fetch returns within ``POLL_S``, 0.1 s); the timer is
        the backstop for a loop that is not running. It used to await a checkpoint at every
        tick whatever the hot loop had started, so one always queued behind the other and
        ran the moment it ended: a worker checkpointed about twice per interval, the second
        one over the changes of a second or two (13 checkpoints instead of 7 in 47 s at a
        5 s interval, bench/README.md), each with a snapshot's whole cost."""
        if time.monotonic() - self.last_checkpoint >= self.settings.sluice_flush_interval_s:
            self._start_checkpoint()

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
        for step, seconds in outcome.steps.items():
            self.health.checkpoint_step_seconds.labels(step).observe(seconds)
        now = time.time()
        for table in outcome.rows:
            self.stats["last_flush"][table] = now
        log.info(
            "checkpoint: %d events, %d changelog entries, %s rows in %.3fs (%s)",
            outcome.events,
            outcome.changelog,
            outcome.rows,
            outcome.seconds,
            " ".join(f"{step} {seconds:.3f}" for step, seconds in outcome.steps.items()),
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
        await self.fetcher.unassign((tp.topic, tp.partition) for tp in revoked)
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
        async with self.state_lock:
            wrong = misplaced(self.engine, [partition], self.placement)
        if wrong:
            detail = ", ".join(f"partition {p}: {n} of {m}" for p, (n, m) in sorted(wrong.items()))
            message = (
                "the restored email/warm-up state is not on the partitions the topic catalog's "
                f"keys put it ({detail} sampled states elsewhere): it was placed by an older "
                "key; stop every worker and run `sluice topics rekey` (docs/operations.md)"
            )
            log.critical("%s", message)
            self.stats["refused"] = message
            await self.app.crash(RuntimeError(message))
            return
        tps = {tp for tp in self.app.consumer.assignment() if tp.topic in self.families}
        mine = {tp for tp in tps if tp.partition == partition}
        seam.pause_prefetch(self.app.consumer, mine)
        await self.fetcher.assign((tp.topic, tp.partition) for tp in mine)

    async def stop(self) -> None:
        """Shutdown, after the consumer stopped (its last drain flushed every sink and
        wrote the local stores' images)."""
        self.owned = set()
        for task in self._restores.values():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.router.close()
        self.gc.stop()
        self.fetcher.close()
        self.restorer.close()
        if self._reader is not None:
            self._reader.close()
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


class _LeadSecrets:
    """The PostHog sink's view of the per-lead secrets in the engine's partitions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def secret(self, partition: int, tenant: str, lead: str) -> bytes | None:
        ps = self.engine.partitions.get(partition)
        keys = ps.by_tag.get(LeadKeys.tag) if ps is not None else None
        return keys.secret(tenant, lead) if isinstance(keys, LeadKeys) else None


class _Erasures:
    """The checkpoint's erasure port: the registry topic, the OLAP purge, PostHog's
    person deletion (see :mod:`streams.checkpoint`, step 5b)."""

    RETRY_S = 60.0  # a failed purge or deletion request is tried again after this
    GIVE_UP_S = 86_400.0  # a deletion request failing this long is recorded as failed

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.deletion = build_deletion(worker.settings)
        self._purge_failed_at: float | None = None
        self._first_asked: dict[tuple[int, str, str], float] = {}
        self._last_asked: dict[tuple[int, str, str], float] = {}

    def publish(self, entries: Sequence[Erasure | DeletionOutcome]) -> None:
        writer = self.worker.registry_writer
        writer.write(entries)
        writer.flush()

    def settle(self, work: ErasureWork) -> tuple[dict[str, set[str]], list[tuple[Forget, bool]]]:
        return self._purge(work), self._forget(work.forget)

    def _purge(self, work: ErasureWork) -> dict[str, set[str]]:
        from sluice.olap.erasure import purge

        w, now = self.worker, time.monotonic()
        if not work.purge:
            return {}
        if self._purge_failed_at is not None and now - self._purge_failed_at < self.RETRY_S:
            return {}
        try:
            rows = purge(w.olap, work.purge, cluster=w.settings.clickhouse_cluster)
        except Exception as exc:
            self._purge_failed_at = now
            w.health.erasure_purge_failures.inc()
            log.error(
                "erasure: could not purge the OLAP rows of %d erased lead(s) (retried in %.0f s; "
                "the worker's ClickHouse user needs ALTER DELETE on the lead tables, see "
                "docs/operations.md): %s",
                sum(len(r) for r in work.purge.values()),
                self.RETRY_S,
                exc,
            )
            return {}
        self._purge_failed_at = None
        if rows:
            w.health.erasure_purged_rows.inc(rows)
            log.info("erasure: deleted %d OLAP row(s) of erased leads", rows)
        return work.purge

    def _forget(self, asked: list[Forget]) -> list[tuple[Forget, bool]]:
        out: list[tuple[Forget, bool]] = []
        outcomes: list[tuple[Forget, DeletionOutcome]] = []
        for forget in asked:
            outcome = self._ask(forget)
            if outcome is None:
                out.append((forget, False))  # asked again later
            else:
                outcomes.append((forget, outcome))
        if outcomes:
            try:
                self.publish([o for _, o in outcomes])
            except Exception as exc:  # the secrets stay until their outcome is durable
                log.warning("erasure: could not record deletion outcomes (retried): %s", exc)
                return out + [(f, False) for f, _ in outcomes]
            for forget, outcome in outcomes:
                key = (forget.partition, forget.tenant, forget.ref)
                self._first_asked.pop(key, None)
                self._last_asked.pop(key, None)
                self.worker.health.erasure_deletions.labels("posthog", outcome.status).inc()
        return out + [(f, True) for f, _ in outcomes]

    def _ask(self, forget: Forget) -> DeletionOutcome | None:
        """PostHog's answer for one erased lead's pseudonym (None: ask again later)."""

        def outcome(status: str, **detail: Any) -> DeletionOutcome:
            scope = f"partition-{forget.partition}"
            return DeletionOutcome(
                "posthog", forget.tenant, forget.ref, scope, status, now_ms(), detail
            )

        if not self.worker.settings.posthog_lead_persons:
            # events carry the tenant, no person: nothing PostHog could delete by person
            return outcome("not_applicable", reason="no person: unlinkable once the key is gone")
        if self.deletion is None:
            return outcome("not_configured", reason="POSTHOG_PERSONAL_API_KEY/PROJECT_ID unset")
        key, now = (forget.partition, forget.tenant, forget.ref), time.monotonic()
        last = self._last_asked.get(key)
        if last is not None and now - last < self.RETRY_S:
            return None
        self._first_asked.setdefault(key, now)
        self._last_asked[key] = now
        try:
            answer = self.deletion.delete([lead_distinct_id(forget.secret, forget.lead)])
        except PermanentError as exc:
            return outcome("refused", http=exc.status, reason=exc.reason)
        except TransientError as exc:
            if now - self._first_asked[key] < self.GIVE_UP_S:
                log.warning("erasure: PostHog deletion request failed (retried): %s", exc.reason)
                return None
            return outcome("failed", http=exc.status, reason=exc.reason)
        found = int(answer.get("persons_found") or 0)
        return outcome(
            "deleted" if found else "nothing_to_delete",
            persons_found=found,
            persons_deleted=int(answer.get("persons_deleted") or 0),
            events_queued_for_deletion=bool(answer.get("events_queued_for_deletion")),
        )


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
