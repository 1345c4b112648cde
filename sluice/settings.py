"""The one settings object. Nothing else in Sluice reads ``os.environ``.

Every field is read from the environment variable of the same name in upper case
(``KAFKA_BOOTSTRAP_SERVERS``, ``CLICKHOUSE_URL``, ...) or from a ``.env`` file in the
working directory. Settings are validated once, at start-up; a bad value is one clear
error naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.taxonomy import FAMILY_OF


class Settings(BaseSettings):
    """Sluice configuration (see the README's configuration reference)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, comma separated."
    )
    clickhouse_url: str = Field(
        "chdb://./var/olap",
        description="chdb://PATH for the embedded engine, http(s)://user:pass@host:port/db "
        "for a ClickHouse server.",
    )
    schema_registry_url: str | None = Field(
        None,
        description="Confluent Schema Registry URL. When set, producers use Confluent "
        "framing; otherwise Avro single-object encoding.",
    )
    posthog_api_key: SecretStr | None = Field(None, description="PostHog project API key.")
    posthog_host: str = Field("https://us.i.posthog.com", description="PostHog host.")
    # -- sinks (docs/sinks.md). A sink is enabled when its endpoint (and key) is set.
    posthog_batch_max: int = Field(
        1000, gt=0, le=10_000, description="Most events in one PostHog /batch/ request."
    )
    posthog_gzip: bool = Field(True, description="Gzip PostHog request bodies.")
    posthog_sample_rates: dict[str, float] = Field(
        default_factory=dict,
        description='Per-event-type PostHog sampling, JSON: {"admin_session_keepalive": 0.1}. '
        "Types not listed are sent in full.",
    )
    pii_hmac_key: SecretStr | None = Field(
        None,
        description="Secret key for HMAC-SHA256 pseudonyms of emails, IPs and free text "
        "sent to PostHog. Unset: those values are removed instead.",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP base URL (the OpenTelemetry variable); metrics go to "
        "<endpoint>/v1/metrics. Enables the observability sink.",
    )
    otel_exporter_otlp_metrics_endpoint: str | None = Field(
        None, description="Full OTLP/HTTP metrics URL; overrides the base endpoint."
    )
    otel_exporter_otlp_headers: SecretStr | None = Field(
        None, description="Extra OTLP request headers, `k1=v1,k2=v2` (often an API key)."
    )
    otel_service_name: str = Field("sluice", description="OTel resource service.name.")
    siem_syslog_address: str | None = Field(
        None, description="host:port of an RFC 5424 syslog receiver over TCP (enables it)."
    )
    siem_syslog_tls: bool = Field(False, description="Wrap the syslog TCP connection in TLS.")
    siem_syslog_ca_file: str | None = Field(
        None, description="CA bundle to verify the syslog server (TLS); system CAs if unset."
    )
    siem_hec_url: str | None = Field(
        None,
        description="HTTP JSON collector URL, Splunk HEC style "
        "(https://host:8088/services/collector/event); enables it.",
    )
    siem_hec_token: SecretStr | None = Field(
        None, description="Token sent as `Authorization: Splunk <token>` to the collector."
    )
    sink_timeout_s: float = Field(10.0, gt=0, description="Timeout of one sink request.")
    sink_flush_deadline_s: float = Field(
        30.0,
        gt=0,
        description="How long one checkpoint keeps retrying a failing sink before it "
        "gives up (nothing acked; the next checkpoint tries again).",
    )
    sink_retry_initial_s: float = Field(0.2, gt=0, description="First retry backoff.")
    sink_retry_max_s: float = Field(10.0, gt=0, description="Cap of the retry backoff.")
    sink_max_in_flight: int = Field(4, gt=0, le=32, description="Concurrent requests per sink.")
    sink_linger_s: float = Field(
        1.0, gt=0, description="Longest a partly filled sink batch waits before it is sent."
    )
    sluice_flush_interval_s: float = Field(
        5.0, gt=0, description="Seconds between checkpoints (OLAP flush + offset commit)."
    )
    sluice_app_id: str = Field(
        "sluice", description="Faust app id = Kafka consumer group of the worker."
    )
    sluice_data_dir: str = Field(
        "./var", description="Directory for the worker's local state (Faust tablesdir)."
    )
    sluice_web_port: int = Field(6066, description="Port of the worker's HTTP endpoint.")
    sluice_web_host: str = Field(
        "127.0.0.1", description="Bind address of the worker's HTTP endpoint."
    )
    sluice_topic_partitions: int = Field(
        4, gt=0, description="Partitions of every event topic (set before `topics create`)."
    )
    sluice_topic_prefix: str = Field(
        "",
        description="Prefix for every topic name (lets several deployments or test runs "
        "share one cluster).",
    )

    @field_validator("posthog_sample_rates")
    @classmethod
    def _check_sample_rates(cls, value: dict[str, float]) -> dict[str, float]:
        for event_type, rate in value.items():
            if event_type not in FAMILY_OF:
                raise ValueError(f"{event_type!r} is not an event type of the taxonomy")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate of {event_type} must be within [0, 1], got {rate}")
        return value

    @field_validator("siem_syslog_address")
    @classmethod
    def _check_syslog_address(cls, value: str | None) -> str | None:
        if value is not None:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"must be host:port (got {value!r})")
        return value

    def otlp_metrics_url(self) -> str | None:
        """Where OTLP metrics go, or None when the observability sink is off."""
        if self.otel_exporter_otlp_metrics_endpoint:
            return self.otel_exporter_otlp_metrics_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/metrics"
        return None

    @field_validator("clickhouse_url")
    @classmethod
    def _check_clickhouse_url(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in {"chdb", "http", "https"}:
            raise ValueError(
                f"must start with chdb://, http:// or https:// (got scheme {scheme!r})"
            )
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, validated on first use."""
    return Settings()
