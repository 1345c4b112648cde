"""The Faust application: one agent over every event topic, kept thin.

decode → apply to state → (checkpoint: changelog, OLAP, DLQ durable) → ack.

Delivery semantics
------------------
At-least-once from Kafka, made exact by idempotent state merges and idempotent OLAP
writes (see :mod:`streams.engine`). Events are taken with ``noack_take`` and acknowledged
only after the checkpoint that covers them succeeded — Faust's ``take()`` would ack a
batch even when processing raised. Faust commits offsets of acknowledged events only.

Before a rebalance revokes partitions, and before shutdown, Faust waits for every
unacknowledged event (``stream_wait_empty``); Sluice hooks that wait to checkpoint at
once, so a SIGTERM or a rebalance flushes everything and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
from faust.web import View
from faust.types import EventT

from sinks.dlq import dead_letter_headers
from sluice.codec import Codec, DecodeError
from sluice.olap import OlapClient, OlapError, connect, migrate
from sluice.settings import Settings, get_settings
from streams.engine import Engine
from topics.catalog import dlq_topic, event_topics

log = logging.getLogger("sluice.worker")

# Most unacknowledged events held between checkpoints before the agent stops taking more
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


class Worker:
    """Binds the engine, the codec and the sinks to one Faust app."""

    def __init__(self, settings: Settings, olap: OlapClient | None = None) -> None:
        self.settings = settings
        self.engine = Engine()
        self.codec = Codec()
        self._olap = olap
        self.families = {spec.name: spec.family for spec in event_topics()}
        self.pending: list[EventT] = []
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
        Path(s.sluice_data_dir, "faust").mkdir(parents=True, exist_ok=True)
        brokers = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(",") if h.strip()]
        app = SluiceApp(
            s.sluice_app_id,
            broker=brokers,
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
            web_enabled=True,
            web_port=s.sluice_web_port,
            web_bind=s.sluice_web_host,
            web_host=s.sluice_web_host,
            datadir=f"{s.sluice_data_dir}/faust",
            tabledir=f"{s.sluice_data_dir}/tables",
            logging_config=None,
        )
        app.sluice = self
        self.source = app.topic(
            *self.families, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw",
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
        return app

    @property
    def olap(self) -> OlapClient:
        if self._olap is None:
            self._olap = connect(self.settings.clickhouse_url)
            migrate(self._olap)
        return self._olap

    # -- the agent ----------------------------------------------------------------------
    async def _agent(self, stream: faust.StreamT) -> None:
        self.stream = stream
        s = self.settings
        async for events in stream.noack_take(s.sluice_batch_max, s.sluice_batch_within_s):
            await self.process(events)
            if self.draining or time.monotonic() - self.last_checkpoint >= s.sluice_flush_interval_s:
                await self.checkpoint()
            while len(self.pending) >= MAX_PENDING:
                # backpressure: hold this batch's slot until a checkpoint gets through
                await asyncio.sleep(1.0)
                await self.checkpoint()

    async def process(self, events: Sequence[EventT]) -> None:
        """Decode and apply one batch; dead-letter what cannot be decoded."""
        assigned = {tp.partition for tp in self.app.consumer.assignment()}
        decode = self.codec.decode
        engine = self.engine
        families = self.families
        for event in events:
            message = event.message
            if message.partition not in assigned:
                continue  # revoked while buffered: its new owner reprocesses it
            family = families[message.topic]
            try:
                record = decode(event.value, family)
            except DecodeError as exc:
                await self.dead_letter(event, exc.reason, exc.detail)
                engine.advance(engine.state(message.partition), message.topic, message.offset)
            else:
                engine.apply(message.partition, message.topic, message.offset, family, record)
            self.pending.append(event)
        self.stats["events"] += len(events)

    async def dead_letter(self, event: EventT, reason: str, detail: str) -> None:
        m = event.message
        self.stats["dead_letters"] += 1
        log.warning("dead letter %s[%s]@%s: %s: %s", m.topic, m.partition, m.offset, reason, detail)
        await self.dlq.send(
            key=m.key,
            value=event.value,
            headers=dead_letter_headers(
                reason=reason, detail=detail, topic=m.topic, partition=m.partition,
                offset=m.offset, stage="decode",
            ),
        )

    # -- checkpoints --------------------------------------------------------------------
    async def _timer(self) -> None:
        await self.checkpoint()

    async def drain(self) -> None:
        """Checkpoint everything now (before revoke/shutdown); keep doing so per batch."""
        self.draining = True
        await self.checkpoint()

    async def checkpoint(self) -> bool:
        """Persist state changes, write OLAP rows, then ack. Return True on success."""
        async with self._ckpt_lock:
            self.last_checkpoint = time.monotonic()
            ckpt = self.engine.snapshot()
            pending, self.pending = self.pending, []
            if ckpt.empty() and not pending:
                return True
            started = time.perf_counter()
            try:
                for partition, key, value in ckpt.changelog:
                    self.table.send_changelog(partition, key, value)
                await self.app.producer.flush()
                if ckpt.rows:
                    await asyncio.get_running_loop().run_in_executor(None, self._write_rows, ckpt.rows)
            except Exception as exc:  # any failure: nothing acked, everything retried
                self.engine.requeue(ckpt)
                self.pending = pending + self.pending
                self.stats["checkpoint_failures"] += 1
                log.error("checkpoint failed, will retry: %s", exc)
                return False
            assigned = {tp for tp in self.app.consumer.assignment()}
            for event in pending:
                if event.message.tp in assigned:
                    await self.stream.ack(event)
            await self.app.consumer.commit()
            self.stats["checkpoints"] += 1
            elapsed = time.perf_counter() - started
            now = time.time()
            for table in ckpt.rows:
                self.stats["last_flush"][table] = now
            log.info(
                "checkpoint: %d events acked, %d changelog entries, %s rows in %.3fs",
                len(pending), len(ckpt.changelog),
                {t: len(r) for t, r in ckpt.rows.items()}, elapsed,
            )
            return True

    def _write_rows(self, rows: dict[str, list[list]]) -> None:
        for table, table_rows in rows.items():
            self.olap.insert(table, self.engine.columns(table), table_rows)

    # -- rebalancing ----------------------------------------------------------------------
    async def _on_revoked(self, app: Any, revoked: set, **_: Any) -> None:
        # drain() ran in _consumer_wait_empty; whatever was not acked is reprocessed by the
        # partition's next owner, so the state can go.
        self.engine.drop({tp.partition for tp in revoked})
        self.pending = [e for e in self.pending if e.message.tp not in revoked]

    async def _on_assigned(self, app: Any, assigned: set, **_: Any) -> None:
        self.draining = False

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
            "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in self.app.consumer.assignment()),
            "pending_events": len(self.pending),
            "commits": self._commit_view(),
            "partitions": {
                p: {"emails": len(ps.email.emails), "positions": ps.positions}
                for p, ps in sorted(self.engine.partitions.items())
            },
            **self.stats,
        }

    def _commit_view(self) -> dict[str, Any]:
        """Per source partition: Faust's committed offset and acked-but-uncommitted offsets."""
        consumer = self.app.consumer
        view: dict[str, Any] = {}
        for tp in sorted(consumer.assignment()):
            if tp.topic not in self.families:
                continue
            acked = consumer._acked.get(tp) or []  # noqa: SLF001 - read-only diagnostics
            view[f"{tp.topic}:{tp.partition}"] = {
                "committed": consumer._committed_offset.get(tp),  # noqa: SLF001
                "acked_uncommitted": len(acked),
                "first_acked": min(acked) if acked else None,
            }
        return view

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


class StatusView(View):
    """GET /sluice/status/: what the worker is doing, as JSON."""

    async def get(self, request: Any) -> Any:
        return self.json(self.app.sluice.status())


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
