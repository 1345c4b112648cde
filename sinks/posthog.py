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
    batches itself (bounded by the worker's backpressure) and posts each batch through
    the SDK's request layer (``posthog.request.batch_post``). Every event is delivered,
    rejected to the DLQ, or sampled out, and each outcome is counted.
PII
    Properties are allowlisted per event type and scrubbed (:mod:`sinks.pii`).
    ``distinct_id`` is the user, else ``tenant:<tenant_id>`` with person processing
    off; the tenant is the PostHog group ``tenant``. Sampling (:mod:`sinks.sampling`) is
    recorded in every event as ``sample_rate``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import requests
from posthog.request import APIError, batch_post
from posthog.version import VERSION as POSTHOG_SDK_VERSION

from sinks.base import (
    BatchingSink,
    BatchLimits,
    Envelope,
    RetryPolicy,
    SinkObserver,
    TransientError,
)
from sinks.http import in_thread, raise_for_status
from sinks.pii import POSTHOG_PROPERTIES, Pseudonymizer, Treatment, allowed_properties
from sinks.sampling import Sampler, keep

NAME = "posthog"
GROUP_TYPE = "tenant"
_UUID_NAMESPACE = uuid.UUID("0d4f8e2a-6c1b-4a57-9a43-5e2f0c7b9d11")


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def posthog_uuid(event_id: str) -> str:
    """The event id if it is a UUID, else a stable UUIDv5 of it."""
    if _CANONICAL_UUID.fullmatch(event_id):
        return event_id  # the common case, without parsing (hot path)
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        return str(uuid.uuid5(_UUID_NAMESPACE, event_id))


def iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def to_posthog(
    event: Mapping[str, Any],
    allow: Mapping[str, Treatment],
    pseudo: Pseudonymizer,
    sample_rate: float = 1.0,
) -> dict[str, Any]:
    """One decoded event → one PostHog batch message (pure)."""
    tenant = pseudo.scrub(event["tenant_id"])
    props = allowed_properties(event, allow, pseudo)
    props.update(
        {
            "tenant_id": tenant,
            "source": pseudo.scrub(event["source"]),
            "sample_rate": sample_rate,
            "$groups": {GROUP_TYPE: tenant},
            "$geoip_disable": True,  # the request IP is the worker's, never the user's
            "$lib": "sluice",
            "$lib_version": POSTHOG_SDK_VERSION,
        }
    )
    user = event.get("user_id")
    if user:
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
    ) -> None:
        super().__init__(NAME, limits, policy, observer)
        self.api_key = api_key
        self.host = host
        self.gzip = gzip
        self.timeout_s = timeout_s
        self.pseudo = pseudonymizer
        self.sampler = sampler or Sampler()

    def prepare(self, envelope: Envelope) -> dict[str, Any] | None:
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
        return to_posthog(event, allow, self.pseudo, rate)

    async def send(self, items: list[Any]) -> None:
        await in_thread(self._post, items)

    def _post(self, items: list[dict[str, Any]]) -> None:
        try:
            batch_post(
                self.api_key, host=self.host, gzip=self.gzip, timeout=self.timeout_s, batch=items
            )
        except APIError as exc:
            status = exc.status if isinstance(exc.status, int) else 0
            if status == 0:
                raise TransientError("api_error", str(exc.status)) from None
            raise_for_status(status, exc.retry_after, str(exc.message)[:300])
        except requests.Timeout:
            raise TransientError("timeout") from None
        except requests.RequestException as exc:
            raise TransientError("connection", type(exc).__name__) from None
