"""The worker's HTTP endpoints (Faust's web server), and who may call them.

* ``GET /sluice/status/`` — what the worker is doing, as JSON (open, read-only);
* ``GET /metrics`` — Prometheus exposition of :mod:`streams.metrics` (open, read-only);
* ``POST /sluice/query/`` ``{"sql": ...}`` — one read on the worker's OLAP store (chDB
  allows one process per store, so other processes read through here), checked by
  :mod:`sluice.olap.readguard` and run on a connection of its own
  (:mod:`sluice.olap.reader`): 400 with one line when refused, 429 while another read
  runs, 502 when ClickHouse fails;
* ``POST /sluice/olap/rows/`` ``{"table", "columns", "rows"}`` — rows ``sluice backfill``
  recomputed, written into the store this worker owns (rollup tables only; never a row of
  an erased lead);
* ``POST /sluice/privacy/verify/`` ``{"tenant", "lead"}`` — what this worker's state still
  holds that names one lead, and what its erasure registry says of it
  (``sluice privacy verify``).

The last three reveal and change data, so they always require ``Authorization: Bearer
<token>``: ``SLUICE_API_TOKEN``, or (unset) a random token the worker writes to
``SLUICE_DATA_DIR/api-token`` with mode 0600 at start-up, so only the worker's user (and
the CLI it runs) can read it. The production profile refuses the second way unless the
endpoint is bound to a loopback address. A refusal is 401 and one log line without the
token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faust.web import View

from sluice.olap import OlapError
from sluice.olap.reader import ReadBusy, ReadRefused
from sluice.olap.values import rows_to_json
from streams.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from streams.worker import Worker

log = logging.getLogger("sluice.web")

MAX_BODY_BYTES = 64 * 1024 * 1024  # one backfill chunk of rows; queries are far smaller


def status(worker: Worker) -> dict[str, Any]:
    """The status document (``sluice status`` prints it)."""
    engine = worker.engine
    return {
        "app_id": worker.settings.sluice_app_id,
        "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in worker.app.consumer.assignment()),
        # the consumer group's generation: unchanged across a static member's restart
        "generation": worker.app.consumer_generation_id,
        "instance_id": worker.settings.sluice_instance_id,
        "unflushed_events": worker.progress.unflushed,
        "sinks": {
            "buffered": worker.router.buffered(),
            "states": worker.router.states(),  # ok | retrying | refused, and why
            "unconfigured": worker.router.unconfigured,
            # epoch seconds: last flush attempt / last batch a destination accepted
            "last_flush": dict(worker.health.last_flush),
            "last_delivery": dict(worker.health.last_delivery),
            "partial_success": dict(worker.health.partial_success),  # OTLP rejected points
        },
        "dead_letters_by_reason": worker.health.dead_letter_counts(),
        "partitions": {
            p: {"emails": len(ps.email.emails), "positions": ps.positions}
            for p, ps in sorted(engine.partitions.items())
        },
        "state_store": engine.stats(),
        # per partition: how its state came back (kept / reused / rebuilt, why, how long)
        "restore": worker.restorer.status(),
        "erasure": {
            "erased_leads": len(engine.erasures),
            "olap_purges_pending": sum(len(r) for r in engine.pending_purge.values()),
            "lead_keys_erasing": sum(
                c.stats().get("lead_keys_erasing", 0)
                for ps in engine.partitions.values()
                for c in ps.components
            ),
        },
        **worker.stats,
    }


def privacy_verify(worker: Worker, tenant: str, lead: str) -> dict[str, Any]:
    """What this worker holds that names ``tenant``'s lead ``lead`` (no lead id in it)."""
    from sluice.privacy import lead_ref

    engine = worker.engine
    ref = lead_ref(tenant, lead)
    erasure = engine.erasures.get(tenant, ref)
    return {
        "ref": ref,
        "erased": erasure is not None,
        "requested_at": erasure.requested_at if erasure is not None else None,
        "event_id": erasure.event_id if erasure is not None else None,
        "outcomes": [
            {"destination": o.destination, "scope": o.scope, "status": o.status, "at": o.at}
            | o.detail
            for o in engine.erasures.outcomes_of(tenant, ref)
        ],
        "olap_purge_pending": ref in engine.pending_purge.get(tenant, ()),
        "partitions": sorted(engine.partitions),
        "holds": {str(p): found for p, found in engine.holds(tenant, lead).items()},
    }


def metrics(worker: Worker) -> bytes:
    """Prometheus exposition of the worker's health (gauges refreshed on scrape)."""
    h = worker.health
    h.pending.set(worker.progress.unflushed)
    h.restoring.set(len(worker.restorer.running))
    for sink, count in worker.router.buffered().items():
        h.buffered.labels(sink).set(count)
    consumer = worker.app.consumer
    for tp in consumer.assignment():
        if tp.topic not in worker.families:
            continue  # changelogs are not ours
        state = worker.engine.partitions.get(tp.partition)
        position = state.positions.get(tp.topic) if state is not None else None
        highwater = consumer.highwater(tp)
        if highwater is not None and position is not None:
            h.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
    return h.exposition()


def _authorized(view: View, request: Any) -> Any | None:
    """None when the caller may proceed, else the 401 answer."""
    expected = f"Bearer {view.app.sluice.api_token}".encode()
    given = request.headers.get("Authorization", "").encode()
    if hmac.compare_digest(given, expected):
        return None
    peer = request.remote or "?"
    why = "wrong bearer token" if given else "no bearer token"
    log.warning("refused %s %s from %s: %s", request.method, request.path, peer, why)
    return view.json({"error": "a valid bearer token is required"}, status=401)


class ProtectedView(View):
    """A POST endpoint that reveals or changes data: the bearer token, then a bounded
    JSON object body, before :meth:`handle` sees anything."""

    async def post(self, request: Any) -> Any:
        refused = _authorized(self, request)
        if refused is not None:
            return refused
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return self.json({"error": "request body too large"}, status=413)
        try:
            body = await request.json()
        except Exception:
            body = None
        if not isinstance(body, dict):
            return self.json({"error": "the body must be a JSON object"}, status=400)
        return await self.handle(self.app.sluice, body)

    #: the endpoint itself, given the worker and the checked body (each subclass's own)
    handle: Callable[[Worker, dict[str, Any]], Awaitable[Any]]


class StatusView(View):
    """GET /sluice/status/: what the worker is doing, as JSON."""

    async def get(self, request: Any) -> Any:
        return self.json(status(self.app.sluice))


class MetricsView(View):
    """GET /metrics: Sluice's own health for Prometheus (see :mod:`streams.metrics`)."""

    async def get(self, request: Any) -> Any:
        return self.bytes(metrics(self.app.sluice), content_type=CONTENT_TYPE_LATEST.split(";")[0])


class QueryView(ProtectedView):
    """POST /sluice/query/ {"sql": ...}: one read-only query on the worker's OLAP store."""

    async def handle(self, worker: Worker, body: dict[str, Any]) -> Any:
        sql = body.get("sql")
        if not isinstance(sql, str):
            return self.json({"error": 'refused: the body must be {"sql": "..."}'}, status=400)
        try:
            # the query path's own connection, lock and thread: never the writer's
            columns, rows = await worker.olap_reader.query_async(sql)
        except ReadBusy as exc:
            return self.json({"error": str(exc)}, status=429)
        except ReadRefused as exc:
            log.info("query refused: %s", exc)
            return self.json({"error": str(exc)}, status=400)
        except OlapError as exc:
            return self.json({"error": str(exc)}, status=502)
        return self.json({"columns": columns, "rows": rows_to_json(rows)})


class PrivacyVerifyView(ProtectedView):
    """POST /sluice/privacy/verify/ {"tenant", "lead"}: what the state still holds of a lead
    (the lead id is never logged)."""

    async def handle(self, worker: Worker, body: dict[str, Any]) -> Any:
        tenant, lead = body.get("tenant"), body.get("lead")
        if not isinstance(tenant, str) or not isinstance(lead, str) or not tenant or not lead:
            return self.json({"error": "tenant and lead are required strings"}, status=400)
        async with worker.state_lock:  # a scan of the state: nothing changes meanwhile
            report = privacy_verify(worker, tenant, lead)
        return self.json(report)


class RowsView(ProtectedView):
    """POST /sluice/olap/rows/ {"table", "columns", "rows"}: ``sluice backfill`` writing
    recomputed rollup rows into the store this worker owns (chDB allows one process)."""

    async def handle(self, worker: Worker, body: dict[str, Any]) -> Any:
        from sluice.olap.values import rows_from_json
        from streams.backfill import ROLLUP_TABLES

        table, columns = str(body.get("table", "")), list(body.get("columns") or [])
        if table not in ROLLUP_TABLES:
            return self.json({"error": f"{table!r} is not a rollup table"}, status=400)
        if columns != worker.engine.columns(table):
            return self.json(
                {"error": f"columns of {table} do not match this worker's"}, status=400
            )

        def insert() -> int:
            _, described = worker.olap.query(f"DESCRIBE TABLE {table}")
            types = {name: kind for name, kind, *_ in described}
            rows = rows_from_json([types[c] for c in columns], body.get("rows") or [])
            # never a row of a lead erased meanwhile (the backfill read an older registry)
            rows = worker.engine.scrub_rows({table: rows}).get(table, [])
            if rows:
                worker.olap.insert(table, columns, rows)
            return len(rows)

        try:
            written = await asyncio.get_running_loop().run_in_executor(None, insert)
        except (OlapError, ValueError, KeyError, TypeError) as exc:
            return self.json({"error": str(exc)}, status=400)
        return self.json({"written": written})
