"""``sluice olap``: migrate, query and lint the ClickHouse warehouse."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli.common import (
    WorkerUnreachable,
    call_worker,
    chdb_hint,
    fail,
    needs,
    out,
    quiet_clickhouse,
    settings,
)

app = typer.Typer(help="The ClickHouse OLAP warehouse.", no_args_is_help=True)


def plain(value: Any) -> Any:
    from sluice.olap.values import to_json

    return to_json(value)


def _store(s: Any) -> Any:
    try:
        from sluice.olap import OlapError, open_store
    except ImportError as exc:
        raise needs("olap", exc) from None
    quiet_clickhouse()
    try:
        return open_store(s)
    except OlapError as exc:
        raise fail(chdb_hint(str(exc))) from None


@app.command("migrate")
def migrate() -> None:
    """Create or upgrade the OLAP tables (versioned, idempotent, one migrator at a time)."""
    from sluice.olap import OlapError
    from sluice.olap import migrate as apply

    s = settings()
    store = _store(s)
    try:
        applied = apply(store, cluster=s.clickhouse_cluster)
    except OlapError as exc:
        raise fail(chdb_hint(str(exc))) from None
    if applied:
        for m in applied:
            out.print(f"applied  {m.version:03d}_{m.name}", highlight=False)
    else:
        out.print("up to date", highlight=False)


@app.command("ddl")
def ddl(
    cluster: str | None = typer.Option(
        None, "--cluster", help="Render for this cluster (default: CLICKHOUSE_CLUSTER, if set)."
    ),
) -> None:
    """Print every migration's DDL, as `sluice olap migrate` would run it (nothing runs)."""
    from sluice.olap.ddl import Target
    from sluice.olap.migrations import available

    target = Target(cluster if cluster is not None else settings().clickhouse_cluster)
    for migration in available(target):
        out.print(f"-- migration {migration.version:03d}_{migration.name}", highlight=False)
        out.print(migration.sql, highlight=False, markup=False, soft_wrap=True, end="")


def read(s: Any, sql: str) -> tuple[list[str], list]:
    """Run a read-only query: through the running worker for chDB (it owns the store),
    else on the server directly."""
    from sluice.settings import QUERY_PATH

    if s.clickhouse_url.startswith("chdb://"):
        try:
            body = call_worker(s, QUERY_PATH, json.dumps({"sql": sql}).encode())
        except WorkerUnreachable:
            pass  # no worker running: open the store directly
        else:
            return body["columns"], body["rows"]
    from sluice.olap import OlapError
    from sluice.olap.reader import ReadRefused, open_reader

    quiet_clickhouse()
    try:
        reader = open_reader(s)  # checked and bounded, on any URL
        try:
            return reader.query(sql)
        finally:
            reader.close()
    except ReadRefused as exc:
        raise fail(str(exc)) from None
    except OlapError as exc:
        raise fail(chdb_hint(str(exc))) from None


@app.command("query")
def query(
    sql: str = typer.Argument(..., help="A read-only SQL query."),
    fmt: str = typer.Option("table", "--format", help="table, json or csv"),
) -> None:
    """Run a read-only query on the OLAP store.

    With the embedded chDB store the running worker owns the files: the query is sent
    to the worker's HTTP endpoint when it answers, and run directly otherwise.
    """
    if fmt not in {"table", "json", "csv"}:
        raise fail(f"--format must be table, json or csv (got {fmt!r})", code=2)
    columns, rows = read(settings(), sql)
    if fmt == "json":
        out.print_json(json.dumps([dict(zip(columns, map(plain, r), strict=True)) for r in rows]))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[plain(v) for v in r] for r in rows])
    else:
        table = Table(*columns)
        for r in rows:
            table.add_row(*(str(plain(v)) for v in r))
        out.print(table)


@app.command("lint")
def lint(
    files: list[Path] = typer.Argument(..., help="SQL files with CREATE TABLE proposals."),
    strict: bool = typer.Option(False, "--strict", help="Fail on warnings too."),
) -> None:
    """Check OLAP table proposals against the design rules (spec §5).

    Prints one line per problem (``FILE:LINE: error|warning [rule] ...``) and a summary.
    Exits 1 if any error breaks the boundary; warnings (house conventions) exit 0 unless
    ``--strict``. Prints "ok" when every table is fit for the lean OLAP.
    """
    try:
        from sluice.olap.lint import lint_paths
    except ImportError as exc:
        raise needs("olap", exc) from None

    for path in files:
        if not path.is_file():
            raise fail(f"{path}: no such file", code=2)
    report = lint_paths(files, strict=strict)
    for line in report.lines:
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print(report.summary(), highlight=False, markup=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
