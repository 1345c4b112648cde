"""``sluice topics``: apply and show the topic catalog; move state after a key change."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from cli.common import (
    KafkaClientErrors,
    chdb_hint,
    err,
    fail,
    needs,
    out,
    quiet_clickhouse,
    settings,
)

app = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)


@app.command("create")
def create() -> None:
    """Create the catalog's topics (idempotent: existing topics are left alone)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from topics.catalog import Catalog

    s = settings()
    catalog = list(Catalog.from_settings(s))
    errors = KafkaClientErrors()
    admin = AdminClient(errors.config(s))
    try:
        existing = set(admin.list_topics(timeout=s.kafka_timeout_s).topics)
    except Exception as exc:
        raise fail(
            f"cannot reach Kafka at {s.kafka_bootstrap_servers}: {errors.describe(exc)}"
        ) from None
    for spec in catalog:
        if spec.name in existing:
            out.print(f"exists   {spec.name}", highlight=False)
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=-1,
            config=spec.topic_config(),
        )
        for spec in catalog
        if spec.name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=30).items():
        try:
            future.result()
            out.print(f"created  {name}", highlight=False)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                out.print(f"exists   {name}", highlight=False)
            else:
                raise fail(f"creating {name}: {exc}") from None


@app.command("list")
def list_() -> None:
    """Show the topic catalog: partitions, retention, record key and why."""
    from topics.catalog import Catalog

    s = settings()
    table = Table("topic", "partitions", "retention (days)", "key", "why this key", "schema")
    for spec in Catalog.from_settings(s):
        retention = (
            "compacted" if spec.retention_ms is None else f"{spec.retention_ms / 86_400_000:g}"
        )
        table.add_row(
            spec.name,
            str(spec.partitions),
            retention,
            " + ".join(spec.key) or "-",
            spec.key_reason or "-",
            spec.schema or "-",
        )
    out.print(table)


@app.command("rekey")
def rekey(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count the state entries that would move; change nothing."
    ),
) -> None:
    """Move email and warm-up state to where the catalog's keys put it; rewrite the rows.

    After a key change (docs/operations.md has the procedure). Stop every worker first
    (refused while the worker group has members). Idempotent and resumable: run it again
    after any failure. The OLAP store is migrated first, as a worker does at start-up.
    """
    from rich.progress import Progress

    try:
        from streams import rekey as rk
        from streams.engine import Engine
    except ImportError as exc:
        raise needs("worker", exc) from None
    from sluice.olap.catalog import OLAP_TABLES, SHARD_COLUMN
    from topics.catalog import Catalog

    s = settings()
    catalog = Catalog.from_settings(s)
    errors = KafkaClientErrors()
    conf = errors.config(s)
    try:
        rk.check_idle(conf, s.sluice_app_id, wait_s=s.kafka_session_timeout_s + 5)
    except rk.RekeyError as exc:
        raise fail(errors.first or str(exc)) from None
    write = existing = None
    if not dry_run:
        from sluice.olap import OlapError, migrate, open_store

        quiet_clickhouse()
        try:
            client = open_store(s)
            migrate(client, cluster=s.clickhouse_cluster)
        except OlapError as exc:
            raise fail(chdb_hint(str(exc))) from None

        def write(table: str, columns: list[str], rows: list[list]) -> None:
            client.insert(table, columns, rows)

        def existing(table: str, partition: int) -> list[tuple]:
            key = ", ".join(OLAP_TABLES[table].view_key)
            _, rows = client.query(
                f"SELECT {key} FROM {table} FINAL WHERE {SHARD_COLUMN} = {{p:UInt16}}",
                parameters={"p": partition},
            )
            return rows

    try:
        with Progress(console=err, transient=True) as progress:
            tasks: dict[str, Any] = {}

            def advance(step: str, n: int) -> None:
                if step not in tasks:
                    tasks[step] = progress.add_task(step, total=None)
                progress.advance(tasks[step], n)

            report = rk.run(
                conf,
                catalog,
                write=write,
                existing=existing or (lambda table, partition: ()),
                engine_factory=lambda: Engine.for_settings(s),
                on_progress=advance,
            )
    except (rk.RekeyError, RuntimeError) as exc:
        raise fail(f"re-key stopped (run it again to resume): {errors.first or exc}") from None
    table = Table(
        "partition",
        "changelog records",
        "moved out" if not dry_run else "would move out",
        "moved in" if not dry_run else "would move in",
        "rows written",
        "stale rows superseded",
        title=f"re-key of {catalog.changelog.name}" + (" (dry run)" if dry_run else ""),
    )
    for p in report.partitions:
        table.add_row(
            str(p.partition),
            str(p.records),
            str(p.moved_out),
            str(p.moved_in),
            str(sum(p.rows.values())),
            str(sum(p.superseded.values())),
        )
    out.print(table)
    moved = report.total("moved_out")
    if dry_run:
        out.print(f"{moved} state entries would move; nothing was changed", highlight=False)
    else:
        out.print(
            f"moved {moved} state entries to their home partition; start the workers",
            highlight=False,
        )
