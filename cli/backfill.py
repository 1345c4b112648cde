"""``sluice backfill``: recompute rollups from Kafka (logic: :mod:`streams.backfill`)."""

from __future__ import annotations

from typing import Any

import typer

from cli.common import (
    KafkaClientErrors,
    WorkerUnreachable,
    call_worker,
    chdb_hint,
    err,
    fail,
    needs,
    out,
    quiet_clickhouse,
    settings,
)


def backfill(
    since: str = typer.Option(
        ...,
        "--from",
        help="First day whose rows are rewritten: ISO-8601, epoch ms, or an age like 7d.",
    ),
    until: str | None = typer.Option(
        None, "--to", help="Last day whose rows are rewritten (default: up to now)."
    ),
    tables: list[str] | None = typer.Option(  # noqa: B008 - typer's idiom
        None,
        "--tables",
        help="Rollup tables to rewrite (repeat or comma-separate; default: every rollup table).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Recompute and report the row counts; write nothing."
    ),
) -> None:
    """Recompute rollups from the events still retained in Kafka and overwrite the affected
    OLAP rows (idempotent; the running worker keeps running).

    Every partition is read from its first retained offset, since an email's events may
    precede the range; only rows whose send day (month, lead send days) falls in the range
    are written. Rows whose events retention has partly deleted are skipped and reported.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    try:
        from streams import backfill as bf
        from streams.engine import Engine
    except ImportError as exc:
        raise needs("worker", exc) from None
    from avro_schemas.codec import Codec
    from sluice.dlq import parse_time
    from topics.catalog import Catalog

    s = settings()
    try:
        wanted = bf.check_tables(tables)
        window = bf.Range.from_ms(
            parse_time(since), parse_time(until) if until is not None else None
        )
    except (ValueError, bf.BackfillError) as exc:
        raise fail(str(exc)) from None

    errors = KafkaClientErrors()
    conf = errors.config(s)
    catalog = Catalog.from_settings(s)
    try:
        sources = bf.plan(conf, catalog.families(), s.kafka_timeout_s)
    except bf.BackfillError as exc:
        raise fail(errors.first or str(exc)) from None
    if not sources:
        raise fail("no events retained in the event topics (run `sluice topics list`)")
    registry = _erasures(conf, catalog.erasures.name, errors, s.kafka_timeout_s)

    write, target, client = (_dry_run, "nothing (dry run)", None) if dry_run else _writer(s)
    total = sum(src.high - src.low for src in sources)
    codec = Codec(settings=s)
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("reading events", total=total)
            report = bf.run(
                conf,
                sources,
                wanted,
                window,
                write,
                codec.decode,
                on_progress=lambda n: progress.advance(task, n),
                engine_factory=lambda: Engine.for_settings(s, registry),
                catalog=Catalog.from_settings(s),
            )
    except bf.BackfillError as exc:
        raise fail(str(exc)) from None
    if client is not None:
        _purge_erased(s, client, conf, catalog.erasures.name, errors)

    table = Table(title=f"backfill {window.start} .. {window.end or 'now'} → {target}")
    table.add_column("table")
    table.add_column("rows written", justify="right")
    table.add_column("skipped (retention)", justify="right")
    written, skipped = report.written(), report.skipped()
    for name in wanted:
        table.add_row(name, str(written.get(name, 0)), str(skipped.get(name, 0)))
    out.print(table)
    out.print(
        f"read {report.events} event(s) from {len(sources)} topic-partition(s)"
        + (f"; {report.undecodable} undecodable (dead letters)" if report.undecodable else ""),
        highlight=False,
    )
    for part in report.partitions:
        if part.complete_from is not None and part.skipped_incomplete:
            err.print(
                f"warning: partition {part.partition}: retention deleted events before "
                f"{part.complete_from}; older rows were left as they are",
                highlight=False,
            )


def _dry_run(table: str, columns: list[str], rows: list[list]) -> None:
    return None


def _erasures(conf: dict, topic: str, errors: KafkaClientErrors, timeout: float = 30.0) -> Any:
    """The erased leads, read whole: their rows are never recomputed (docs/erasure.md)."""
    from sluice.privacy import read_registry

    try:
        registry, _ = read_registry(conf, topic, timeout=timeout)
    except Exception as exc:
        raise fail(f"cannot read the erasure registry: {errors.describe(exc)}") from None
    return registry


def _purge_erased(s: Any, client: Any, conf: dict, topic: str, errors: KafkaClientErrors) -> None:
    """Rows written directly: a lead erased while the backfill ran may have had its rows
    written after the workers purged them, so purge again (through a running worker,
    its rows endpoint filters instead)."""
    from sluice.olap import OlapError
    from sluice.olap.erasure import purge

    registry = _erasures(conf, topic, errors, s.kafka_timeout_s)
    if not len(registry):
        return
    refs: dict[str, set[str]] = {}
    for entry in registry:
        refs.setdefault(entry.tenant, set()).add(entry.ref)
    try:
        deleted = purge(client, refs, cluster=s.clickhouse_cluster)
    except OlapError as exc:
        raise fail(f"purging erased leads' rows after the backfill: {exc}") from None
    if deleted:
        err.print(f"purged {deleted} row(s) of leads erased meanwhile", highlight=False)


def _writer(s: Any) -> tuple[Any, str, Any]:
    """Write to the running worker when it owns an embedded store, else directly."""
    from sluice.olap import OlapError, open_store
    from sluice.settings import ROWS_PATH, STATUS_PATH, redact_url
    from streams import backfill as bf

    if s.clickhouse_url.startswith("chdb://"):
        try:
            call_worker(s, STATUS_PATH, timeout=5)
        except WorkerUnreachable:
            pass  # no worker: open the store directly
        else:

            def via_worker(table: str, columns: list[str], rows: list[list]) -> None:
                try:
                    call_worker(s, ROWS_PATH, bf.dumps(table, columns, rows), timeout=120)
                except WorkerUnreachable as exc:
                    raise bf.BackfillError(f"writing {table} via the worker: {exc}") from None

            return via_worker, f"the worker at {s.worker_url('')}", None
    quiet_clickhouse()
    try:
        client = open_store(s)
    except OlapError as exc:
        raise fail(chdb_hint(str(exc))) from None

    def direct(table: str, columns: list[str], rows: list[list]) -> None:
        try:
            client.insert(table, columns, rows)
        except OlapError as exc:
            raise bf.BackfillError(str(exc)) from None

    return direct, redact_url(s.clickhouse_url), client
