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
    sluice_web_host: str = Field("127.0.0.1", description="Bind address of the worker's HTTP endpoint.")
    sluice_batch_max: int = Field(
        5000, gt=0, description="Most events the worker takes from Kafka in one batch."
    )
    sluice_batch_within_s: float = Field(
        0.5, gt=0, description="Longest wait for a batch to fill before processing it."
    )
    sluice_topic_partitions: int = Field(
        4, gt=0, description="Partitions of every event topic (set before `topics create`)."
    )
    sluice_topic_prefix: str = Field(
        "",
        description="Prefix for every topic name (lets several deployments or test runs "
        "share one cluster).",
    )

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
