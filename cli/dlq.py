"""``sluice dlq``: summarise and replay the dead letters."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from cli.common import KafkaClientErrors, fail, ms_iso, out, settings

app = typer.Typer(help="The dead-letter topic: summarise and replay.", no_args_is_help=True)


def _dead_letters(s: Any) -> list:
    from sluice.dlq import read_dead_letters
    from topics.catalog import Catalog

    errors = KafkaClientErrors()
    try:
        return read_dead_letters(
            errors.config(s), Catalog.from_settings(s).dlq.name, timeout=s.kafka_timeout_s
        )
    except Exception as exc:
        raise fail(
            f"cannot read the dead letters from Kafka at {s.kafka_bootstrap_servers}: "
            f"{errors.describe(exc)}"
        ) from None


def _registry(s: Any) -> Any:
    """The erased leads: their dead letters are never replayed (docs/erasure.md)."""
    from sluice.privacy import read_registry
    from topics.catalog import Catalog

    errors = KafkaClientErrors()
    try:
        registry, _ = read_registry(
            errors.config(s), Catalog.from_settings(s).erasures.name, timeout=s.kafka_timeout_s
        )
    except Exception as exc:
        raise fail(f"cannot read the erasure registry: {errors.describe(exc)}") from None
    return registry


@app.command("list")
def list_(fmt: str = typer.Option("table", "--format", help="table or json")) -> None:
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
            ms_iso(g["first_failed_at"]),
            ms_iso(g["last_failed_at"]),
        )
    out.print(table)


@app.command("replay")
def replay(
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

    from avro_schemas.codec import Codec, DecodeError
    from sinks.pii import lead_of
    from sluice.dlq import REPLAYED, WOULD_REPLAY, parse_time, plan_replay
    from sluice.dlq import replay as produce_again
    from topics.catalog import Catalog

    if fmt not in {"table", "json"}:
        raise fail(f"--format must be table or json (got {fmt!r})", code=2)
    try:
        since_ms = parse_time(since) if since is not None else None
    except ValueError as exc:
        raise fail(f"--since: {exc}", code=2) from None
    s = settings()
    letters = _dead_letters(s)
    codec = Codec(settings=s)
    families = Catalog.from_settings(s).families()

    def decodes(value: bytes, family: str) -> str | None:
        try:
            codec.decode(value, family)
        except DecodeError as exc:
            return exc.reason
        return None

    registry = _registry(s)

    def erased(value: bytes, family: str) -> bool:
        event = codec.decode(value, family)
        return registry.erased(event["tenant_id"], lead_of(event))

    plan = list(
        plan_replay(letters, decodes, families.get, reason=reason, since_ms=since_ms, erased=erased)
    )
    outcomes = Counter(outcome for _, outcome in plan)
    chosen = [letter for letter, outcome in plan if outcome == WOULD_REPLAY]
    if chosen and not dry_run:
        errors = KafkaClientErrors()
        try:
            produce_again(errors.config(s), chosen)
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
