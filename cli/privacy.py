"""``sluice privacy``: erase a lead, and verify that nothing Sluice controls names it.

What is erased where, what remains and for how long: docs/erasure.md.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
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

app = typer.Typer(help="A lead's right to be forgotten (docs/erasure.md).", no_args_is_help=True)

SOURCE = "sluice-cli"


@app.command("erase")
def erase(
    tenant: str = typer.Option(..., "--tenant", help="Tenant (company) id."),
    lead: str = typer.Option(..., "--lead", help="Id of the lead to erase."),
    requested_by: str = typer.Option(
        "data_subject",
        "--requested-by",
        help="Who asked: data_subject, tenant, regulator, or a pseudonymous user id "
        "(never a name or an address).",
    ),
    legal_basis: str | None = typer.Option(
        None, "--legal-basis", help="The law the request is made under, e.g. gdpr_art17."
    ),
    actor: str | None = typer.Option(
        None, "--actor", help="User id of whoever runs this (the audit row's actor)."
    ),
    reason: str | None = typer.Option(None, "--reason", help="A ticket reference."),
    wait: float = typer.Option(
        0.0,
        "--wait",
        help="Wait up to this many seconds for a worker to register the erasure.",
    ),
) -> None:
    """Request the erasure of one lead: produces an admin_lead_erasure_requested event.

    The worker records it once in admin_audit_log and in the erasure registry, which every
    worker follows: the lead goes from the state, the changelog and the OLAP, PostHog can
    no longer tie what it holds to the lead, and no later event or replay brings it back.
    """
    from sluice.producer import DeliveryError, EventProducer

    if not tenant.strip() or not lead.strip():
        raise fail("--tenant and --lead must not be empty", code=2)
    s = settings()
    errors = KafkaClientErrors()
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "admin_lead_erasure_requested",
        "occurred_at": int(time.time() * 1000),
        "tenant_id": tenant,
        "source": SOURCE,
        "user_id": actor,
        "target_type": "lead",
        "target_id": lead,
        "requested_by": requested_by,
        "legal_basis": legal_basis,
        "reason": reason,
    }
    try:
        with EventProducer(s, logger=errors.logger) as producer:
            producer.send(event)
    except DeliveryError as exc:
        raise fail(f"the erasure request was not delivered: {exc}") from None
    except Exception as exc:
        raise fail(f"producing failed: {errors.describe(exc)}") from None
    out.print(f"erasure requested: event {event['event_id']}", highlight=False)
    if wait > 0:
        if not _wait_registered(s, tenant, lead, wait):
            raise fail(
                f"no worker registered the erasure within {wait:g} s; the request is in "
                "Kafka and takes effect when a worker consumes it (is one running?)"
            )
        out.print("registered: every worker erases the lead now", highlight=False)


def _wait_registered(s: Any, tenant: str, lead: str, timeout: float) -> bool:
    from sluice.privacy import lead_ref, read_registry
    from topics.catalog import Catalog

    conf = KafkaClientErrors().config(s)
    topic = Catalog.from_settings(s).erasures.name
    ref = lead_ref(tenant, lead)
    deadline = time.monotonic() + timeout
    while True:
        registry, _ = read_registry(conf, topic, timeout=s.kafka_timeout_s)
        if registry.has(tenant, ref):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


@app.command("verify")
def verify(
    tenant: str = typer.Option(..., "--tenant", help="Tenant (company) id."),
    lead: str = typer.Option(..., "--lead", help="Id of the erased lead."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Also fail while copies await their known removal (compaction, retention).",
    ),
    changelog: bool = typer.Option(
        True, "--changelog/--no-changelog", help="Read the state changelog (all of it)."
    ),
    scan_events: bool = typer.Option(
        False, "--scan-events", help="Also read every event topic for the lead's raw events."
    ),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Report, per store Sluice controls, whether anything still names the lead.

    Exit 1 when something does (the OLAP tables, a worker's state, the changelog's latest
    values), when the lead is not in the erasure registry, or when a copy outlived the
    bound of its removal; copies awaiting compaction or retention are reported with the
    time they are gone by (``--strict`` fails on those too).
    """
    from sluice import privacy as p

    if fmt not in {"table", "json"}:
        raise fail(f"--format must be table or json (got {fmt!r})", code=2)
    s = settings()
    ref = p.lead_ref(tenant, lead)
    findings: list[p.Finding] = []
    registry = _registry(s, tenant, ref, findings)
    findings += _olap(s, tenant, ref)
    findings.append(_worker_state(s, tenant, lead))
    if changelog:
        findings += _changelog(s, tenant, lead)
    findings += _dead_letters(s, tenant, lead)
    findings.append(_event_topics(s, tenant, lead) if scan_events else _raw_events_note())
    if registry is not None:
        findings += _outcomes(registry, tenant, ref)
    failed = [f for f in findings if f.fails or (strict and f.status == p.AWAITING)]
    if fmt == "json":
        out.print_json(
            json.dumps(
                {
                    "tenant": tenant,
                    "ref": ref,
                    "ok": not failed,
                    "findings": [f.__dict__ for f in findings],
                }
            )
        )
    else:
        table = Table("store", "status", "count", "detail", "gone by")
        colors = {
            p.GONE: "green",
            p.KEPT: "cyan",
            p.UNLINKABLE: "cyan",
            p.AWAITING: "yellow",
            p.UNCHECKED: "yellow",
        }
        for f in findings:
            color = colors.get(f.status, "red")
            until = ms_iso(f.until) if f.until is not None else ""
            table.add_row(f.store, f"[{color}]{f.status}[/]", str(f.count or ""), f.detail, until)
        out.print(table)
        verdict = "nothing Sluice controls names the lead" if not failed else "NOT erased"
        out.print(
            f"{tenant} / lead reference {ref}: {verdict}"
            + (f" ({len(failed)} finding(s))" if failed else ""),
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)


# -- the stores ------------------------------------------------------------------------


def _registry(s: Any, tenant: str, ref: str, findings: list) -> Any:
    from sluice import privacy as p
    from topics.catalog import Catalog

    errors = KafkaClientErrors()
    try:
        registry, _ = p.read_registry(
            errors.config(s), Catalog.from_settings(s).erasures.name, timeout=s.kafka_timeout_s
        )
    except Exception as exc:
        raise fail(f"cannot read the erasure registry: {errors.describe(exc)}") from None
    erasure = registry.get(tenant, ref)
    if erasure is None:
        findings.append(p.Finding("registry", p.HELD, "the lead was never erased"))
        return registry
    findings.append(
        p.Finding(
            "registry",
            p.KEPT,
            f"erased (requested {ms_iso(erasure.requested_at)}, event {erasure.event_id}); "
            "kept for good so nothing brings the lead back",
        )
    )
    return registry


class _Reader:
    """The OLAP through ``sluice olap query``'s path (the worker for chDB, else direct)."""

    def __init__(self, s: Any) -> None:
        self.s = s

    def query(self, sql: str) -> tuple[list[str], list]:
        from cli.olap import read

        return read(self.s, sql)


def _olap(s: Any, tenant: str, ref: str) -> list:
    from sluice import privacy as p
    from sluice.olap.erasure import find

    try:
        found = find(_Reader(s), tenant, ref)
    except (typer.Exit, Exception) as exc:
        return [p.Finding("olap", p.UNCHECKED, f"cannot read the OLAP store: {exc}")]
    out_ = [
        p.Finding(f"olap {t}", p.HELD, "rows of the lead", n) for t, n in sorted(found.rows.items())
    ] or [p.Finding("olap", p.GONE, "no row of a lead table names the lead")]
    out_ += [
        p.Finding(f"olap {t}", p.KEPT, "compliance records naming the lead (kept by law)", n)
        for t, n in sorted(found.records.items())
    ]
    return out_


def _worker_state(s: Any, tenant: str, lead: str) -> Any:
    from sluice import privacy as p
    from sluice.settings import PRIVACY_VERIFY_PATH

    body = json.dumps({"tenant": tenant, "lead": lead}).encode()
    try:
        report = call_worker(s, PRIVACY_VERIFY_PATH, body, timeout=120)
    except WorkerUnreachable:
        return p.Finding(
            "worker state", p.UNCHECKED, "no worker answered: its state is in the changelog"
        )
    holds = report.get("holds") or {}
    if holds:
        kinds = sorted({k for found in holds.values() for k in found})
        detail = f"partitions {', '.join(sorted(holds))} hold {', '.join(kinds)}"
        return p.Finding("worker state", p.HELD, detail, sum(map(len, holds.values())))
    if report.get("olap_purge_pending"):
        return p.Finding("worker state", p.HELD, "the OLAP purge is still pending")
    parts = ", ".join(map(str, report.get("partitions") or [])) or "none"
    return p.Finding("worker state", p.GONE, f"nothing names the lead (partitions {parts})")


def _changelog(s: Any, tenant: str, lead: str) -> list:
    from sluice import privacy as p
    from sluice.kafka import ranges, read_ranges
    from topics.catalog import COMPACTION_LAG_MS, TOMBSTONE_RETENTION_MS, Catalog

    errors = KafkaClientErrors()
    conf = errors.config(s)
    scan = p.ChangelogScan(tenant, lead)
    try:
        topic = Catalog.from_settings(s).changelog.name
        for batch in read_ranges(conf, ranges(conf, [topic], timeout=s.kafka_timeout_s)):
            for msg in batch:
                raw = msg.key()
                try:
                    key_text = json.loads(raw) if raw else ""
                    key = json.loads(key_text) if isinstance(key_text, str) else key_text
                    value = json.loads(msg.value()) if msg.value() is not None else None
                except ValueError:
                    continue
                scan.add(
                    str(key_text), key if isinstance(key, list) else [], value, msg.timestamp()[1]
                )
    except Exception as exc:
        return [p.Finding("changelog", p.UNCHECKED, f"cannot read it: {errors.describe(exc)}")]
    return scan.findings(_now(), COMPACTION_LAG_MS, TOMBSTONE_RETENTION_MS)


def _dead_letters(s: Any, tenant: str, lead: str) -> list:
    from avro_schemas.codec import Codec, DecodeError
    from sinks.pii import lead_of
    from sluice import privacy as p
    from sluice.dlq import read_dead_letters
    from topics.catalog import Catalog

    errors = KafkaClientErrors()
    spec = Catalog.from_settings(s).dlq
    try:
        letters = read_dead_letters(errors.config(s), spec.name, timeout=s.kafka_timeout_s)
    except Exception as exc:
        return [p.Finding("dead letters", p.UNCHECKED, f"cannot read them: {errors.describe(exc)}")]
    codec = Codec(settings=s)
    families = Catalog.from_settings(s).families()
    named, maybe, until = 0, 0, 0
    for letter in letters:
        family = families.get(letter.source_topic or "")
        try:
            event = codec.decode(letter.value, family) if family else None
        except DecodeError:
            event = None
        if event is not None:
            hit = event.get("tenant_id") == tenant and lead_of(event) == lead
        else:  # undecodable: the raw bytes may still spell the lead
            hit = tenant.encode() in letter.value and lead.encode() in letter.value
            maybe += hit
        if hit:
            named += 1
            until = max(until, (letter.failed_at or _now()) + (spec.retention_ms or 0))
    if not named:
        return [p.Finding("dead letters", p.GONE, f"none of {len(letters)} names the lead")]
    detail = "dead letters naming the lead (Kafka deletes them with their segment)"
    if maybe:
        detail += f"; {maybe} undecodable but holding its id"
    status = p.OVERDUE if _now() > until else p.AWAITING
    return [p.Finding("dead letters", status, detail, named, until)]


def _raw_events_note() -> Any:
    from sluice import privacy as p
    from topics.catalog import Catalog

    days = (Catalog().for_family("email").retention_ms or 0) / 86_400_000
    return p.Finding(
        "event topics",
        p.AWAITING,
        f"not scanned (--scan-events): raw events stay until {days:g} days after each was "
        "appended, whatever their lead",
    )


def _event_topics(s: Any, tenant: str, lead: str) -> Any:
    from avro_schemas.codec import Codec, DecodeError
    from sinks.pii import lead_of
    from sluice import privacy as p
    from sluice.kafka import ranges, read_ranges
    from topics.catalog import Catalog

    catalog = Catalog.from_settings(s)
    families = catalog.families()
    errors = KafkaClientErrors()
    conf = errors.config(s)
    codec = Codec(settings=s)
    named, last = 0, 0
    try:
        for batch in read_ranges(conf, ranges(conf, list(families), timeout=s.kafka_timeout_s)):
            for msg in batch:
                try:
                    event = codec.decode(msg.value() or b"", families[msg.topic()])
                except DecodeError:
                    continue
                if event["tenant_id"] == tenant and lead_of(event) == lead:
                    named += 1
                    last = max(last, msg.timestamp()[1])
    except Exception as exc:
        return p.Finding("event topics", p.UNCHECKED, f"cannot read them: {errors.describe(exc)}")
    if not named:
        return p.Finding("event topics", p.GONE, "no raw event names the lead")
    until = last + (catalog.for_family("email").retention_ms or 0)
    status = p.OVERDUE if _now() > until else p.AWAITING
    return p.Finding(
        "event topics", status, "raw events of the lead (until retention)", named, until
    )


def _outcomes(registry: Any, tenant: str, ref: str) -> list:
    from sluice import privacy as p

    found = []
    for o in registry.outcomes_of(tenant, ref):
        extra = ", ".join(f"{k} {v}" for k, v in sorted(o.detail.items()))
        found.append(
            p.Finding(
                o.destination,
                p.UNLINKABLE,
                f"{o.scope}: secret destroyed; deletion {o.status} at {ms_iso(o.at)}"
                + (f" ({extra})" if extra else ""),
            )
        )
    return found


def _now() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)
