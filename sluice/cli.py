"""The ``sluice`` command line.

Every error a user can cause (bad settings, a bad file, an unreachable broker) is one
clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError as SettingsError
from rich.console import Console
from rich.table import Table

from sluice.commands.backfill import backfill
from sluice.commands.schemas import app as schemas_app

app = typer.Typer(
    help="Sluice: route taxonomy-typed Avro events and keep a lean ClickHouse OLAP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)
olap_app = typer.Typer(help="The ClickHouse OLAP warehouse.", no_args_is_help=True)
audit_app = typer.Typer(help="The compliance audit log.", no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter topic: summarise and replay.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(olap_app, name="olap")
app.add_typer(audit_app, name="audit")
app.add_typer(dlq_app, name="dlq")
app.add_typer(schemas_app, name="schemas", help="Avro schemas of the taxonomy.")
app.command("backfill")(backfill)

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


class KafkaClientErrors:
    """Quiet confluent-kafka clients for the CLI: librdkafka's log lines go nowhere and
    the first client-side error (authentication, TLS) is kept for the one error line."""

    def __init__(self) -> None:
        import logging

        self.first: str | None = None
        self.logger = logging.getLogger("sluice.cli.librdkafka")
        self.logger.propagate = False
        if not self.logger.handlers:
            self.logger.addHandler(logging.NullHandler())

    def config(self, s: Any, **extra: Any) -> dict[str, Any]:
        from sluice.security import kafka_config

        return {**kafka_config(s), "logger": self.logger, "error_cb": self._on_error, **extra}

    def _on_error(self, error: Any) -> None:
        if self.first is None:
            self.first = error.str()

    def describe(self, exc: Exception) -> str:
        return self.first or str(exc)


def settings():  # noqa: ANN201 - Settings, imported lazily for fast --help
    from sluice.settings import get_settings

    try:
        return get_settings()
    except SettingsError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first.get("loc"):
            raise fail(f"invalid setting {str(first['loc'][0]).upper()}: {message}") from None
        raise fail(f"invalid settings: {message}") from None


# -- worker ----------------------------------------------------------------------------
@app.command()
def worker(
    loglevel: str = typer.Option("info", help="Log level of the worker."),
) -> None:
    """Run the long-running stream processor (stops cleanly on SIGTERM)."""
    import faust

    from streams.app import create_worker

    s = settings()
    w = create_worker(s)
    try:
        w.olap  # open and migrate the OLAP store before taking any event  # noqa: B018
    except Exception as exc:
        raise fail(str(exc)) from None
    faust.Worker(w.app, loglevel=loglevel, quiet=True).execute_from_commandline()


# -- produce ---------------------------------------------------------------------------
@app.command()
def produce(
    file: Path = typer.Option(..., "--file", "-f", help="JSON lines, one event per line."),
    skip_invalid: bool = typer.Option(
        False, help="Send the valid lines even if some are invalid (default: send nothing)."
    ),
) -> None:
    """Validate and produce events from a JSON-lines file."""
    from sluice.codec import Codec, ValidationError
    from sluice.producer import DeliveryError, EventProducer
    from sluice.taxonomy import family_of

    s = settings()
    if not file.is_file():
        raise fail(f"{file}: no such file")
    codec = Codec()
    good: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    with file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("a line must be a JSON object")
                family = family_of(str(event.get("event_type", "")))
                if family is None:
                    raise ValidationError(
                        f"event_type {event.get('event_type')!r} is not in the taxonomy"
                    )
                codec.validate(family, event)
            except (ValueError, ValidationError) as exc:
                bad.append((lineno, str(exc)))
            else:
                good.append(event)
    for lineno, message in bad[:50]:
        err.print(f"{file}:{lineno}: {message}", highlight=False)
    if len(bad) > 50:
        err.print(f"... and {len(bad) - 50} more bad lines", highlight=False)
    if bad and not skip_invalid:
        raise fail(
            f"{len(bad)} invalid line(s); nothing was sent "
            f"(use --skip-invalid to send the {len(good)} valid ones)"
        )
    from rich.progress import Progress

    try:
        producer = EventProducer(s, logger=KafkaClientErrors().logger)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("producing", total=len(good))
            for event in good:
                producer.send(event)
                progress.advance(task)
        stats = producer.flush()
    except DeliveryError as exc:
        raise fail(f"{exc} ({len(good) - len(exc.failures)} delivered)") from None
    except Exception as exc:  # broker unreachable, etc.
        raise fail(f"producing failed: {exc}") from None
    out.print(
        f"sent {stats.delivered} event(s) from {file}"
        + (f"; skipped {len(bad)} invalid line(s)" if bad else ""),
        highlight=False,
    )


# -- topics ----------------------------------------------------------------------------
@topics_app.command("create")
def topics_create() -> None:
    """Create the catalog's topics (idempotent: existing topics are left alone)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from topics.catalog import catalog

    s = settings()
    errors = KafkaClientErrors()
    admin = AdminClient(errors.config(s))
    try:
        existing = set(admin.list_topics(timeout=15).topics)
    except Exception as exc:
        raise fail(
            f"cannot reach Kafka at {s.kafka_bootstrap_servers}: {errors.describe(exc)}"
        ) from None
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=-1,
            config=spec.topic_config(),
        )
        for spec in catalog().values()
        if spec.name not in existing
    ]
    for spec in catalog().values():
        if spec.name in existing:
            out.print(f"exists   {spec.name}", highlight=False)
    if wanted:
        for name, future in admin.create_topics(wanted, request_timeout=30).items():
            try:
                future.result()
                out.print(f"created  {name}", highlight=False)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    out.print(f"exists   {name}", highlight=False)
                else:
                    raise fail(f"creating {name}: {exc}") from None


@topics_app.command("list")
def topics_list() -> None:
    """Show the topic catalog."""
    from topics.catalog import catalog

    settings()
    table = Table("topic", "partitions", "retention (days)", "key", "schema", "dead letters")
    for spec in catalog().values():
        table.add_row(
            spec.name,
            str(spec.partitions),
            f"{spec.retention_ms / 86_400_000:g}",
            spec.key,
            spec.schema or "-",
            spec.dlq or "-",
        )
    out.print(table)


# -- olap ------------------------------------------------------------------------------
@olap_app.command("migrate")
def olap_migrate() -> None:
    """Create or upgrade the OLAP tables (versioned, idempotent)."""
    from sluice.olap import OlapError, connect, migrate
    from sluice.security import clickhouse_options

    s = settings()
    _quiet_clickhouse()
    try:
        applied = migrate(connect(s.clickhouse_url, **clickhouse_options(s)))
    except OlapError as exc:
        raise fail(_chdb_hint(str(exc))) from None
    if applied:
        for m in applied:
            out.print(f"applied  {m.version:03d}_{m.name}", highlight=False)
    else:
        out.print("up to date", highlight=False)


@olap_app.command("query")
def olap_query(
    sql: str = typer.Argument(..., help="A read-only SQL query."),
    fmt: str = typer.Option("table", "--format", help="table, json or csv"),
) -> None:
    """Run a read-only query on the OLAP store.

    With the embedded chDB store the running worker owns the files: the query is sent
    to the worker's HTTP endpoint when it answers, and run directly otherwise.
    """
    columns, rows = _read_olap(settings(), sql)
    if fmt == "json":
        out.print_json(json.dumps([dict(zip(columns, map(_plain, r), strict=True)) for r in rows]))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in r] for r in rows])
    else:
        table = Table(*columns)
        for r in rows:
            table.add_row(*(str(_plain(v)) for v in r))
        out.print(table)


@olap_app.command("lint")
def olap_lint(
    files: list[Path] = typer.Argument(..., help="SQL files with CREATE TABLE proposals."),
    strict: bool = typer.Option(False, "--strict", help="Fail on warnings too."),
) -> None:
    """Check OLAP table proposals against the design rules (spec §5).

    Prints one line per problem (``FILE:LINE: error|warning [rule] ...``) and a summary.
    Exits 1 if any error breaks the boundary; warnings (house conventions) exit 0 unless
    ``--strict``. Prints "ok" when every table is fit for the lean OLAP.
    """
    from sluice.olaplint import lint_paths

    for path in files:
        if not path.is_file():
            raise fail(f"{path}: no such file", code=2)
    report = lint_paths(files, strict=strict)
    for line in report.lines:
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print(report.summary(), highlight=False, markup=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@olap_app.command("serve")
def olap_serve(
    path: Path = typer.Option(..., "--path", help="The chDB store directory to own."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8123, "--port", help="Port to listen on (0: any free port)."),
    user: str | None = typer.Option(
        None, "--user", envvar="CLICKHOUSE_USER", help="Require this user (and its password)."
    ),
    password_file: Path | None = typer.Option(
        None, "--password-file", help="File holding the password (else CLICKHOUSE_PASSWORD)."
    ),
    password: str | None = typer.Option(
        None, "--password", envvar="CLICKHOUSE_PASSWORD", hidden=True, show_envvar=False
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate (chain)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key."),
) -> None:
    """Serve a chDB store over ClickHouse's HTTP interface (SIGTERM stops it).

    chDB allows one process per store; with this server several workers share one
    through CLICKHOUSE_URL=http(s)://HOST:PORT (a development and test stand-in for a
    ClickHouse server: one engine, one query at a time).
    """
    from sluice.olap.server import Credentials, ServeError, serve, tls_context

    if password_file is not None:
        try:
            password = password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise fail(f"--password-file {password_file}: {exc.strerror or exc}", code=2) from None
    credentials = None
    if user or password:
        credentials = Credentials(user or "default", password or "")
    if (tls_cert is None) != (tls_key is None):
        raise fail("--tls-cert and --tls-key go together", code=2)

    def ready(server: Any) -> None:
        auth = f", user {credentials.user}" if credentials else ", no authentication"
        out.print(f"serving {path} at {server.url}{auth}", highlight=False, soft_wrap=True)

    try:
        tls = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        serve(path, host, port, credentials, tls, on_ready=ready)
    except ServeError as exc:
        raise fail(str(exc)) from None


def _quiet_clickhouse() -> None:
    # clickhouse-connect logs its own line before raising; the CLI prints one error line
    import logging

    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)


def _read_olap(s: Any, sql: str) -> tuple[list[str], list]:
    """Run a read-only query: through the running worker for chDB, else directly."""
    _quiet_clickhouse()
    from sluice.olap import OlapError, connect
    from sluice.security import clickhouse_options

    result = _query_worker(s, sql) if s.clickhouse_url.startswith("chdb://") else None
    if result is not None:
        return result
    try:
        return connect(s.clickhouse_url, **clickhouse_options(s)).query(sql)
    except OlapError as exc:
        raise fail(_chdb_hint(str(exc))) from None


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _query_worker(s: Any, sql: str) -> tuple[list[str], list[list]] | None:
    url = f"http://{s.sluice_web_host}:{s.sluice_web_port}/sluice/query/"
    request = urllib.request.Request(
        url, data=json.dumps({"sql": sql}).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", str(exc))
        except Exception:
            message = str(exc)
        raise fail(f"query failed (via the worker): {message}") from None
    except (urllib.error.URLError, OSError):
        return None  # no worker running: open the store directly
    return body["columns"], body["rows"]


def _chdb_hint(message: str) -> str:
    if "lock" in message.lower() or "already" in message.lower():
        return f"{message} (is a worker using this chDB store? stop it, or query through it)"
    return message


# -- audit -----------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(
    tenant: str | None = typer.Option(None, "--tenant", help="Verify only this tenant."),
) -> None:
    """Verify the admin_audit_log hash chains; report the first broken link per tenant.

    Exits 1 if any row was altered, removed or inserted. Prints each tenant's head
    (last seq and row_hash): keep it elsewhere to detect a truncated or rewritten tail.
    """
    from sluice.audit import CONFLICTS_SQL, VERIFY_SQL, verify, where_tenant

    s = settings()
    where = where_tenant(tenant)
    columns, rows = _read_olap(s, VERIFY_SQL.format(where=where))
    _, conflicts = _read_olap(s, CONFLICTS_SQL.format(where=where))
    reports = verify(
        (dict(zip(columns, r, strict=True)) for r in rows),
        [(r[0], int(r[1])) for r in conflicts],
    )
    if not reports:
        out.print(f"no audit rows{f' for tenant {tenant}' if tenant else ''}", highlight=False)
        return
    for report in reports:
        if report.first_break is None:
            out.print(
                f"ok      {report.tenant}: {report.rows} rows, head seq {report.head_seq} "
                f"{report.head_hash}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        else:
            b = report.first_break
            out.print(
                f"BROKEN  {report.tenant}: first broken link at seq {b.seq} ({b.kind}): {b.detail}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    if any(not r.ok for r in reports):
        raise typer.Exit(1)


# -- dead letters ----------------------------------------------------------------------
def _dead_letters(s: Any) -> list:
    from sluice.dlq import read_dead_letters
    from topics.catalog import dlq_topic

    errors = KafkaClientErrors()
    try:
        return read_dead_letters(errors.config(s), dlq_topic().name)
    except Exception as exc:
        raise fail(
            f"cannot read the dead letters from Kafka at {s.kafka_bootstrap_servers}: "
            f"{errors.describe(exc)}"
        ) from None


def _ms_iso(ms: int | None) -> str:
    from datetime import UTC, datetime

    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dlq_app.command("list")
def dlq_list(fmt: str = typer.Option("table", "--format", help="table or json")) -> None:
    """Summarise the dead letters by reason, stage and source topic."""
    from sluice.dlq import summarize

    if fmt not in {"table", "json"}:
        raise fail(f"--format must be table or json (got {fmt!r})", code=2)
    groups = summarize(_dead_letters(settings()))
    if fmt == "json":
        out.print_json(json.dumps(groups))
        return
    if not groups:
        out.print("no dead letters", highlight=False)
        return
    table = Table("reason", "stage", "source topic", "count", "first failed", "last failed")
    for g in groups:
        table.add_row(
            g["reason"],
            g["stage"],
            g["source_topic"],
            str(g["count"]),
            _ms_iso(g["first_failed_at"]),
            _ms_iso(g["last_failed_at"]),
        )
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    reason: str | None = typer.Option(None, "--reason", help="Only dead letters with this reason."),
    since: str | None = typer.Option(
        None, "--since", help="Only those failed at/after TIME (ISO-8601, epoch ms, or 2h, 7d)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would be replayed."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Re-produce dead letters that decode now to their source topic (raw bytes, same key).

    Safe to repeat: the worker applies a replayed event like a redelivery (idempotent).
    """
    from collections import Counter

    from sluice.codec import Codec, DecodeError
    from sluice.dlq import REPLAYED, WOULD_REPLAY, parse_time, plan_replay, replay
    from topics.catalog import event_topics

    if fmt not in {"table", "json"}:
        raise fail(f"--format must be table or json (got {fmt!r})", code=2)
    try:
        since_ms = parse_time(since) if since is not None else None
    except ValueError as exc:
        raise fail(f"--since: {exc}", code=2) from None
    s = settings()
    letters = _dead_letters(s)
    codec = Codec()
    families = {spec.name: spec.family for spec in event_topics()}

    def decodes(value: bytes, family: str) -> str | None:
        try:
            codec.decode(value, family)
        except DecodeError as exc:
            return exc.reason
        return None

    plan = list(plan_replay(letters, decodes, families.get, reason=reason, since_ms=since_ms))
    outcomes = Counter(outcome for _, outcome in plan)
    chosen = [letter for letter, outcome in plan if outcome == WOULD_REPLAY]
    if chosen and not dry_run:
        errors = KafkaClientErrors()
        try:
            replay(errors.config(s), chosen)
        except Exception as exc:
            raise fail(f"replay failed: {errors.describe(exc)}") from None
        outcomes[REPLAYED] = outcomes.pop(WOULD_REPLAY)
    result = {"dry_run": dry_run, "dead_letters": len(letters), "outcomes": dict(outcomes)}
    if fmt == "json":
        out.print_json(json.dumps(result))
        return
    table = Table("outcome", "count")
    for outcome, count in sorted(outcomes.items()):
        table.add_row(outcome, str(count))
    out.print(table)
    verb = "would replay" if dry_run else "replayed"
    out.print(f"{verb} {len(chosen)} of {len(letters)} dead letter(s)", highlight=False)


# -- status ----------------------------------------------------------------------------
@app.command()
def status(fmt: str = typer.Option("table", "--format", help="table or json")) -> None:
    """Consumer lag per topic and partition (from Kafka) and what the worker reports.

    Lag and committed offsets come from Kafka (the worker's consumer group), so they show
    even when no worker runs; flushes per OLAP table and sink and dead-letter counts come
    from the running worker's HTTP endpoint. Exits 1 when no worker answers.
    """
    from sluice.lag import group_lag
    from topics.catalog import event_topics

    if fmt not in {"table", "json"}:
        raise fail(f"--format must be table or json (got {fmt!r})", code=2)
    s = settings()
    errors = KafkaClientErrors()
    try:
        lag = group_lag(errors.config(s), s.sluice_app_id, [spec.name for spec in event_topics()])
        kafka_error = None
    except Exception as exc:
        lag, kafka_error = (
            [],
            f"cannot reach Kafka at {s.kafka_bootstrap_servers}: {errors.describe(exc)}",
        )
    url = f"http://{s.sluice_web_host}:{s.sluice_web_port}/sluice/status/"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            worker_status = json.load(response)
        worker_error = None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        worker_status, worker_error = None, f"no worker answers at {url} ({reason})"
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
    sec = lambda t: _ms_iso(int(t * 1000)) if t else "-"  # noqa: E731
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
    late = worker.get("late_events") or {}
    if late:
        summary.add_row(
            "late events (beyond the attribution window)",
            ", ".join(f"{kind} {n}" for kind, n in sorted(late.items())),
        )
    out.print(summary)


def main() -> None:
    """Entry point of the ``sluice`` script: usage errors are one line too (exit 2)."""
    try:  # typer >= 0.20 vendors click
        from typer._click import exceptions as click_errors  # type: ignore[import-not-found]
        from typer.exceptions import Abort  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - older typer
        import click.exceptions as click_errors  # type: ignore[no-redef]
        from click.exceptions import Abort  # type: ignore[no-redef,assignment]

    try:
        code = app(standalone_mode=False)
    except click_errors.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            out.print(exc.ctx.get_help(), highlight=False, markup=False)
            sys.exit(exc.exit_code)
        where = f"{exc.ctx.command_path} --help" if exc.ctx is not None else "sluice --help"
        err.print(
            f"[bold red]error:[/] {exc.format_message()} (see {where})",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        err.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Abort:
        err.print("aborted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
