"""PostHog sink: behavioural, business and admin-UI events as PostHog events.

Delivery guarantee
    At least once. A batch is durable when PostHog's ``/batch/`` endpoint answered 2xx;
    only then does the worker acknowledge the events to Kafka. Redelivery after a crash
    re-sends them.
Idempotency key
    PostHog's ``uuid`` = the event's ``event_id`` (a non-UUID id is mapped to a stable
    UUIDv5), so PostHog deduplicates re-sent events.
Limits
    ``POSTHOG_BATCH_MAX`` events per request (1000; about 0.5 MB before gzip), up to
    ``SINK_MAX_IN_FLIGHT`` requests at once, a partial batch waits at most
    ``SINK_LINGER_S``. A refused batch (4xx) is split until the refused events are
    alone; those go to ``events.dlq`` (stage ``posthog``). 401/403/408/429/5xx and
    timeouts are retried with backoff (honouring ``Retry-After``).
No silent drops
    The SDK's ``capture()`` queues into a bounded in-memory queue (10,000) and drops
    when it is full, and costs ~43 µs per event. Sluice does not use that queue: it
    batches itself (bounded by the worker's backpressure) and posts each batch to
    PostHog's capture API (``POST <ingestion host>/batch/``, body ``{"api_key", "batch",
    "sent_at"}``, what the SDK's ``batch_post`` sends), serialized with orjson and
    gzipped at level 1: the SDK's own request layer gzips at level 9 and walks every
    value in Python, which measured 45 % of the worker's CPU at 16,000 events/s. Each
    event is serialized when it is buffered (the buffer holds its JSON, ~450 bytes, not
    a dict of ~1 KB and the decoded event behind it); a batch's body joins them. Every
    event is delivered, rejected to the DLQ, or sampled out, and each outcome is counted.
Hosts
    ``POSTHOG_HOST`` may name PostHog Cloud's app hosts, which serve the UI, not ingestion:
    ``app.posthog.com`` and ``us.posthog.com`` go to ``us.i.posthog.com``, ``eu.posthog.com``
    to ``eu.i.posthog.com`` (https, whatever path was pasted with them); any other host
    (self-hosted, a reverse proxy, a path prefix) is used as given (:func:`ingestion_url`).
    Sluice does this itself: the SDK's ``normalize_host`` stopped mapping app hosts in
    later releases (its ``determine_server_host`` does it now), and such a rename must not
    silently send events to a host that answers but does not ingest.
Nothing is imported from the posthog SDK
    Its wire format is PostHog's public capture API, written here; the SDK's helpers
    (``normalize_host``, ``USER_AGENT``, ``DatetimeSerializer``, ``EVENTS_ENDPOINT``)
    moved or changed meaning between releases. The SDK stays a dependency for the
    benchmark that measures its ``capture()`` (bench/).
PII
    Properties are allowlisted per event type and scrubbed (:mod:`sinks.pii`).
    ``distinct_id`` is the user, else ``tenant:<tenant_id>`` with person processing
    off; the tenant is the PostHog group ``tenant``. Sampling (:mod:`sinks.sampling`) is
    recorded in every event as ``sample_rate``.
Erased leads (docs/erasure.md)
    A lead's identifiers (``lead_id``, ``email_id``, ``recipient_email``, an admin
    action's ``target_id`` when its target is a lead) leave as pseudonyms under that
    lead's own secret (:class:`LeadSecrets`); an event of a lead without one (erased) is
    not sent at all. With ``POSTHOG_LEAD_PERSONS`` an email event's ``distinct_id`` is
    the lead's pseudonym, person processing on, so PostHog's person deletion can remove
    what Sluice sent: :class:`PostHogDeletion` asks it to when the lead is erased.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

from sinks.base import (
    BatchingSink,
    BatchLimits,
    Envelope,
    RetryPolicy,
    SinkObserver,
)
from sinks.http import in_thread, new_session, post
from sinks.pii import (
    LEAD_TARGET,
    POSTHOG_PROPERTIES,
    Builder,
    LeadPseudonyms,
    Pseudonymizer,
    Treatment,
    compile_allowlist,
    lead_of,
    lead_pseudonym,
)
from sinks.sampling import Sampler, keep
from sluice import __version__ as SLUICE_VERSION

NAME = "posthog"
BATCH_PATH = "/batch/"  # PostHog's capture API for several events in one request
US_INGESTION = "https://us.i.posthog.com"
EU_INGESTION = "https://eu.i.posthog.com"
DEFAULT_HOST = US_INGESTION
# PostHog Cloud hosts → where they ingest. The app hosts serve the UI and its API.
CLOUD_INGESTION: Mapping[str, str] = MappingProxyType(
    {
        "app.posthog.com": US_INGESTION,  # the former US app host
        "us.posthog.com": US_INGESTION,
        "us.i.posthog.com": US_INGESTION,
        "eu.posthog.com": EU_INGESTION,
        "eu.i.posthog.com": EU_INGESTION,
    }
)
_HEADERS = {"Content-Type": "application/json", "User-Agent": f"sluice/{SLUICE_VERSION}"}
GROUP_TYPE = "tenant"
_UUID_NAMESPACE = uuid.UUID("0d4f8e2a-6c1b-4a57-9a43-5e2f0c7b9d11")


def ingestion_url(host: str | None) -> str:
    """The ``/batch/`` URL for a configured ``POSTHOG_HOST`` (see the module docstring).

    Blank → US Cloud. A host without a scheme gets ``https://``. Cloud hosts, app or
    ingestion, always go to their region's ingestion host over https (a POST to
    ``http://`` is redirected, and a redirected POST loses its body). Anything else keeps
    its scheme, port and path prefix.
    """
    text = (host or "").strip()
    if not text:
        return DEFAULT_HOST + BATCH_PATH
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    cloud = CLOUD_INGESTION.get((parts.hostname or "").lower().rstrip("."))
    if cloud is not None and parts.port in (None, 80, 443):
        return cloud + BATCH_PATH
    base = urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))
    return base + BATCH_PATH


def _finite(value: Any) -> Any:
    """NaN and infinities → None, as orjson writes them (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One ``/batch/`` message as JSON bytes, to be held until its batch is sent.

    Copied to a buffer of its own size: orjson (3.12 and later) returns its working
    buffer, at least 4 KiB, for a message of ~450 bytes, and a sink holds tens of
    thousands of messages between checkpoints."""
    try:
        return bytes(memoryview(orjson.dumps(message)))  # NaN and infinity become null
    except TypeError:  # a value orjson does not take (an int past 64 bits, a non-str key)
        return json.dumps(_finite(message), default=str, allow_nan=False).encode()


def encode_batch(messages: Sequence[bytes], api_key: str, sent_at: str) -> bytes:
    """A ``/batch/`` body, ``{"batch", "sent_at", "api_key"}``, around messages already
    encoded by :func:`encode_message` (the same bytes as encoding the whole object)."""
    return b'{"batch":[%b],"sent_at":%b,"api_key":%b}' % (
        b",".join(messages),
        orjson.dumps(sent_at),
        orjson.dumps(api_key),
    )


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def posthog_uuid(event_id: str) -> str:
    """The event id if it is a UUID, else a stable UUIDv5 of it."""
    if _CANONICAL_UUID.fullmatch(event_id):
        return event_id  # the common case, without parsing (hot path)
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        return str(uuid.uuid5(_UUID_NAMESPACE, event_id))


_DAY_ISO: dict[int, str] = {}
_SECOND_ISO: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS." (recent ones)
_SECONDS_KEPT = 4_096


def iso_ms(epoch_ms: int) -> str:
    """``datetime.isoformat(timespec="milliseconds")`` in UTC, without a datetime per call
    (events come close together in time: the text up to the second is memoized)."""
    second, milli = divmod(epoch_ms, 1000)
    head = _SECOND_ISO.get(second)
    if head is None:
        day, rest = divmod(second, 86_400)
        date_part = _DAY_ISO.get(day)
        if date_part is None:
            date_part = datetime.fromtimestamp(day * 86_400, tz=UTC).date().isoformat()
            _DAY_ISO[day] = date_part
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        head = f"{date_part}T{hours:02d}:{minutes:02d}:{seconds:02d}."
        if len(_SECOND_ISO) >= _SECONDS_KEPT:
            _SECOND_ISO.clear()
        _SECOND_ISO[second] = head
    return f"{head}{milli:03d}+00:00"


_BUILDERS: dict[int, tuple[Mapping[str, Treatment], Builder]] = {}


def _properties_of(allow: Mapping[str, Treatment]) -> Builder:
    """The compiled :func:`sinks.pii.allowed_properties` of one allowlist (made once)."""
    found = _BUILDERS.get(id(allow))
    if found is None or found[0] is not allow:
        found = (allow, compile_allowlist(allow))
        if len(_BUILDERS) < 1_024:  # the allowlists are a handful of constants
            _BUILDERS[id(allow)] = found
    return found[1]


def lead_distinct_id(secret: bytes, lead: str) -> str:
    """The lead's PostHog ``distinct_id`` with ``POSTHOG_LEAD_PERSONS`` (= its pseudonym)."""
    return lead_pseudonym(secret, "lead_id", lead)


class LeadSecrets(Protocol):
    """Where the per-lead secrets live (the worker's state, :mod:`streams.erasure`)."""

    def secret(self, partition: int, tenant: str, lead: str) -> bytes | None:
        """The lead's secret; None when it has none (erased)."""


def to_posthog(
    event: Mapping[str, Any],
    allow: Mapping[str, Treatment],
    pseudo: Pseudonymizer,
    sample_rate: float = 1.0,
    lead_secret: bytes | None = None,
    lead_persons: bool = False,
) -> dict[str, Any]:
    """One decoded event → one PostHog batch message (pure).

    ``lead_secret``: the secret of the lead the event is about (without one, the lead's
    identifiers are left out); ``lead_persons``: an email event's person is its lead."""
    tenant = pseudo.scrub_repeated(event["tenant_id"])
    lead = LeadPseudonyms(lead_secret) if lead_secret is not None else None
    props = _properties_of(allow)(event, pseudo, lead)
    if event.get("target_type") == LEAD_TARGET and "target_id" in props:  # the lead's id
        if lead is None:
            del props["target_id"]
        else:
            props["target_id"] = lead("lead_id", str(event["target_id"]))
    props["tenant_id"] = tenant
    props["source"] = pseudo.scrub_repeated(event["source"])
    props["sample_rate"] = sample_rate
    props["$groups"] = {GROUP_TYPE: tenant}
    props["$geoip_disable"] = True  # the request IP is the worker's, never the user's
    props["$lib"] = "sluice"
    props["$lib_version"] = SLUICE_VERSION  # the version of $lib, not of PostHog's SDK
    user = event.get("user_id")
    if lead_persons and lead is not None and event.get("lead_id"):
        distinct_id = lead("lead_id", event["lead_id"])  # = lead_distinct_id()
    elif user:
        distinct_id = pseudo.scrub(user)
    else:
        # No person: a stable per-tenant id, and no person profile created for it.
        distinct_id = f"{GROUP_TYPE}:{tenant}"
        props["$process_person_profile"] = False
    return {
        "event": event["event_type"],
        "distinct_id": distinct_id,
        "uuid": posthog_uuid(event["event_id"]),
        "timestamp": iso_ms(event["occurred_at"]),
        "properties": props,
    }


class PostHogSink(BatchingSink):
    """Batches events to PostHog's ``/batch/`` endpoint (see the module docstring)."""

    def __init__(
        self,
        api_key: str,
        host: str,
        *,
        pseudonymizer: Pseudonymizer,
        sampler: Sampler | None = None,
        gzip: bool = True,
        timeout_s: float = 10.0,
        limits: BatchLimits | None = None,
        policy: RetryPolicy | None = None,
        observer: SinkObserver | None = None,
        lead_secrets: LeadSecrets | None = None,
        lead_persons: bool = False,
    ) -> None:
        """``lead_secrets``: the per-lead secrets (None: a lead's identifiers are left out
        of every event); ``lead_persons``: see the module docstring."""
        super().__init__(NAME, limits, policy, observer)
        self.api_key = api_key
        self.host = host
        self.gzip = gzip
        self.timeout_s = timeout_s
        self.pseudo = pseudonymizer
        self.sampler = sampler or Sampler()
        self.lead_secrets = lead_secrets
        self.lead_persons = lead_persons
        self.url = ingestion_url(host)  # where /batch/ goes (Cloud app hosts mapped)
        self._session = new_session()

    def prepare(self, envelope: Envelope) -> bytes | None:
        """The event's ``/batch/`` message, encoded (None: not sent, and why is counted)."""
        event = envelope.record
        event_type = event["event_type"]
        allow = POSTHOG_PROPERTIES.get(event_type)
        if allow is None:  # routed here without an allowlist: never send unvetted fields
            self.observer.skipped(self.name, event_type, "no_allowlist")
            return None
        rate = self.sampler.rate(event_type)
        if not keep(event["event_id"], rate):
            self.observer.skipped(self.name, event_type, "sampled_out")
            return None
        secret = None
        if self.lead_secrets is not None:
            lead = lead_of(event)
            if lead is not None:
                secret = self.lead_secrets.secret(envelope.partition, event["tenant_id"], lead)
                if secret is None:  # an erased lead: nothing of it leaves any more
                    self.observer.skipped(self.name, event_type, "erased_lead")
                    return None
        return encode_message(
            to_posthog(event, allow, self.pseudo, rate, secret, self.lead_persons)
        )

    async def send(self, items: list[Any]) -> None:
        await in_thread(self._post, items)

    def _post(self, items: list[bytes]) -> None:
        sent_at = datetime.now(tz=UTC).isoformat()
        post(
            self._session,
            self.url,
            encode_batch(items, self.api_key, sent_at),
            headers=_HEADERS,
            timeout=self.timeout_s,
            gzip=self.gzip,
        )


# PostHog Cloud's ingestion hosts → the host of its private API (persons, deletions).
CLOUD_API: Mapping[str, str] = MappingProxyType(
    {US_INGESTION: "https://us.posthog.com", EU_INGESTION: "https://eu.posthog.com"}
)


def private_api_host(host: str | None) -> str:
    """PostHog's private API host for a configured ``POSTHOG_HOST``: Cloud ingests at
    ``us.i.`` / ``eu.i.posthog.com`` and serves its API at ``us.`` / ``eu.posthog.com``;
    a self-hosted instance serves both at one address."""
    base = ingestion_url(host).removesuffix(BATCH_PATH)
    return CLOUD_API.get(base, base)


class PostHogDeletion:
    """Asks PostHog to delete an erased lead's person and every event Sluice sent for it.

    ``POST /api/projects/<project>/persons/bulk_delete/`` with ``distinct_ids`` and
    ``delete_events``, authorized by a personal API key with the ``person:write`` scope.
    PostHog queues the events' deletion (only events captured before the request); the
    answer says how many persons matched. Blocking: call it from a thread.
    """

    def __init__(
        self, personal_api_key: str, project_id: str, api_host: str, timeout_s: float = 10.0
    ) -> None:
        self.url = f"{api_host.rstrip('/')}/api/projects/{project_id}/persons/bulk_delete/"
        self._headers = {
            **_HEADERS,
            "Authorization": f"Bearer {personal_api_key}",
        }
        self.timeout_s = timeout_s
        self._session = new_session()

    def delete(self, distinct_ids: Sequence[str]) -> dict[str, Any]:
        """Request the deletion; the answer as JSON (raises a :mod:`sinks.base` error)."""
        body = orjson.dumps({"distinct_ids": list(distinct_ids), "delete_events": True})
        response = post(
            self._session, self.url, body, headers=self._headers, timeout=self.timeout_s
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return answer if isinstance(answer, dict) else {}
