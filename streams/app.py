"""The Faust application: one agent over every event topic, kept thin.

decode → route → apply to state → (checkpoint: sinks, changelog, OLAP, DLQ durable) → commit.

Delivery semantics
------------------
At-least-once from Kafka, made exact by idempotent state merges and idempotent OLAP
writes (see :mod:`streams.engine`). Sluice commits offsets itself, only after the
checkpoint that covers them succeeded: the committed offset of a partition is one past
the last event applied without a gap in the current consumer generation.

Why not Faust's ack tracking: it commits the longest run of consecutive acked offsets,
and re-deliveries around a rebalance left duplicate offsets in that run, which stalled
commits for good (lag never returned to 0 in our restart test). The source topic is
therefore declared with ``acks=False``.

Why the gap check: Faust can drop records it already fetched when a fetch races the seek
to committed offsets that follows every rebalance (seen as offset holes right after
start-up, and as a partition tail that never arrives). Committing past such a hole would
lose the events in it. So ``process()`` refuses to apply past a hole, the timer notices
partitions that stopped short of their high watermark, and ``heal()`` re-reads every
partition from its committed offset (Faust's own stop-flow / seek / resume sequence).

Routing (:mod:`streams.routing`): every decoded event is also handed to the sinks its
route names (PostHog, observability, SIEM), which buffer it in bounded batches. A
checkpoint flushes every sink first and commits nothing unless all of them made their
events durable; an event a sink refused for good (e.g. HTTP 400) is dead-lettered with
stage = the sink's name before the commit. A sink that stays down fails the checkpoint,
so events pile up only to ``MAX_PENDING`` (then the agent stops taking: backpressure).

Before a rebalance revokes partitions, and before shutdown, Faust calls
``_consumer_wait_empty``; Sluice checkpoints there, so a SIGTERM or a rebalance flushes
and commits everything and loses nothing. Events fetched in an older generation are
skipped: the seek that follows every rebalance delivers them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
from faust.types import TP, EventT
from faust.web import View

from sinks.base import Envelope, Rejected
from sinks.dlq import dead_letter_headers
from sinks.health import CONTENT_TYPE_LATEST, HealthMetrics
from sinks.registry import build_sinks
from sluice.codec import Codec, DecodeError
from sluice.olap import OlapClient, OlapError, connect, migrate
from sluice.security import clickhouse_options, faust_credentials
from sluice.settings import Settings, get_settings
from streams.engine import Engine
from streams.routing import Router
from topics.catalog import dlq_topic, event_topics

log = logging.getLogger("sluice.worker")

# Most unacknowledged events held between checkpoints before the agent stops taking more
# (backpressure when ClickHouse is down: Kafka keeps the events, not our memory).
MAX_PENDING = 200_000
# A partition with unread events and no progress for this many checkpoint intervals
# (at least STALL_MIN_S) is re-read (see heal()). A false alarm only re-reads what came
# after the last commit.
STALL_INTERVALS = 3
STALL_MIN_S = 5.0
# Faust's per-partition buffer in front of the agent. Faust stops fetching a partition
# whose buffer is full; the bigger buffer keeps checkpoints from stalling the fetcher.
STREAM_BUFFER = 100_000


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
        self._generation: int | None = None
        self.holes: set[TP] = set()  # partitions held at an offset hole until heal()
        self._starts: dict[TP, int] = {}  # first offset in the log, for uncommitted partitions
        self._progress: dict[TP, tuple[int, float]] = {}  # position, since when
        self._failures_seen = 0
        self.unflushed = 0  # events applied since the last successful checkpoint
        self.stream: Any = None
        self.draining = False
        self.last_checkpoint = time.monotonic()
        self._ckpt_lock = asyncio.Lock()
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
            stream_buffer_maxsize=STREAM_BUFFER,
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
        return app

    @property
    def olap(self) -> OlapClient:
        if self._olap is None:
            self._olap = connect(self.settings.clickhouse_url, **clickhouse_options(self.settings))
            migrate(self._olap)
        return self._olap

    # -- the agent ----------------------------------------------------------------------
    async def _agent(self, stream: faust.StreamT) -> None:
        # Event by event, not ``take()`` (it acks a batch even when processing raised) nor
        # ``noack_take`` (with it we saw offset holes of one at batch boundaries, e.g.
        # 950 -> 951, before the hole check and heal() existed; not re-tested since).
        # The expensive work, every checkpoint, is batched anyway.
        self.stream = stream
        interval = self.settings.sluice_flush_interval_s
        async for event in stream.events():
            await self.process((event,))
            if self.holes:
                await self.heal()
            elif self.draining or time.monotonic() - self.last_checkpoint >= interval:
                await self.checkpoint()
            while self.unflushed >= MAX_PENDING:
                # backpressure: hold this batch's slot until a checkpoint gets through
                await asyncio.sleep(1.0)
                await self.checkpoint()

    async def process(self, events: Sequence[EventT]) -> None:
        """Decode and apply one batch; dead-letter what cannot be decoded."""
        generation = self.app.consumer_generation_id
        if generation != self._generation:
            # a rebalance: Faust sought every partition to its committed offset
            self._generation = generation
            self.applied = {}
            self.committed = {}
            self.holes = set()
            self._starts = {}
        applied = self.applied
        decode = self.codec.decode
        engine = self.engine
        families = self.families
        for event in events:
            message = event.message
            tp = message.tp
            if message.generation_id != generation:
                continue  # fetched before a rebalance: the seek after it delivers it again
            if tp in self.holes:
                continue  # see below: this partition waits for a restart or rebalance
            expected = applied.get(tp)
            if expected is None:
                expected = self._committed(tp)
                if expected is None:
                    # nothing committed yet (a new group): the partition's first event is
                    # the one expected, or a skip at start-up would go unnoticed for good
                    expected = await self._log_start(tp)
                    if (
                        self.app.consumer_generation_id != generation
                        or self.applied is not applied
                        or tp not in self.app.consumer.assignment()
                    ):
                        return  # rebalancing meanwhile: the seek after it delivers it again
            if expected is not None and message.offset > expected:
                # Offsets are applied without holes, or committing past a hole would lose
                # the events in it. A hole means the client skipped records (Faust can,
                # when a fetch races its post-rebalance seek): hold the partition at the
                # hole; heal() re-reads from the committed offset.
                log.warning(
                    "offset hole on %s: expected %s, got %s; re-reading",
                    tp,
                    expected,
                    message.offset,
                )
                self.holes.add(tp)
                self.stats["offset_holes"] = self.stats.get("offset_holes", 0) + 1
                continue
            family = families[message.topic]
            self.health.consumed.labels(family).inc()
            try:
                record = decode(event.value, family)
            except DecodeError as exc:
                await self.dead_letter(event, exc.reason, exc.detail)
                engine.advance(engine.state(message.partition), message.topic, message.offset)
            else:
                engine.apply(message.partition, message.topic, message.offset, family, record)
                # to the sinks now, before any await: a checkpoint meanwhile commits it
                self.router.add(
                    Envelope(
                        record,
                        message.topic,
                        message.partition,
                        message.offset,
                        message.key,
                        event.value,
                    )
                )
            if expected is None or message.offset + 1 > expected:
                applied[tp] = message.offset + 1
            self.unflushed += 1
        self.stats["events"] += len(events)

    def _committed(self, tp: TP) -> int | None:
        """The committed offset Faust sought ``tp`` to at the last rebalance, if known."""
        offset = self.app.consumer._committed_offset.get(tp)  # noqa: SLF001 - set by perform_seek
        return offset if isinstance(offset, int) and offset > 0 else None

    async def _log_start(self, tp: TP) -> int | None:
        """The first offset still in ``tp`` (where a group without a commit starts)."""
        start = self._starts.get(tp)
        if start is None:
            try:
                found = await self.app.consumer.earliest_offsets(tp)
            except Exception as exc:  # no verdict: apply without the check, as before
                log.warning("cannot read the start offset of %s: %s", tp, exc)
                return None
            start = found.get(tp)
            if not isinstance(start, int) or start < 0:
                return None
            self._starts[tp] = start
        return start

    async def dead_letter(self, event: EventT, reason: str, detail: str) -> None:
        m = event.message
        self.stats["dead_letters"] += 1
        self.health.dead_letters.labels("decode", reason).inc()
        log.warning("dead letter %s[%s]@%s: %s: %s", m.topic, m.partition, m.offset, reason, detail)
        await self.dlq.send(
            key=m.key,
            value=event.value,
            headers=dead_letter_headers(
                reason=reason,
                detail=detail,
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
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
        if self._stalled():
            await self.heal()

    def _stalled(self) -> bool:
        """True when a partition has had unread events and no progress for a while.

        The tail of a partition skipped by the client leaves no hole to notice (nothing
        comes after it), so the timer compares positions with high watermarks.
        """
        if self.unflushed >= MAX_PENDING or self.stats["checkpoint_failures"] > self._failures_seen:
            # held back on purpose (a sink or ClickHouse is down): not a stall
            self._failures_seen = self.stats["checkpoint_failures"]
            self._progress.clear()
            return False
        consumer = self.app.consumer
        now = time.monotonic()
        stalled = False
        for tp in consumer.assignment():
            if tp.topic not in self.families:
                continue
            position = self.applied.get(tp) or self._committed(tp) or 0
            highwater = consumer.highwater(tp)
            if highwater is None or highwater <= position:
                self._progress.pop(tp, None)
                continue
            last = self._progress.get(tp)
            if last is None or last[0] != position:
                self._progress[tp] = (position, now)
            elif now - last[1] > max(
                STALL_MIN_S, STALL_INTERVALS * self.settings.sluice_flush_interval_s
            ):
                log.warning(
                    "%s has made no progress at %s (end %s) for %.0fs",
                    tp,
                    position,
                    highwater,
                    now - last[1],
                )
                stalled = True
        return stalled

    async def heal(self) -> None:
        """Commit what is contiguous, then re-read every partition from its commit.

        Faust's documented way to move the fetcher: stop the flow, wait for the fetcher
        to be idle, seek, resume. Events still queued for the agent are cleared (they
        come again); everything re-read is applied idempotently.
        """
        await self.checkpoint()
        consumer = self.app.consumer
        async with self._ckpt_lock:
            self.stats["heals"] = self.stats.get("heals", 0) + 1
            consumer.stop_flow()
            self.app.flow_control.suspend()
            self.app.flow_control.clear()
            try:
                await consumer.wait_for_stopped_flow()
                await consumer.perform_seek()
                # partitions without a commit stay where the fetcher is: rewind them to
                # their first offset (the hole may be right at the start of the log)
                for tp in consumer.assignment():
                    if tp.topic in self.families and self._committed(tp) is None:
                        self._starts.pop(tp, None)
                        start = await self._log_start(tp)
                        if start is not None:
                            await consumer.seek(tp, start)
            finally:
                self.applied, self.committed, self.holes = {}, {}, set()
                self._progress.clear()
                self.app.flow_control.resume()
                consumer.resume_flow()
            log.info("re-reading every partition from its committed offset")

    async def drain(self) -> None:
        """Checkpoint everything now (before revoke/shutdown); keep doing so per batch."""
        self.draining = True
        await self.checkpoint()

    async def checkpoint(self) -> bool:
        """Flush sinks, persist state changes, write OLAP rows, then commit offsets.

        Returns True on success; on failure nothing is committed and everything is retried.
        """
        async with self._ckpt_lock:
            self.last_checkpoint = time.monotonic()
            ckpt = self.engine.snapshot()
            for event_type, n in self.engine.take_late().items():
                self.health.late.labels(event_type).inc(n)
                late = self.stats.setdefault("late_events", {})
                late[event_type] = late.get(event_type, 0) + n
            generation = self.app.consumer_generation_id
            offsets = {tp: o for tp, o in self.applied.items() if self.committed.get(tp) != o}
            unflushed, self.unflushed = self.unflushed, 0
            if ckpt.empty() and not offsets and not unflushed:
                return True
            started = time.perf_counter()
            rejected: list[Rejected] = []
            try:
                # sinks first: nothing is committed unless every routed event is durable
                rejected = await self.router.flush()
                for item in rejected:
                    await self.dead_letter_rejected(item)
                for partition, key, value in ckpt.changelog:
                    self.table.send_changelog(partition, key, value)
                await self.app.producer.flush()
                rejected = []  # their dead letters are durable now: never send them twice
                if ckpt.rows:
                    await asyncio.get_running_loop().run_in_executor(
                        None, self._write_rows, ckpt.rows
                    )
            except Exception as exc:  # any failure: nothing committed, everything retried
                self.router.restore_rejected(rejected)
                self.health.checkpoint_failures.inc()
                self.engine.requeue(ckpt)
                self.unflushed += unflushed
                self.stats["checkpoint_failures"] += 1
                log.error("checkpoint failed, will retry: %s", exc)
                return False
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

    def _write_rows(self, rows: dict[str, list[list]]) -> None:
        self.olap.write({t: (self.engine.columns(t), r) for t, r in rows.items()})

    # -- rebalancing ----------------------------------------------------------------------
    async def _on_revoked(self, app: Any, revoked: set, **_: Any) -> None:
        # drain() ran in _consumer_wait_empty; whatever was not committed is reprocessed
        # by the partition's next owner (maybe us, after the seek). Every partition is
        # revoked at each rebalance, even those we keep: state goes in _on_assigned.
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

    async def _on_recovered(self) -> None:
        data = self.table.data
        touched = self.engine.restore(list(data.items()))
        data.clear()
        if touched:
            log.info("restored state of partitions %s from the changelog", sorted(touched))

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
            },
            "dead_letters_by_reason": self.health.dead_letter_counts(),
            "partitions": {
                p: {"emails": len(ps.email.emails), "positions": ps.positions}
                for p, ps in sorted(self.engine.partitions.items())
            },
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
