"""Client security from settings: one function per client library.

* :func:`kafka_config` — the librdkafka (confluent-kafka) part of every Producer,
  Consumer and AdminClient configuration: the producer SDK, the CLI, status, DLQ tools.
* :func:`faust_credentials` — the same for the worker's Faust app (aiokafka underneath).
* :func:`clickhouse_options` — user, password and TLS options for clickhouse-connect.

Hostname verification is on unless ``KAFKA_SSL_CHECK_HOSTNAME=false`` (refused by the
production profile). Secrets are read from ``SecretStr`` only here, at the moment a
client is built, and never logged.
"""

from __future__ import annotations

import ssl
from typing import Any

from sluice.settings import Settings


def kafka_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings (bootstrap servers + security) for any confluent-kafka client."""
    s = settings
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "security.protocol": s.kafka_security_protocol.lower(),
    }
    if s.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if s.kafka_ssl_check_hostname else "none"
        )
        if s.kafka_ssl_ca_file:
            conf["ssl.ca.location"] = s.kafka_ssl_ca_file
        if s.kafka_ssl_cert_file:
            conf["ssl.certificate.location"] = s.kafka_ssl_cert_file
            conf["ssl.key.location"] = s.kafka_ssl_key_file
            if s.kafka_ssl_key_password is not None:
                conf["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    if s.kafka_security_protocol == "SASL_SSL":
        conf["sasl.mechanism"] = s.kafka_sasl_mechanism
        conf["sasl.username"] = s.kafka_sasl_username
        conf["sasl.password"] = (
            s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else ""
        )
    return conf


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context for aiokafka: CA, optional client cert (mTLS), hostname check."""
    s = settings
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.kafka_ssl_ca_file)
    context.check_hostname = s.kafka_ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if s.kafka_ssl_cert_file:
        context.load_cert_chain(
            s.kafka_ssl_cert_file,
            s.kafka_ssl_key_file,
            password=(
                s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None
            ),
        )
    return context


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for faust.App: None (plaintext), SSL or SASL/SCRAM over TLS."""
    import faust

    s = settings
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(s)
    if s.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=s.kafka_sasl_username,
        password=s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None,
        ssl_context=context,
        mechanism=s.kafka_sasl_mechanism,
    )


def clickhouse_options(settings: Settings) -> dict[str, Any]:
    """Extra clickhouse-connect ``get_client`` options (credentials, TLS) for server URLs."""
    s = settings
    options: dict[str, Any] = {}
    if s.clickhouse_url.startswith("chdb://"):
        return options
    if s.clickhouse_user:
        options["username"] = s.clickhouse_user
    if s.clickhouse_password is not None:
        options["password"] = s.clickhouse_password.get_secret_value()
    if s.clickhouse_url.startswith("https://"):
        options["verify"] = s.clickhouse_verify
        if s.clickhouse_ca_file:
            options["ca_cert"] = s.clickhouse_ca_file
    return options


def secret_values(settings: Settings) -> list[str]:
    """Every secret configured (for tests that scan logs and outputs for leaks)."""
    from urllib.parse import urlparse

    found = [
        v.get_secret_value()
        for v in (
            settings.posthog_api_key,
            settings.pii_hmac_key,
            settings.kafka_sasl_password,
            settings.kafka_ssl_key_password,
            settings.clickhouse_password,
            settings.siem_hec_token,
            settings.otel_exporter_otlp_headers,
        )
        if v is not None
    ]
    password = urlparse(settings.clickhouse_url).password
    if password:
        found.append(password)
    return [v for v in found if v]
