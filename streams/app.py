"""The Faust application, and the hot path that does not pay Faust's per-event cost.

read a batch → decode → route → apply to state → (checkpoint: sinks, changelog, OLAP,
DLQ durable) → commit.

Who does what
-------------
Faust is the application: its consumer group assigns this worker its partitions and
rebalances them, its table recovers the state from the changelog before a partition is
read, its producer writes the changelog and dead letters, its timer checkpoints, its web
server answers ``/sluice/status/``, ``/metrics`` and queries. The event topics'
partitions are *handed off* to :class:`streams.fetch.Reader` (confluent-kafka, batches of
thousands): Faust's fetcher skips them, because its per-event machinery (~90 µs of CPU
per event, measured) would cap the worker near 11,000 events/s before any work.

Delivery semantics
------------------
At-least-once from Kafka, made exact by idempotent state merges and idempotent OLAP
writes (see :mod:`streams.engine`). Sluice commits offsets itself, through Faust's
consumer (so under the group's current generation), only after the checkpoint that
covers them succeeded: the committed offset of a partition is one past the last event
applied. The source topic is declared with ``acks=False``: Faust tracks nothing.

The reader is assigned a partition after Faust recovered its state, starts at the
group's committed offset, and lets go of it before Faust revokes it (a drain checkpoint
commits everything applied first). Reading and assignment changes never overlap, and a
batch is applied under the checkpoint lock, so no offset is committed for an event that
was not applied (or dead-lettered) in full.

Routing (:mod:`streams.routing`): every decoded event is also handed to the sinks its
route names (PostHog, observability, SIEM), which buffer it in bounded batches. A
checkpoint flushes every sink first and commits nothing unless all of them made their
events durable; an event a sink refused for good (e.g. HTTP 400) is dead-lettered with
stage = the sink's name before the commit. A sink that stays down fails the checkpoint,
so events pile up only to ``MAX_PENDING`` (then the reader stops taking: backpressure).

Before a rebalance revokes partitions, and before shutdown, Faust calls
``_consumer_wait_empty``; Sluice stops reading and checkpoints there, so a SIGTERM or a
rebalance flushes and commits everything and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Message
from faust.types import TP
from faust.web import View

from sinks.base import Envelope, Rejected
from sinks.dlq import dead_letter_headers
from sinks.health import CONTENT_TYPE_LATEST, HealthMetrics
from sinks.registry import build_sinks
from sluice.codec import Codec, DecodeError
from sluice.olap import OlapClient, OlapError, connect, migrate
from sluice.security import clickhouse_options, faust_credentials, kafka_config
from sluice.settings import Settings, get_settings
from streams.engine import Engine
from streams.fetch import ChangelogWriter, Reader
from streams.routing import Router
from topics.catalog import dlq_topic, event_topics

log = logging.getLogger("sluice.worker")

# Most unacknowledged events held between checkpoints before the reader stops taking more
# (backpressure when ClickHouse is down: Kafka keeps the events, not our memory).
MAX_PENDING = 200_000


class SluiceApp(faust.App):
    """faust.App with a checkpoint before Faust waits for in-flight events."""

    sluice: Worker | None = None

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        # Faust calls this before revoking partitions and on shutdown. Unacked events are
        # ours (acked only after a checkpoint), so checkpoint now instead of waiting.
        if self.sluice is not None:
            await self.sluice.drain()
        await super()._consumer_wait_empty(consumer, logger)

    async def on_shutdown(self) -> None:
        # After the consumer stopped (and its last drain flushed every sink).
        if self.sluice is not None:
            await self.sluice.router.close()
            self.sluice.reader.close()
            self.sluice.engine.close()
        await super().on_shutdown()


class Worker:
    """Binds the engine, the codec and the sinks to one Faust app."""

    def __init__(self, settings: Settings, olap: OlapClient | None = None) -> None:
        self.settings = settings
        self.engine = Engine.for_settings(settings)
        self.codec = Codec(settings=settings)
        self._olap = olap
        self.health = HealthMetrics()
        self.router = Router(
            build_sinks(settings, self.health.observer()),
            on_routed=lambda sink, n: self.health.routed.labels(sink).inc(n),
        )
        self.families = {spec.name: spec.family for spec in event_topics()}
        # one past the last offset applied per source partition, this generation only
        self.applied: dict[TP, int] = {}
        self.committed: dict[TP, int] = {}  # what this generation committed last
        self.reader = Reader(kafka_config(settings), settings.sluice_app_id)
        self.changelog = ChangelogWriter(kafka_config(settings))
        self._handed_off = False
        # rows of a checkpoint whose changelog is durable but whose OLAP write failed
        self._unwritten: dict[str, list[list]] = {}
        self.unflushed = 0  # events applied since the last successful checkpoint
        self.draining = False
        self.last_checkpoint = time.monotonic()
        # _ckpt_lock: the state (a batch is applied, or a snapshot taken, under it);
        # _io_lock: one checkpoint's I/O at a time (sinks, changelog, OLAP, commit), which
        # runs while the next batches are applied
        self._ckpt_lock = asyncio.Lock()
        self._io_lock = asyncio.Lock()
        self._ckpt_task: asyncio.Task | None = None
        self.stats: dict[str, Any] = {
            "events": 0,
            "dead_letters": 0,
            "checkpoints": 0,
            "checkpoint_failures": 0,
            "last_flush": {},
        }
        self.app = self._build_app()

    # -- wiring -------------------------------------------------------------------------
    def _build_app(self) -> SluiceApp:
        s = self.settings
        # absolute: Faust resolves a relative tabledir inside its datadir
        data_dir = Path(s.sluice_data_dir).resolve()
        (data_dir / "faust").mkdir(parents=True, exist_ok=True)
        brokers = [
            f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(",") if h.strip()
        ]
        app = SluiceApp(
            s.sluice_app_id,
            broker=brokers,
            broker_credentials=faust_credentials(s),  # TLS / SASL_SSL from settings
            store="memory://",
            topic_partitions=s.sluice_topic_partitions,
            topic_allow_declare=True,
            topic_disable_leader=True,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=True,
            producer_linger=0.05,
            producer_max_request_size=16 * 1024 * 1024,
            consumer_max_fetch_size=16 * 1024 * 1024,
            producer_acks=-1,
            broker_commit_every=1_000_000_000,  # commits happen after our checkpoints
            broker_session_timeout=s.kafka_session_timeout_s,
            broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_s / 10),
            web_enabled=True,
            web_port=s.sluice_web_port,
            web_bind=s.sluice_web_host,
            web_host=s.sluice_web_host,
            datadir=str(data_dir / "faust"),
            tabledir=str(data_dir / "tables"),
            logging_config=None,
        )
        app.sluice = self
        self.source = app.topic(
            *self.families,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            acks=False,  # Sluice commits offsets itself after each checkpoint
        )
        self.dlq = app.topic(
            dlq_topic().name, key_serializer="raw", value_serializer="raw", internal=False
        )
        # The attribution state's changelog. Values/keys are JSON made by the engine; the
        # in-memory table is only Faust's recovery buffer (the engine owns live state).
        self.table = app.Table(
            "email-state",
            default=None,
            partitions=s.sluice_topic_partitions,
            recovery_buffer_size=10_000,
            # keys and values are JSON (faust's table_key/value_serializer defaults)
        )
        # Recovery hands each batch of changelog entries straight to the engine (whose
        # maps spill to disk beyond the memory budget), never buffering the whole
        # changelog in the table.
        self.table.apply_changelog_batch = self._apply_changelog_batch  # type: ignore[method-assign]
        self._restoring: set[int] = set()
        self.table.on_recover(self._on_recovered)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.agent(self.source, name="sluice-events")(self._agent)
        app.timer(s.sluice_flush_interval_s, on_leader=False)(self._timer)
        app.page("/sluice/status/")(StatusView)
        app.page("/sluice/query/")(QueryView)
        app.page("/sluice/olap/rows/")(RowsView)
        app.page("/metrics")(MetricsView)
        app.task(self.router.start)
        app.task(self._hot_loop)
        return app

    @property
    def olap(self) -> OlapClient:
        if self._olap is None:
            self._olap = connect(self.settings.clickhouse_url, **clickhouse_options(self.settings))
            migrate(self._olap)
        return self._olap

    # -- the hot path -------------------------------------------------------------------
    async def _agent(self, stream: faust.StreamT) -> None:
        # Subscribes the event topics, so Faust's group assigns their partitions. Faust
        # never fetches them (they are handed off to the reader, see _hand_off); anything
        # fetched in the moment before a new assignment is handed off is ignored: the
        # reader starts at the committed offsets and reads it again.
        async for _ in stream.events():
            pass

    async def _hot_loop(self) -> None:
        """Fetch batches from the reader, apply them, checkpoint every interval."""
        interval = self.settings.sluice_flush_interval_s
        while True:
            messages = await self.reader.fetch()
            if messages:
                async with self._ckpt_lock:
                    await self.process(messages)
            elif not self.reader.assigned:
                await asyncio.sleep(0.05)
            if self.draining or time.monotonic() - self.last_checkpoint >= interval:
                self._start_checkpoint()
            while self.unflushed >= MAX_PENDING:
                # backpressure: take nothing more until a checkpoint gets through
                await asyncio.sleep(1.0)
                await self.checkpoint()

    def _start_checkpoint(self) -> None:
        """Checkpoint in the background (reading and applying go on meanwhile)."""
        if self._ckpt_task is None or self._ckpt_task.done():
            self._ckpt_task = asyncio.ensure_future(self.checkpoint())

    async def process(self, messages: Sequence[Message]) -> None:
        """Decode and apply one batch; dead-letter what cannot be decoded.

        Called with the checkpoint lock held, so a checkpoint never commits an offset
        whose dead letter is not queued yet.
        """
        applied = self.applied
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
        self.unflushed += len(messages)
        self.stats["events"] += len(messages)
        for message, exc in letters:
            await self.dead_letter(message, exc.reason, exc.detail)

    def _hand_off(self) -> None:
        """Keep Faust's fetcher off the event topics: the reader owns them."""
        consumer = self.app.consumer
        families = self.families
        active = consumer._get_active_partitions  # noqa: SLF001

        def without_event_topics() -> set:
            tps = active()
            tps.difference_update([tp for tp in tps if tp.topic in families])
            return tps

        consumer._get_active_partitions = without_event_topics  # noqa: SLF001

    def _pause_prefetch(self, tps: set) -> None:
        """Stop aiokafka prefetching the handed-off partitions (memory it would never free)."""
        from aiokafka.structs import TopicPartition as KafkaTP

        try:
            client = self.app.consumer._thread._ensure_consumer()  # noqa: SLF001
            client.pause(*(KafkaTP(tp.topic, tp.partition) for tp in tps))
        except Exception as exc:  # not assigned any more (rebalancing): the next one pauses
            log.debug("could not pause prefetching of %s: %s", tps, exc)

    async def dead_letter(self, message: Message, reason: str, detail: str) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        self.stats["dead_letters"] += 1
        self.health.dead_letters.labels("decode", reason).inc()
        log.warning("dead letter %s[%s]@%s: %s: %s", topic, partition, offset, reason, detail)
        await self.dlq.send(
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

    async def dead_letter_rejected(self, rejected: Rejected) -> None:
        """Dead-letter an event a sink refused for good (stage = the sink's name)."""
        env = rejected.envelope
        self.stats["dead_letters"] += 1
        self.health.dead_letters.labels(rejected.sink, rejected.reason).inc()
        # reason only: a destination's error text may echo the event back
        log.warning(
            "dead letter %s[%s]@%s: %s refused it: %s",
            env.topic,
            env.partition,
            env.offset,
            rejected.sink,
            rejected.reason,
        )
        await self.dlq.send(
            key=env.key,
            value=env.value,
            headers=dead_letter_headers(
                reason=rejected.reason,
                detail=rejected.detail,
                topic=env.topic,
                partition=env.partition,
                offset=env.offset,
                stage=rejected.sink,
            ),
        )

    # -- checkpoints --------------------------------------------------------------------
    async def _timer(self) -> None:
        await self.checkpoint()

    async def drain(self) -> None:
        """Stop reading and checkpoint everything (before a revoke and before shutdown)."""
        self.draining = True
        await self.reader.unassign()
        await self.checkpoint()

    async def checkpoint(self) -> bool:
        """Flush sinks, persist state changes, write OLAP rows, then commit offsets.

        The snapshot (what this checkpoint persists, and the offsets it commits) is taken
        under the state lock; the I/O runs without it, so the hot loop goes on applying
        batches meanwhile (they belong to the next checkpoint). Checkpoints never overlap.
        Returns True on success; on failure nothing is committed and everything is retried.
        """
        async with self._io_lock:
            self.last_checkpoint = time.monotonic()
            loop = asyncio.get_running_loop()
            if self._unwritten:
                # An earlier checkpoint made its changelog durable but could not write its
                # rows: write those first, and take no new snapshot until they are in
                # (resending the changelog on every retry would flood it while
                # ClickHouse is down, and slow every later recovery).
                try:
                    await loop.run_in_executor(None, self._write_rows, self._unwritten)
                except Exception as exc:
                    return self._failed(exc)
                self._unwritten = {}
            async with self._ckpt_lock:
                ckpt = self.engine.snapshot()
                for event_type, n in self.engine.take_late().items():
                    self.health.late.labels(event_type).inc(n)
                    late = self.stats.setdefault("late_events", {})
                    late[event_type] = late.get(event_type, 0) + n
                generation = self.app.consumer_generation_id
                offsets = {tp: o for tp, o in self.applied.items() if self.committed.get(tp) != o}
                unflushed, self.unflushed = self.unflushed, 0
                # every event applied so far is routed: the flush below covers them all
            if ckpt.empty() and not offsets and not unflushed:
                return True
            started = time.perf_counter()
            rejected: list[Rejected] = []
            changelog_durable = False
            try:
                # sinks first: nothing is committed unless every routed event is durable
                rejected = await self.router.flush()
                for item in rejected:
                    await self.dead_letter_rejected(item)
                if ckpt.changelog:
                    topic = self.table.changelog_topic.get_topic_name()
                    self.changelog.write(topic, ckpt.changelog)
                    await loop.run_in_executor(None, self.changelog.flush)
                await self.app.producer.flush()  # dead letters
                rejected = []  # their dead letters are durable now: never send them twice
                changelog_durable = True
                if ckpt.rows:
                    await loop.run_in_executor(None, self._write_rows, ckpt.rows)
            except Exception as exc:  # any failure: nothing committed, everything retried
                self.router.restore_rejected(rejected)
                if changelog_durable:
                    self._unwritten = ckpt.rows  # only the rows are missing
                else:
                    async with self._ckpt_lock:
                        self.engine.requeue(ckpt)
                self.unflushed += unflushed
                return self._failed(exc)
            if generation == self.app.consumer_generation_id:
                # (after a rebalance the seek to committed offsets replays the rest)
                assigned = self.app.consumer.assignment()
                offsets = {
                    tp: o
                    for tp, o in offsets.items()
                    if tp in assigned and self.committed.get(tp) != o
                }
                if offsets:
                    if await self.app.consumer._commit(offsets):  # noqa: SLF001
                        self.committed.update(offsets)
                    else:
                        log.warning(
                            "offset commit refused (rebalancing); the next checkpoint retries"
                        )
            self.stats["checkpoints"] += 1
            elapsed = time.perf_counter() - started
            self.health.checkpoint_seconds.observe(elapsed)
            now = time.time()
            for table in ckpt.rows:
                self.stats["last_flush"][table] = now
            log.info(
                "checkpoint: %d events, %d changelog entries, %s rows in %.3fs",
                unflushed,
                len(ckpt.changelog),
                {t: len(r) for t, r in ckpt.rows.items()},
                elapsed,
            )
            return True

    def _failed(self, exc: Exception) -> bool:
        """Count and log a failed checkpoint (nothing was committed; the next one retries)."""
        self.health.checkpoint_failures.inc()
        self.stats["checkpoint_failures"] += 1
        log.error("checkpoint failed, will retry: %s", exc)
        return False

    def _write_rows(self, rows: dict[str, list[list]]) -> None:
        self.olap.write({t: (self.engine.columns(t), r) for t, r in rows.items()})

    # -- rebalancing ----------------------------------------------------------------------
    async def _on_revoked(self, app: Any, revoked: set, **_: Any) -> None:
        # drain() ran in _consumer_wait_empty; whatever was not committed is reprocessed
        # by the partition's next owner (maybe us). Every partition is revoked at each
        # rebalance, even those we keep: their state goes (or stays) in _on_assigned.
        await self.reader.unassign((tp.topic, tp.partition) for tp in revoked)
        self.router.forget({(tp.topic, tp.partition) for tp in revoked})
        self.applied = {tp: o for tp, o in self.applied.items() if tp not in revoked}
        self.committed = {tp: o for tp, o in self.committed.items() if tp not in revoked}

    async def _on_assigned(self, app: Any, assigned: set, **_: Any) -> None:
        self.draining = False
        # Drop only the state of partitions that moved away. For a partition it keeps,
        # Faust's recovery reads just the changelog written since its last read (its
        # table is assumed to hold the rest), so that state must stay (S10).
        owned = {tp.partition for tp in assigned if tp.topic in self.families}
        self.engine.drop(set(self.engine.partitions) - owned)
        if not self._handed_off:
            self._hand_off()
            self._handed_off = True
        self._pause_prefetch({tp for tp in assigned if tp.topic in self.families})

    def _apply_changelog_batch(self, batch: Sequence[Any]) -> None:
        entries = [(e.key, e.value) for e in batch]
        self._restoring |= self.engine.join(entries)

    async def _on_recovered(self) -> None:
        touched = {p for p in self._restoring if p in self.engine.partitions}
        self._restoring = set()
        self.engine.restored(touched)
        if touched:
            log.info("restored state of partitions %s from the changelog", sorted(touched))
        # the state of every assigned partition is here now: start reading its events
        owned = self.app.consumer.assignment()
        mine = {tp for tp in owned if tp.topic in self.families}
        self._pause_prefetch(mine)
        await self.reader.assign((tp.topic, tp.partition) for tp in mine)

    # -- web --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "app_id": self.settings.sluice_app_id,
            "assigned": sorted(
                f"{tp.topic}:{tp.partition}" for tp in self.app.consumer.assignment()
            ),
            "unflushed_events": self.unflushed,
            "sinks": {
                "buffered": self.router.buffered(),
                "unconfigured": self.router.unconfigured,
                # epoch seconds: last flush attempt / last batch a destination accepted
                "last_flush": dict(self.health.last_flush),
                "last_delivery": dict(self.health.last_delivery),
                "partial_success": dict(self.health.partial_success),  # OTLP rejected points
            },
            "dead_letters_by_reason": self.health.dead_letter_counts(),
            "partitions": {
                p: {"emails": len(ps.email.emails), "positions": ps.positions}
                for p, ps in sorted(self.engine.partitions.items())
            },
            "state_store": (
                {"kind": "rocksdb", **self.engine.spill.stats()}
                if self.engine.spill is not None
                else {"kind": "memory"}
            ),
            **self.stats,
        }

    def metrics(self) -> bytes:
        """Prometheus exposition of the worker's health (gauges refreshed on scrape)."""
        h = self.health
        h.pending.set(self.unflushed)
        for sink, count in self.router.buffered().items():
            h.buffered.labels(sink).set(count)
        consumer = self.app.consumer
        for tp in consumer.assignment():
            state = self.engine.partitions.get(tp.partition)
            position = state.positions.get(tp.topic) if state is not None else None
            highwater = consumer.highwater(tp) if tp.topic in self.families else None
            if highwater is not None and position is not None:  # changelogs are not ours
                h.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
        return h.exposition()

    async def query(self, web: Any, request: Any) -> Any:
        """Read-only SQL on the worker's embedded store (chDB allows one process)."""
        body = await request.json()
        sql = str(body.get("sql", ""))
        if not _is_read_only(sql):
            return web.json({"error": "only SELECT/SHOW/DESCRIBE/EXISTS/WITH queries"}, status=400)
        try:
            columns, rows = await asyncio.get_running_loop().run_in_executor(
                None, self.olap.query, sql
            )
        except OlapError as exc:
            return web.json({"error": str(exc)}, status=400)
        return web.json({"columns": columns, "rows": [[_jsonable(v) for v in r] for r in rows]})

    async def write_backfill(self, web: Any, request: Any) -> Any:
        """Insert rows ``sluice backfill`` recomputed (rollup tables only, catalog columns)."""
        from sluice.backfill import ROLLUP_TABLES, rows_from_json

        body = await request.json()
        table, columns = str(body.get("table", "")), list(body.get("columns") or [])
        if table not in ROLLUP_TABLES:
            return web.json({"error": f"{table!r} is not a rollup table"}, status=400)
        if columns != self.engine.columns(table):
            return web.json({"error": f"columns of {table} do not match this worker's"}, status=400)

        def insert() -> int:
            _, described = self.olap.query(f"DESCRIBE TABLE {table}")
            types = {name: kind for name, kind, *_ in described}
            rows = rows_from_json([types[c] for c in columns], body.get("rows") or [])
            if rows:
                self.olap.insert(table, columns, rows)
            return len(rows)

        try:
            written = await asyncio.get_running_loop().run_in_executor(None, insert)
        except (OlapError, ValueError, KeyError) as exc:
            return web.json({"error": str(exc)}, status=400)
        return web.json({"written": written})


class RowsView(View):
    """POST /sluice/olap/rows/ {"table", "columns", "rows"}: ``sluice backfill`` writing
    recomputed rollup rows into the store this worker owns (chDB allows one process)."""

    async def post(self, request: Any) -> Any:
        return await self.app.sluice.write_backfill(self, request)


class StatusView(View):
    """GET /sluice/status/: what the worker is doing, as JSON."""

    async def get(self, request: Any) -> Any:
        return self.json(self.app.sluice.status())


class MetricsView(View):
    """GET /metrics: Sluice's own health for Prometheus (see :mod:`sinks.health`)."""

    async def get(self, request: Any) -> Any:
        body = self.app.sluice.metrics()
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


class QueryView(View):
    """POST /sluice/query/ {"sql": ...}: read-only SQL on the worker's OLAP store."""

    async def post(self, request: Any) -> Any:
        return await self.app.sluice.query(self, request)


def _is_read_only(sql: str) -> bool:
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    return head in {"SELECT", "SHOW", "DESCRIBE", "DESC", "EXISTS", "WITH", "EXPLAIN"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def create_worker(settings: Settings | None = None) -> Worker:
    """Build the worker (and its Faust app) from settings."""
    return Worker(settings or get_settings())
