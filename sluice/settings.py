"""The one settings object. Nothing else in Sluice reads ``os.environ``.

Every field is read from the environment variable of the same name in upper case
(``KAFKA_BOOTSTRAP_SERVERS``, ``CLICKHOUSE_URL``, ...) or from a ``.env`` file in the
working directory. Settings are validated once, at start-up; a bad value is one clear
error naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from topics.taxonomy import FAMILY_OF

# The worker's HTTP paths (streams/web.py serves them; the CLI calls them).
STATUS_PATH = "/sluice/status/"
QUERY_PATH = "/sluice/query/"
ROWS_PATH = "/sluice/olap/rows/"
PRIVACY_VERIFY_PATH = "/sluice/privacy/verify/"
METRICS_PATH = "/metrics"

#: The sinks' names (``sinks/registry.py`` builds them; a unit test keeps the two in step).
SINK_NAMES = frozenset({"posthog", "observability", "siem.syslog", "siem.hec"})
OnRefused = Literal["dead_letter", "pause"]


class Settings(BaseSettings):
    """Sluice configuration (see the README's configuration reference)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, comma separated."
    )
    sluice_profile: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses to start with plaintext Kafka, unverified TLS, "
        "or ClickHouse credentials over plain http://.",
    )
    # -- Kafka client security (every client: producer SDK, CLI, worker; sluice/kafka.py)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="PLAINTEXT, SSL (TLS, optionally mTLS with a client cert) or SASL_SSL "
        "(SCRAM over TLS).",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism for SASL_SSL."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL/SCRAM username.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL/SCRAM password.")
    kafka_ssl_ca_file: str | None = Field(
        None,
        description="PEM CA bundle that signed the brokers' certificates (system CAs if unset).",
    )
    kafka_ssl_cert_file: str | None = Field(
        None, description="PEM client certificate for mTLS (with KAFKA_SSL_KEY_FILE)."
    )
    kafka_ssl_key_file: str | None = Field(None, description="PEM private key of the client cert.")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted KAFKA_SSL_KEY_FILE."
    )
    kafka_ssl_check_hostname: bool = Field(
        True,
        description="Verify that the broker certificate names the host connected to. "
        "Never turn off in production (refused there).",
    )
    clickhouse_url: str = Field(
        "chdb://./var/olap",
        description="chdb://PATH for the embedded engine, http(s)://user:pass@host:port/db "
        "for a ClickHouse server.",
    )
    clickhouse_user: str | None = Field(
        None, description="ClickHouse user (overrides the URL's user)."
    )
    clickhouse_password: SecretStr | None = Field(
        None, description="ClickHouse password (overrides the URL's password)."
    )
    clickhouse_cluster: str | None = Field(
        None,
        description="ClickHouse cluster name: `sluice olap migrate` then runs its DDL ON CLUSTER "
        "with ReplicatedReplacingMergeTree tables ({shard}/{replica} macros) and inserts wait "
        "for a quorum of replicas. One shard with replicas (see docs/operations.md).",
    )
    clickhouse_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Timeout of one ClickHouse request of the writer (connect: a sixth of it, "
        "at most 5 s); a server that stops answering fails the checkpoint, which is retried.",
    )
    sluice_query_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest one read of the query path may run (`sluice olap query`, the "
        "worker's query endpoint); ClickHouse stops it there (max_execution_time).",
    )
    sluice_query_max_rows: int = Field(
        1_000_000, gt=0, description="Most rows one read may return (max_result_rows)."
    )
    sluice_query_max_bytes: int = Field(
        256 * 2**20, gt=0, description="Most bytes one read may return (max_result_bytes)."
    )
    clickhouse_ca_file: str | None = Field(
        None, description="PEM CA bundle to verify an https:// ClickHouse server."
    )
    clickhouse_verify: bool = Field(
        True,
        description="Verify the https:// ClickHouse server's certificate "
        "(refused off in production).",
    )
    schema_registry_url: str | None = Field(
        None,
        description="Confluent Schema Registry URL. When set, producers use Confluent "
        "framing; otherwise Avro single-object encoding.",
    )
    sluice_schema_dir: str | None = Field(
        None,
        description="Directory of Avro schemas (`<family>/v<N>.avsc`, every version) that "
        "the worker decodes with, producers encode with and `sluice schemas check` checks. "
        "Unset: the schemas shipped with Sluice.",
    )
    posthog_api_key: SecretStr | None = Field(None, description="PostHog project API key.")
    posthog_host: str = Field("https://us.i.posthog.com", description="PostHog host.")
    posthog_lead_persons: bool = Field(
        False,
        description="Send email events under their lead's pseudonym as distinct_id, with "
        "person processing on, so that erasing the lead can delete them through PostHog's "
        "person deletion (PostHog then keeps one person per lead). Off: email events stay on "
        "the tenant without a person, and an erasure relies on unlinkability alone "
        "(docs/erasure.md).",
    )
    posthog_personal_api_key: SecretStr | None = Field(
        None,
        description="PostHog personal API key with the person:write scope: with "
        "POSTHOG_PROJECT_ID, an erased lead's person and events are deleted through "
        "PostHog's API (with POSTHOG_LEAD_PERSONS), the answer recorded in the erasure "
        "registry.",
    )
    posthog_project_id: str | None = Field(
        None, description="PostHog project id (the deletion API's /api/projects/<id>/)."
    )
    posthog_api_host: str | None = Field(
        None,
        description="PostHog private API host for deletions. Unset: POSTHOG_HOST, with Cloud's "
        "ingestion host mapped to its API host (us.i.posthog.com → us.posthog.com).",
    )
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
        0.5,
        gt=0,
        le=300,
        description="Longest a partly filled sink batch waits before it is sent.",
    )
    sink_max_buffered: int = Field(
        100_000,
        ge=1_000,
        description="Most events one sink may hold in sealed batches (queued or in flight) "
        "before the worker stops reading until the sink's background sends catch up: a slow "
        "destination costs throughput, not the worker's memory (~0.6 KB an event held). Keep it "
        "above what a sink takes in during one checkpoint's flush (rate × flush seconds): "
        "below, every checkpoint stalls the reader.",
    )
    sink_on_refused: OnRefused = Field(
        "dead_letter",
        description="What a route does while its destination refuses Sluice for good "
        "(401/403/407, e.g. a revoked key): `dead_letter` sends its events to events.dlq "
        "(reason destination_refused, replay them once fixed) and every other route flows "
        "on; `pause` holds them, commits nothing and stops consuming at the pending limit.",
    )
    sink_on_refused_by_sink: dict[str, OnRefused] = Field(
        default_factory=dict,
        description='Per-sink override of SINK_ON_REFUSED, JSON: {"siem.hec": "pause"}. '
        "Sinks: posthog, observability, siem.syslog, siem.hec.",
    )
    sink_refused_after_s: float = Field(
        60.0,
        ge=0,
        description="How long a destination's refusals (401/403/407) are retried like "
        "transient errors (a key being rotated) before the sink counts as refused.",
    )
    sink_refused_probe_s: float = Field(
        30.0,
        gt=0,
        description="A refused sink sends one batch (a probe, never retried) this often; "
        "the first accepted one ends the refusal without a restart.",
    )
    sluice_attribution_window_days: float | None = Field(
        None,
        gt=0,
        description="Email engagement (delivered, open, click, reply, bounce, ...) counts in "
        "the rollups only if it happened within this many days of the email's send; later "
        "events are counted in the sluice_late_events metric instead. Unset: counts whenever "
        "it happened (the spec's SQL).",
    )
    sluice_state_store: Literal["rocksdb", "memory"] = Field(
        "rocksdb",
        description="Where the state lives: 'rocksdb' in one RocksDB store per partition "
        "under SLUICE_DATA_DIR/state/<app id>/<partition>, kept across restarts (a restart "
        "on the same data dir reads only the changelog written after the store's last "
        "checkpoint), at most SLUICE_STATE_MEMORY_ITEMS entries in memory; 'memory' keeps "
        "all of it in memory (no disk, unbounded; every start rebuilds it from the "
        "changelog).",
    )
    sluice_state_memory_items: int = Field(
        1_000_000,
        ge=1000,
        description="With SLUICE_STATE_STORE=rocksdb: the most state entries (an email's "
        "attribution record, a lead's row, ...; about 0.6 KB each) held in memory; the oldest "
        "go to disk beyond it.",
    )
    sluice_restore_processes: int | None = Field(
        None,
        ge=0,
        description="With SLUICE_STATE_STORE=rocksdb: how many partitions without a usable "
        "local store are rebuilt from the changelog at once, each in a process of its own "
        "(sharing SLUICE_STATE_MEMORY_ITEMS), when they hold more than 200,000 changelog "
        "entries; smaller ones are rebuilt inside the worker. Unset: one per CPU; 0: always "
        "inside the worker.",
    )
    sluice_flush_interval_s: float = Field(
        5.0, gt=0, description="Seconds between checkpoints (OLAP flush + offset commit)."
    )
    sluice_batch_max: int = Field(
        1_000,
        ge=1,
        le=100_000,
        description="Most events the worker applies before the event loop gets a turn (the "
        "reader fetches up to 5,000, or this many if more, and a fetch is applied as one "
        "to a checkpoint). While events are applied the loop runs nothing else: sink sends, "
        "timers and the checkpoint's flush wait, so smaller steps shorten those waits.",
    )
    sluice_malloc_arenas: int = Field(
        2,
        ge=0,
        le=256,
        description="With glibc: the most malloc arenas the worker's threads share "
        "(mallopt M_ARENA_MAX, exported as MALLOC_ARENA_MAX to the processes it starts). "
        "With glibc's default, up to 8 per core, the worker's peak memory was higher in the "
        "benchmark (bench/README.md). 0: glibc's default. A MALLOC_ARENA_MAX set in the "
        "environment wins.",
    )
    kafka_timeout_s: float = Field(
        15.0,
        gt=0,
        le=300,
        description="How long a CLI command waits for Kafka to answer (topics, status, "
        "dead letters, backfill) before it reports it unreachable.",
    )
    kafka_session_timeout_s: float = Field(
        45.0,
        ge=1,
        description="Consumer-group session timeout: how long a crashed or paused worker "
        "keeps its partitions before the group hands them to the others (heartbeats every "
        "tenth of it, at most 3 s).",
    )
    kafka_max_poll_interval_s: float = Field(
        1000.0,
        ge=1,
        description="How long the worker's hot loop may stall (no batch fetched or "
        "checkpoint retried) before it leaves its consumer group as a stuck member; also the "
        "time a rebalance waits for members to rejoin.",
    )
    sluice_app_id: str = Field(
        "sluice", description="Faust app id = Kafka consumer group of the worker."
    )
    sluice_instance_id: str | None = Field(
        None,
        description="Static group membership: a name unique to this worker within "
        "SLUICE_APP_ID and stable across its restarts (a StatefulSet pod name, a host name). "
        "A worker restarted within KAFKA_SESSION_TIMEOUT_S then gets its partitions back "
        "at once, without a rebalance; but it never leaves the group on shutdown, so a "
        "worker that stops for good (or crashes and is not restarted) holds its partitions "
        "idle for one session timeout. Unset: dynamic membership (SIGTERM leaves the group, "
        "a restart waits for a rebalance).",
    )
    sluice_data_dir: str = Field(
        "./var",
        description="Directory for the worker's local state: the per-partition state stores "
        "(state/), Faust's data, the API token. Keep it on a persistent volume for fast "
        "restarts (see docs/operations.md).",
    )
    sluice_web_port: int = Field(6066, description="Port of the worker's HTTP endpoint.")
    sluice_web_host: str = Field(
        "127.0.0.1", description="Bind address of the worker's HTTP endpoint."
    )
    sluice_web_tls_cert_file: str | None = Field(
        None,
        description="PEM certificate (chain) of the worker's HTTP endpoint: with "
        "SLUICE_WEB_TLS_KEY_FILE it serves HTTPS (the bearer token then never travels in "
        "clear). The production profile requires it on a non-loopback address.",
    )
    sluice_web_tls_key_file: str | None = Field(
        None, description="PEM private key of SLUICE_WEB_TLS_CERT_FILE."
    )
    sluice_web_tls_ca_file: str | None = Field(
        None,
        description="For clients of the worker (the CLI): the CA bundle that signed its "
        "certificate (system CAs if unset).",
    )
    sluice_api_token: SecretStr | None = Field(
        None,
        description="Bearer token the worker's query and rows endpoints require "
        "(`Authorization: Bearer <token>`); the CLI sends it. Status and /metrics stay open. "
        "Unset: the worker makes a random one in SLUICE_DATA_DIR/api-token (mode 0600), which "
        "the CLI of the same user reads; the production profile refuses that unless the web "
        "endpoint is bound to a loopback address.",
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

    @field_validator("sink_on_refused_by_sink")
    @classmethod
    def _check_on_refused_sinks(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - SINK_NAMES)
        if unknown:
            raise ValueError(f"no such sink(s) {unknown}: sinks are {sorted(SINK_NAMES)}")
        return value

    @field_validator("sluice_schema_dir")
    @classmethod
    def _check_schema_dir(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"{value!r} is not a directory")
        return value

    @field_validator("siem_syslog_address")
    @classmethod
    def _check_syslog_address(cls, value: str | None) -> str | None:
        if value is not None:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"must be host:port (got {value!r})")
        return value

    def worker_url(self, path: str) -> str:
        """The running worker's HTTP endpoint ``path`` (one of the ``*_PATH`` constants)."""
        host = self.sluice_web_host
        if host in {"0.0.0.0", "::", ""}:
            host = "127.0.0.1"  # bound to every address: this host reaches it on loopback
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if self.sluice_web_tls_cert_file else "http"
        return f"{scheme}://{host}:{self.sluice_web_port}{path}"

    @property
    def api_token_file(self) -> Path:
        """Where the worker keeps the token it made when ``SLUICE_API_TOKEN`` is unset."""
        return Path(self.sluice_data_dir) / "api-token"

    def api_token(self) -> str | None:
        """The bearer token of the worker's protected endpoints: the configured one, else
        the one the worker made (None when neither exists or the file is unreadable)."""
        if self.sluice_api_token is not None:
            return self.sluice_api_token.get_secret_value()
        try:
            return self.api_token_file.read_text().strip() or None
        except OSError:
            return None

    def ensure_api_token(self) -> str:
        """The worker's token: the configured one, else the stored one, else a new random
        one written to :attr:`api_token_file` with mode 0600 (never readable by others,
        not even for a moment; replaced atomically)."""
        token = self.api_token()
        if token is not None:
            return token
        import os
        import secrets

        path = self.api_token_file
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
        return token

    def secret_values(self) -> list[str]:
        """Every secret configured (tests scan logs and outputs for leaks with it)."""
        found = [
            v.get_secret_value()
            for v in (
                self.posthog_api_key,
                self.posthog_personal_api_key,
                self.pii_hmac_key,
                self.kafka_sasl_password,
                self.kafka_ssl_key_password,
                self.clickhouse_password,
                self.siem_hec_token,
                self.otel_exporter_otlp_headers,
                self.sluice_api_token,
            )
            if v is not None
        ]
        password = urlparse(self.clickhouse_url).password
        if password:
            found.append(password)
        return [v for v in found if v]

    @property
    def posthog_enabled(self) -> bool:
        """Whether events go to PostHog (a project API key is set)."""
        return self.posthog_api_key is not None and bool(self.posthog_api_key.get_secret_value())

    def otlp_metrics_url(self) -> str | None:
        """Where OTLP metrics go, or None when the observability sink is off."""
        if self.otel_exporter_otlp_metrics_endpoint:
            return self.otel_exporter_otlp_metrics_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/metrics"
        return None

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        problems = self.security_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def security_problems(self) -> list[str]:
        """Inconsistent security settings, plus what the production profile refuses."""
        problems: list[str] = []
        if self.kafka_security_protocol == "SASL_SSL" and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            problems.append(
                "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            problems.append("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together (mTLS)")
        if bool(self.sluice_web_tls_cert_file) != bool(self.sluice_web_tls_key_file):
            problems.append("SLUICE_WEB_TLS_CERT_FILE and SLUICE_WEB_TLS_KEY_FILE go together")
        if self.sluice_profile != "production":
            return problems
        url = urlparse(self.clickhouse_url)
        if self.kafka_security_protocol == "PLAINTEXT":
            problems.append(
                "production profile refuses plaintext Kafka "
                "(set KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL)"
            )
        if not self.kafka_ssl_check_hostname:
            problems.append("production profile refuses KAFKA_SSL_CHECK_HOSTNAME=false")
        if url.scheme == "http" and (url.password or self.clickhouse_password):
            problems.append(
                "production profile refuses ClickHouse credentials over http:// (use https://)"
            )
        if not is_loopback(self.sluice_web_host):
            if self.sluice_api_token is None:
                problems.append(
                    f"production profile refuses the query and rows endpoints on "
                    f"{self.sluice_web_host} without SLUICE_API_TOKEN"
                )
            if not self.sluice_web_tls_cert_file:
                problems.append(
                    f"production profile refuses the worker's HTTP endpoint on "
                    f"{self.sluice_web_host} without TLS (SLUICE_WEB_TLS_CERT_FILE); bind "
                    "127.0.0.1 behind a TLS-terminating proxy instead"
                )
        if url.scheme == "https" and not self.clickhouse_verify:
            problems.append("production profile refuses CLICKHOUSE_VERIFY=false")
        for name, value in (
            ("POSTHOG_HOST", self.posthog_host if self.posthog_api_key else None),
            (
                "POSTHOG_API_HOST",
                (self.posthog_api_host or self.posthog_host)
                if self.posthog_personal_api_key
                else None,
            ),
            ("SIEM_HEC_URL", self.siem_hec_url if self.siem_hec_token else None),
        ):
            if value and urlparse(value).scheme == "http":
                problems.append(f"production profile refuses a secret sent over http:// ({name})")
        return problems

    @field_serializer("clickhouse_url")
    def _dump_clickhouse_url(self, value: str) -> str:
        return redact_url(value)  # dumps (JSON, status) never carry the password

    def __repr_args__(self) -> Any:
        # A ClickHouse URL may carry a password: never print it.
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "clickhouse_url" else value)

    @field_validator("clickhouse_url")
    @classmethod
    def _check_clickhouse_url(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in {"chdb", "http", "https"}:
            raise ValueError(
                f"must start with chdb://, http:// or https:// (got scheme {scheme!r})"
            )
        return value


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this host."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """The URL without its password, for messages, logs and reprs."""
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, validated on first use."""
    return Settings()


def reference_markdown() -> str:
    """The configuration reference table (docs/operations.md embeds it; a test keeps it
    in sync): ``python -c "from sluice.settings import reference_markdown as r; print(r())"``.
    """
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = f"`{field.default_factory()}`"
        elif field.default is None:
            default = "unset"
        else:
            value = field.default
            text = str(value).lower() if isinstance(value, bool) else str(value)
            default = f"`{text}`" if text != "" else "empty"
        if field.annotation is not None and "SecretStr" in str(field.annotation):
            default += " (secret)"
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
