"""Which sinks run, built from settings: a sink is on when its endpoint (and key) is set.

With nothing configured the worker runs with no sinks (the OLAP path needs none); events
routed to a destination without a sink are counted as unconfigured, not failed.
"""

from __future__ import annotations

import logging

from sinks.base import BatchLimits, RetryPolicy, Sink, SinkObserver
from sinks.observability import ObservabilitySink
from sinks.pii import Pseudonymizer
from sinks.posthog import LeadSecrets, PostHogDeletion, PostHogSink, private_api_host
from sinks.sampling import Sampler
from sinks.siem import EcsDocuments, HecSink, SyslogSink, tls_context
from sluice.settings import Settings

log = logging.getLogger("sluice.sinks")


def parse_headers(value: str | None) -> dict[str, str]:
    """``k1=v1,k2=v2`` (the OTEL_EXPORTER_OTLP_HEADERS format) → a dict."""
    headers: dict[str, str] = {}
    for part in (value or "").split(","):
        key, sep, val = part.partition("=")
        if sep and key.strip():
            headers[key.strip()] = val.strip()
    return headers


def build_sinks(
    settings: Settings,
    observer: SinkObserver | None = None,
    lead_secrets: LeadSecrets | None = None,
) -> dict[str, list[Sink]]:
    """Destination name (see :mod:`streams.routing`) → the sinks serving it.

    ``lead_secrets``: the worker's per-lead secrets (PostHog pseudonyms, docs/erasure.md)."""
    s = settings
    policy = RetryPolicy(
        initial_s=s.sink_retry_initial_s,
        max_s=s.sink_retry_max_s,
        refused_after_s=s.sink_refused_after_s,
        refused_probe_s=s.sink_refused_probe_s,
    )

    def limits(max_events: int) -> BatchLimits:
        return BatchLimits(
            max_events, s.sink_linger_s, s.sink_max_in_flight, s.sink_flush_deadline_s
        )

    timeout = s.sink_timeout_s
    sinks: dict[str, list[Sink]] = {}
    if s.posthog_api_key is not None and s.posthog_api_key.get_secret_value():
        key = s.pii_hmac_key.get_secret_value().encode() if s.pii_hmac_key else None
        if key is None:
            log.warning(
                "PII_HMAC_KEY is not set: emails, IPs and free text are removed, not pseudonymized"
            )
        sinks["posthog"] = [
            PostHogSink(
                s.posthog_api_key.get_secret_value(),
                s.posthog_host,
                pseudonymizer=Pseudonymizer(key),
                sampler=Sampler(s.posthog_sample_rates),
                gzip=s.posthog_gzip,
                limits=limits(s.posthog_batch_max),
                timeout_s=timeout,
                policy=policy,
                observer=observer,
                lead_secrets=lead_secrets,
                lead_persons=s.posthog_lead_persons,
            )
        ]
    url = s.otlp_metrics_url()
    if url:
        headers = parse_headers(
            s.otel_exporter_otlp_headers.get_secret_value()
            if s.otel_exporter_otlp_headers
            else None
        )
        sinks["observability"] = [
            ObservabilitySink(
                url,
                service_name=s.otel_service_name,
                headers=headers,
                limits=limits(10_000),
                timeout_s=timeout,
                policy=policy,
                observer=observer,
            )
        ]
    siem: list[Sink] = []
    documents = EcsDocuments()  # both SIEM transports send the same documents: built once
    if s.siem_syslog_address:
        host, _, port = s.siem_syslog_address.rpartition(":")
        tls = tls_context(s.siem_syslog_ca_file) if s.siem_syslog_tls else None
        siem.append(
            SyslogSink(
                host.strip("[]"),
                int(port),
                tls=tls,
                limits=limits(500),
                timeout_s=timeout,
                policy=policy,
                observer=observer,
                documents=documents,
            )
        )
    if s.siem_hec_url:
        token = s.siem_hec_token.get_secret_value() if s.siem_hec_token else None
        siem.append(
            HecSink(
                s.siem_hec_url,
                token,
                limits=limits(500),
                timeout_s=timeout,
                policy=policy,
                observer=observer,
                documents=documents,
            )
        )
    if siem:
        sinks["siem"] = siem
    return sinks


def build_deletion(settings: Settings) -> PostHogDeletion | None:
    """PostHog's person deletion for erased leads, when a personal key and project are set."""
    s = settings
    if s.posthog_personal_api_key is None or not s.posthog_project_id:
        return None
    return PostHogDeletion(
        s.posthog_personal_api_key.get_secret_value(),
        s.posthog_project_id,
        s.posthog_api_host or private_api_host(s.posthog_host),
        timeout_s=s.sink_timeout_s,
    )
