"""``sluice status``: lag from Kafka and what the running worker reports."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from cli.common import (
    KafkaClientErrors,
    WorkerUnreachable,
    call_worker,
    fail,
    ms_iso,
    out,
    settings,
)


def status(fmt: str = typer.Option("table", "--format", help="table or json")) -> None:
    """Consumer lag per topic and partition (from Kafka) and what the worker reports.

    Lag and committed offsets come from Kafka (the worker's consumer group), so they show
    even when no worker runs; flushes per OLAP table and sink and dead-letter counts come
    from the running worker's HTTP endpoint. Exits 1 when no worker answers.
    """
    from sluice.kafka import group_lag
    from sluice.settings import STATUS_PATH
    from topics.catalog import Catalog

    if fmt not in {"table", "json"}:
        raise fail(f"--format must be table or json (got {fmt!r})", code=2)
    s = settings()
    errors = KafkaClientErrors()
    try:
        topics = list(Catalog.from_settings(s).families())
        lag = group_lag(errors.config(s), s.sluice_app_id, topics, timeout=s.kafka_timeout_s)
        kafka_error = None
    except Exception as exc:
        lag, kafka_error = (
            [],
            f"cannot reach Kafka at {s.kafka_bootstrap_servers}: {errors.describe(exc)}",
        )
    try:
        worker_status, worker_error = call_worker(s, STATUS_PATH, timeout=10), None
    except WorkerUnreachable as exc:
        url = s.worker_url(STATUS_PATH)
        worker_status, worker_error = None, f"no worker answers at {url} ({exc})"
    if fmt == "json":
        out.print_json(
            json.dumps(
                {
                    "group": s.sluice_app_id,
                    "lag": lag,
                    "total_lag": sum(r["lag"] for r in lag),
                    "worker": worker_status,
                    "errors": [e for e in (kafka_error, worker_error) if e],
                }
            )
        )
    else:
        _print_status(s.sluice_app_id, lag, worker_status, kafka_ok=kafka_error is None)
    if kafka_error and worker_error:
        raise fail(f"{kafka_error}; {worker_error}")
    for message in (kafka_error, worker_error):
        if message:
            raise fail(message)


def _print_status(
    group: str, lag: list[dict[str, Any]], worker: dict[str, Any] | None, kafka_ok: bool = True
) -> None:
    table = Table("topic", "partition", "committed", "end", "lag", title=f"consumer group {group}")
    for r in lag:
        committed = "-" if r["committed"] is None else str(r["committed"])
        table.add_row(r["topic"], str(r["partition"]), committed, str(r["high"]), str(r["lag"]))
    if lag:
        out.print(table)
        out.print(f"total lag: {sum(r['lag'] for r in lag)}", highlight=False)
    elif kafka_ok:
        out.print(f"no event topics found for group {group} (run `sluice topics create`)")
    if worker is None:
        return
    sec = lambda t: ms_iso(int(t * 1000)) if t else "-"  # noqa: E731
    flushes = Table("OLAP table / sink", "last successful flush", "last flush attempt")
    for table_name, at in sorted(worker.get("last_flush", {}).items()):
        flushes.add_row(table_name, sec(at), "")
    sinks = worker.get("sinks", {})
    for sink in sorted(set(sinks.get("last_flush", {})) | set(sinks.get("last_delivery", {}))):
        flushes.add_row(
            f"sink {sink}",
            sec(sinks.get("last_delivery", {}).get(sink)),
            sec(sinks.get("last_flush", {}).get(sink)),
        )
    out.print(flushes)
    letters = Table("dead letters: stage", "reason", "count (this worker)")
    for stage, reasons in sorted(worker.get("dead_letters_by_reason", {}).items()):
        for reason, count in sorted(reasons.items()):
            letters.add_row(stage, reason, str(count))
    out.print(letters)
    summary = Table("worker", "value")
    for key in ("app_id", "events", "checkpoints", "checkpoint_failures", "unflushed_events"):
        if key in worker:
            summary.add_row(key, str(worker[key]))
    summary.add_row("assigned", ", ".join(worker.get("assigned", [])) or "-")
    store = worker.get("state_store") or {}
    if store.get("kind") == "rocksdb":
        summary.add_row(
            "state entries",
            f"{store['in_memory']:,} in memory (budget {store['memory_items']:,}), "
            f"{store['on_disk']:,} in RocksDB",
        )
    elif store:
        summary.add_row("state entries", "all in memory (SLUICE_STATE_STORE=memory)")
    restore = worker.get("restore") or {}
    if restore.get("restoring"):
        summary.add_row("restoring", ", ".join(map(str, restore["restoring"])))
    for p, r in sorted(restore.get("partitions", {}).items(), key=lambda kv: int(kv[0])):
        why = f" ({r['reason']})" if r.get("reason") else ""
        summary.add_row(
            f"partition {p} state",
            f"{r['mode']}{why}: {r['entries']:,} changelog entries in {r['seconds']:.1f} s",
        )
    erasure = worker.get("erasure") or {}
    if erasure.get("erased_leads"):
        summary.add_row(
            "erased leads (docs/erasure.md)",
            f"{erasure['erased_leads']:,}; OLAP purges pending "
            f"{erasure.get('olap_purges_pending', 0)}, keys being erased "
            f"{erasure.get('lead_keys_erasing', 0)}",
        )
    late = worker.get("late_events") or {}
    if late:
        summary.add_row(
            "late events (beyond the attribution window)",
            ", ".join(f"{kind} {n}" for kind, n in sorted(late.items())),
        )
    out.print(summary)
