"""Where every event goes: the routing table (data) and the pure function applying it.

The table applies the spec's design-rules checklist (seed §5) to DESIGN §2's taxonomy:

* behavioural, UX, experimental → product analytics (``posthog``);
* infra / ops / query telemetry → observability (``observability``: OTel metrics);
* security → ``siem`` in full detail, plus the narrow OLAP record of sensitive access;
* billing, contracts, customer-facing analytics → OLAP aggregates (``rollups``);
* compliance actions → ``audit_log`` (one OLAP row each), and ``siem`` when they are
  security-sensitive; low-risk admin actions and admin UI events never reach it;
* curated incidents → ``system_events``.

Destinations are of two kinds. *Sinks* are external systems fed by :mod:`sinks` through
:class:`Router`; *OLAP destinations* are written by the engine (:mod:`streams.engine`) at
checkpoints. Both are listed here so that one screen answers "where does X go?".
Unknown event types never get here: the codec dead-letters them at decode.

A destination that refuses Sluice for good (401/403: a revoked key) stops its route,
loudly: :data:`ON_REFUSED` says how (see :class:`Router` and docs/sinks.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from sinks.base import (
    DESTINATION_REFUSED,
    REFUSED,
    Envelope,
    Rejected,
    Sink,
    SinkRefused,
    SinkState,
    SinkUnavailable,
)
from streams.compliance import sensitive_kind
from topics.taxonomy import COMPLIANCE_ACTIONS

log = logging.getLogger("sluice.routing")

# -- destinations ---------------------------------------------------------------------
POSTHOG = "posthog"
OBSERVABILITY = "observability"
SIEM = "siem"
SINKS: frozenset[str] = frozenset({POSTHOG, OBSERVABILITY, SIEM})

ROLLUPS = "rollups"  # *_analytics aggregates
AUDIT_LOG = "audit_log"  # admin_audit_log: one row per compliance action
SENSITIVE_ACCESS = "sensitive_access"  # the narrow sensitive-data-access record
SYSTEM_EVENTS = "system_events"  # admin_system_events: one row per incident
OLAP_DESTINATIONS: frozenset[str] = frozenset({ROLLUPS, AUDIT_LOG, SENSITIVE_ACCESS, SYSTEM_EVENTS})

DESTINATIONS: frozenset[str] = SINKS | OLAP_DESTINATIONS


@dataclass(frozen=True)
class To:
    """One destination of a route, optionally only when a (named, pure) predicate holds."""

    destination: str
    when: Callable[[Mapping[str, Any]], bool] | None = None

    def applies(self, event: Mapping[str, Any]) -> bool:
        return self.when is None or self.when(event)


def sensitive(event: Mapping[str, Any]) -> bool:
    """Sensitive-data access or a PII export: the rule lives with its record (compliance)."""
    return sensitive_kind(event) is not None


def _to(*destinations: str | To) -> tuple[To, ...]:
    return tuple(d if isinstance(d, To) else To(d) for d in destinations)


# -- the table ------------------------------------------------------------------------
_EMAIL = _to(POSTHOG, ROLLUPS)
_WARMUP = _to(ROLLUPS)
_SECURITY = _to(SIEM)
_INFRA = _to(OBSERVABILITY)
_BUSINESS = _to(POSTHOG, ROLLUPS)
_PRODUCT = _to(POSTHOG)  # admin UI and low-risk admin actions: product analytics only
_COMPLIANCE = _to(AUDIT_LOG)
_COMPLIANCE_SECURITY = _to(AUDIT_LOG, SIEM)
_EXPORT = _to(AUDIT_LOG, SIEM, SENSITIVE_ACCESS)  # PII exports: also the narrow record

ROUTES: Mapping[str, tuple[To, ...]] = MappingProxyType(
    {
        "email_sent": _EMAIL,
        "email_delivered": _EMAIL,
        "email_opened": _EMAIL,
        "email_clicked": _EMAIL,
        "email_replied": _EMAIL,
        "email_bounced": _EMAIL,
        "email_unsubscribed": _EMAIL,
        "email_spam_complaint": _EMAIL,
        "warmup_email_sent": _WARMUP,
        "warmup_email_landed": _WARMUP,
        "warmup_email_replied": _WARMUP,
        "security_login_succeeded": _SECURITY,
        "security_login_failed": _SECURITY,
        "security_suspicious_activity": _SECURITY,
        "security_data_access": _to(SIEM, To(SENSITIVE_ACCESS, when=sensitive)),
        "infra_connection_pool_metrics": _INFRA,
        "infra_error_rate": _INFRA,
        "infra_latency": _INFRA,
        "infra_health_check": _INFRA,
        "infra_autoscaling": _INFRA,
        "infra_alert": _to(OBSERVABILITY, SYSTEM_EVENTS),  # alert storms → one incident row
        "query_executed": _INFRA,
        "system_incident_opened": _to(SYSTEM_EVENTS),
        "system_incident_resolved": _to(SYSTEM_EVENTS),
        "system_maintenance_completed": _to(SYSTEM_EVENTS),
        "business_signup": _BUSINESS,
        "business_upgrade": _BUSINESS,
        "business_downgrade": _BUSINESS,
        "business_churn": _BUSINESS,
        "admin_ui_viewed": _PRODUCT,
        "admin_button_clicked": _PRODUCT,
        "admin_filter_changed": _PRODUCT,
        "admin_session_keepalive": _PRODUCT,
        "admin_setting_toggled": _PRODUCT,
        "admin_record_viewed": _PRODUCT,
        "admin_role_changed": _COMPLIANCE_SECURITY,
        "admin_permission_changed": _COMPLIANCE_SECURITY,
        "admin_tenant_config_changed": _COMPLIANCE,
        "admin_billing_changed": _COMPLIANCE,
        "admin_subscription_changed": _COMPLIANCE,
        "admin_data_export_requested": _EXPORT,
        "admin_data_export_approved": _EXPORT,
        "admin_impersonation_started": _COMPLIANCE_SECURITY,
        "admin_account_locked": _COMPLIANCE_SECURITY,
        "admin_account_deleted": _COMPLIANCE_SECURITY,
        # The audit row is the record of the erasure; not the SIEM: its archives are
        # beyond Sluice's reach, so sending it there would copy the erased lead's id to a
        # store no erasure can reach (docs/erasure.md).
        "admin_lead_erasure_requested": _COMPLIANCE,
    }
)

#: Admin events that must never reach the audit log (spec §2.1, §3.1).
NEVER_AUDITED: frozenset[str] = frozenset(
    t for t in ROUTES if t.startswith("admin_") and t not in COMPLIANCE_ACTIONS
)


# -- the pure functions -----------------------------------------------------------------
def route(event: Mapping[str, Any]) -> frozenset[str]:
    """Every destination of one decoded event (KeyError for a type outside the table)."""
    return frozenset(t.destination for t in ROUTES[event["event_type"]] if t.applies(event))


def possible_destinations(event_type: str) -> frozenset[str]:
    """Every destination an event of this type can reach, whatever its fields."""
    return frozenset(t.destination for t in ROUTES[event_type])


def _static_sink_targets(event_type: str) -> tuple[str, ...] | None:
    tos = [t for t in ROUTES[event_type] if t.destination in SINKS]
    if any(t.when is not None for t in tos):
        return None  # depends on the event's fields
    return tuple(sorted(t.destination for t in tos))


# Precomputed per type: the worker asks once per event on its hot path.
_SINK_TARGETS: Mapping[str, tuple[str, ...] | None] = {t: _static_sink_targets(t) for t in ROUTES}


def sink_targets(event: Mapping[str, Any]) -> tuple[str, ...]:
    """The external sinks (not the OLAP) one event goes to."""
    static = _SINK_TARGETS[event["event_type"]]
    return static if static is not None else tuple(sorted(route(event) & SINKS))


# -- what a route does while its destination refuses Sluice -----------------------------
#: Hold the sink's events: nothing is committed while it holds any, so the worker stops
#: consuming at its pending limit (every route stalls, Kafka keeps the events). Resumes
#: by itself when a probe is accepted; nothing to replay.
PAUSE = "pause"
#: Hand the sink's events to ``events.dlq`` (reason ``destination_refused``) at each
#: checkpoint, so every other route (OLAP rollups, audit, the other sinks) flows on; the
#: events are re-sent by ``sluice dlq replay --reason destination_refused`` once fixed.
DEAD_LETTER = "dead_letter"
ON_REFUSED: frozenset[str] = frozenset({PAUSE, DEAD_LETTER})


@dataclass
class _Refusal:
    """What a refused route did, for its reports (one line per interval, not per request)."""

    since: float  # epoch seconds: when the sink was found refused
    reported: float | None = None  # monotonic: the last report line (None: none yet)
    dead_lettered: int = 0  # events handed to the DLQ since the refusal began


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- applying it: fan events out to the configured sinks ---------------------------------
class Router:
    """Hands each decoded event to the sinks the table names; flushes them all at once.

    A destination without a configured sink (e.g. no PostHog key) is skipped and counted,
    so a deployment with nothing configured still runs (the OLAP path needs no sink).

    A sink whose destination refuses Sluice for good (:class:`sinks.base.SinkRefused`)
    stops its route as ``on_refused`` says (per sink: ``on_refused_by_sink``):
    :data:`DEAD_LETTER` (the default) or :data:`PAUSE`. Either way the router reports it:
    one ERROR line when it starts, one per ``report_every_s`` while it lasts, one WARNING
    when the destination accepts again; :meth:`states` for ``/sluice/status/``.
    """

    def __init__(
        self,
        sinks: Mapping[str, Sequence[Sink]],
        on_routed: Callable[[str, int], None] | None = None,
        *,
        on_refused: str = DEAD_LETTER,
        on_refused_by_sink: Mapping[str, str] | None = None,
        report_every_s: float = 60.0,
    ) -> None:
        unknown = set(sinks) - SINKS
        if unknown:
            raise ValueError(f"no such sink destination(s): {sorted(unknown)}")
        by_sink = dict(on_refused_by_sink or {})
        bad = {p for p in (on_refused, *by_sink.values()) if p not in ON_REFUSED}
        if bad:
            raise ValueError(f"on_refused must be one of {sorted(ON_REFUSED)}, got {sorted(bad)}")
        self.sinks: dict[str, tuple[Sink, ...]] = {d: tuple(s) for d, s in sinks.items() if s}
        self.unconfigured: dict[str, int] = {}
        self._on_routed = on_routed
        # Rejects of a flush whose checkpoint later failed: handed out again next time.
        self._rejected: list[Rejected] = []
        self._on_refused = on_refused
        self._on_refused_by_sink = by_sink
        self._report_every_s = report_every_s
        self._refusals: dict[str, _Refusal] = {}  # sink name → its refused route's report

    @property
    def all_sinks(self) -> list[Sink]:
        return [s for group in self.sinks.values() for s in group]

    async def start(self) -> None:
        for sink in self.all_sinks:
            await sink.start()

    def add(self, envelope: Envelope) -> None:
        """Route one event to its sinks' buffers (never blocks, never sends)."""
        for dest in sink_targets(envelope.record):
            group = self.sinks.get(dest)
            if group is None:
                self.unconfigured[dest] = self.unconfigured.get(dest, 0) + 1
                continue
            for sink in group:
                sink.write((envelope,))
                if self._on_routed is not None:
                    self._on_routed(sink.name, 1)

    def write(self, envelopes: Iterable[Envelope]) -> None:
        """Route a batch of events to their sinks' buffers (never blocks, never sends)."""
        per_sink: dict[str, list[Envelope]] = {}
        for env in envelopes:
            for dest in sink_targets(env.record):
                per_sink.setdefault(dest, []).append(env)
        for dest, batch in per_sink.items():
            group = self.sinks.get(dest)
            if group is None:
                self.unconfigured[dest] = self.unconfigured.get(dest, 0) + len(batch)
                continue
            for sink in group:
                sink.write(batch)
                if self._on_routed is not None:
                    self._on_routed(sink.name, len(batch))

    def unrouted(self, records: Iterable[Mapping[str, Any]]) -> None:
        """No sink is configured: count, per destination, the events that would have gone
        there (the status's ``unconfigured``) without an :class:`Envelope` per event."""
        counts = self.unconfigured
        for record in records:
            for dest in sink_targets(record):
                counts[dest] = counts.get(dest, 0) + 1

    def on_refused(self, sink: str) -> str:
        """What the route of this sink does while its destination refuses Sluice."""
        return self._on_refused_by_sink.get(sink, self._on_refused)

    async def flush(self) -> list[Rejected]:
        """Flush every sink concurrently; return the events some sink refused for good.

        Raises :class:`SinkUnavailable` if any sink could not flush: then nothing of the
        checkpoint may be acknowledged. Sinks that did flush keep nothing to resend. A
        refused sink whose route dead-letters counts as flushed: its events come back
        as rejected, reason ``destination_refused``.
        """
        sinks = self.all_sinks
        results = await asyncio.gather(*(self._flush(s) for s in sinks), return_exceptions=True)
        failures: list[str] = []
        for sink, result in zip(sinks, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, SinkUnavailable):
                    log.exception("sink %s failed to flush", sink.name, exc_info=result)
                failures.append(f"{sink.name}: {result}")
            else:
                self._rejected.extend(result)
            self._report(sink, sink.state())
        if failures:
            raise SinkUnavailable("; ".join(failures))
        rejected, self._rejected = self._rejected, []
        return rejected

    async def _flush(self, sink: Sink) -> list[Rejected]:
        try:
            return await sink.flush()
        except SinkRefused:
            if self.on_refused(sink.name) != DEAD_LETTER:
                raise  # paused: the checkpoint fails, the events stay buffered
            # No await between the refused flush and park(): nothing is in flight, so
            # every buffered event is handed over exactly once.
            parked = sink.park()
            refusal = self._refusals.setdefault(sink.name, _Refusal(sink.state().since))
            refusal.dead_lettered += sum(r.reason == DESTINATION_REFUSED for r in parked)
            return parked

    def held(self) -> list[str]:
        """Sinks whose paused route holds the checkpoint now: refused, ``pause``, holding
        events, no probe due. Nothing can be committed until such a destination accepts
        again, so the worker fails the checkpoint before its snapshot (no work for
        nothing, no busy loop); once a probe is due one checkpoint goes through to try.
        Reports refused routes too (rate-limited): no flush runs while one is held.
        """
        held: list[str] = []
        for sink in self.all_sinks:
            state = sink.state()
            self._report(sink, state)
            if (
                state.state == REFUSED
                and self.on_refused(sink.name) == PAUSE
                and not state.probe_due
                and sink.buffered()
            ):
                held.append(sink.name)
        return held

    def states(self) -> dict[str, dict[str, Any]]:
        """Per sink: its :class:`SinkState`, its route's ``on_refused`` and the events that
        route dead-lettered since its destination began refusing (``/sluice/status/``)."""
        out: dict[str, dict[str, Any]] = {}
        for sink in self.all_sinks:
            refusal = self._refusals.get(sink.name)
            out[sink.name] = {
                **sink.state().as_dict(),
                "on_refused": self.on_refused(sink.name),
                "dead_lettered_while_refused": refusal.dead_lettered if refusal else 0,
            }
        return out

    def _report(self, sink: Sink, state: SinkState) -> None:
        """One line when a refusal starts, one per interval while it lasts, one at its end."""
        name, policy = sink.name, self.on_refused(sink.name)
        refusal = self._refusals.get(name)
        if state.state != REFUSED:
            if refusal is not None:
                del self._refusals[name]
                log.warning(
                    "sink %s: its destination accepts again (refused since %s); %s",
                    name,
                    _iso(refusal.since),
                    f"{refusal.dead_lettered} event(s) were dead-lettered meanwhile: re-send "
                    f"them with `sluice dlq replay --reason {DESTINATION_REFUSED}`"
                    if policy == DEAD_LETTER
                    else "the held events are being delivered",
                )
            return
        if refusal is None:
            refusal = self._refusals[name] = _Refusal(state.since)
        now = time.monotonic()
        if refusal.reported is not None and now - refusal.reported < self._report_every_s:
            return
        first, refusal.reported = refusal.reported is None, now
        if policy == DEAD_LETTER:
            action = (
                f"route dead-lettered ({DEAD_LETTER}): {refusal.dead_lettered} event(s) to "
                f"events.dlq so far, reason {DESTINATION_REFUSED}; the other routes flow"
            )
        else:
            action = (
                f"route paused ({PAUSE}): {sink.buffered()} event(s) held, nothing committed; "
                "the worker stops consuming at its pending limit"
            )
        wait = state.next_probe_in_s or 0.0
        log.error(
            "sink %s: its destination %srefuses Sluice since %s (%s%s; %d request(s) "
            "refused); %s; %s",
            name,
            "" if first else "still ",
            _iso(refusal.since),
            state.reason,
            f": {state.detail}" if state.detail else "",
            state.refused_requests,
            action,
            # the probe is a real batch: without events there is nothing to probe with
            f"next probe in {wait:.0f}s" if wait > 0 else "it probes with its next events",
        )

    def restore_rejected(self, rejected: Iterable[Rejected]) -> None:
        """The checkpoint failed after a flush: dead-letter these on the next one."""
        self._rejected[:0] = list(rejected)

    def forget(self, tps: set[tuple[str, int]]) -> None:
        """Drop buffered events of revoked partitions: their next owner routes them again."""
        for sink in self.all_sinks:
            sink.forget(tps)
        self._rejected = [
            r for r in self._rejected if (r.envelope.topic, r.envelope.partition) not in tps
        ]

    def buffered(self) -> dict[str, int]:
        return {s.name: s.buffered() for s in self.all_sinks}

    def backlogged(self, limit: int) -> str | None:
        """The first sink holding more than ``limit`` events in sealed batches and still
        sending (None if none): the hot loop waits for it (see ``SINK_MAX_BUFFERED``).
        The open batch does not count: nothing seals it while the reader waits. A refused
        sink is not waited for: it sends nothing before its next probe, and its route's
        events are dead-lettered or held by the checkpoint (held ones stop the reader at
        the pending limit)."""
        for sink in self.all_sinks:
            if sink.unsent() > limit and sink.state().state != REFUSED:
                return sink.name
        return None

    async def close(self) -> None:
        for sink in self.all_sinks:
            try:
                await sink.close()
            except Exception:  # closing must not stop the others from closing
                log.exception("closing sink %s failed", sink.name)
