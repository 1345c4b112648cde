"""Security settings: one config function per client library, the production profile,
and secrets kept out of reprs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from sluice.kafka import kafka_config
from sluice.olap.client import clickhouse_options
from sluice.settings import Settings
from streams.app import faust_credentials


def make(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_plaintext_default_is_plain_librdkafka_config():
    conf = kafka_config(make(kafka_bootstrap_servers="k:9092"))
    assert conf == {"bootstrap.servers": "k:9092", "security.protocol": "plaintext"}
    assert faust_credentials(make()) is None


def test_sasl_ssl_config_for_both_client_libraries():
    s = make(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="svc",
        kafka_sasl_password="pw-123",
    )
    conf = kafka_config(s)
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert conf["sasl.username"] == "svc" and conf["sasl.password"] == "pw-123"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"  # on by default
    creds = faust_credentials(s)
    assert creds.protocol.value == "SASL_SSL"
    assert creds.mechanism.value == "SCRAM-SHA-256"
    assert creds.ssl_context.check_hostname is True
    assert "pw-123" not in repr(creds)


def test_sasl_needs_credentials_and_cert_needs_key():
    with pytest.raises(ValidationError, match="KAFKA_SASL_USERNAME"):
        make(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="go together"):
        make(kafka_security_protocol="SSL", kafka_ssl_cert_file="/c.pem")


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        ({}, "plaintext Kafka"),
        (
            {"kafka_security_protocol": "SSL", "clickhouse_url": "http://u:p@ch:8123/db"},
            "credentials over http://",
        ),
        (
            {
                "kafka_security_protocol": "SSL",
                "clickhouse_url": "http://ch:8123/db",
                "clickhouse_password": "x",
            },
            "credentials over http://",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_check_hostname": False}, "HOSTNAME"),
        (
            {"kafka_security_protocol": "SSL", "posthog_api_key": "k", "posthog_host": "http://ph"},
            "POSTHOG_HOST",
        ),
        (
            {"kafka_security_protocol": "SSL", "sluice_web_host": "0.0.0.0"},
            "query and rows endpoints on 0.0.0.0 without SLUICE_API_TOKEN",
        ),
        (
            {
                "kafka_security_protocol": "SSL",
                "sluice_web_host": "10.0.0.7",
                "sluice_api_token": "t" * 32,
            },
            "HTTP endpoint on 10.0.0.7 without TLS",
        ),
    ],
)
def test_production_profile_refuses_insecure_settings(overrides, refusal):
    with pytest.raises(ValidationError, match=refusal):
        make(sluice_profile="production", **overrides)


def test_production_profile_accepts_tls_everywhere():
    s = make(
        sluice_profile="production",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="svc",
        kafka_sasl_password="pw",
        clickhouse_url="https://u:p@ch:8443/db",
    )
    assert s.sluice_profile == "production"
    exposed = make(
        sluice_profile="production",
        kafka_security_protocol="SSL",
        sluice_web_host="0.0.0.0",
        sluice_api_token="t" * 32,
        sluice_web_tls_cert_file="/etc/sluice/web.pem",
        sluice_web_tls_key_file="/etc/sluice/web.key",
    )
    assert exposed.worker_url("/metrics") == "https://127.0.0.1:6066/metrics"


def test_web_tls_files_go_together():
    with pytest.raises(ValidationError, match="SLUICE_WEB_TLS_CERT_FILE and SLUICE_WEB_TLS_KEY"):
        make(sluice_web_tls_cert_file="/etc/sluice/web.pem")


def test_cli_refuses_production_plaintext_in_one_line(tmp_path):
    env = {"SLUICE_PROFILE": "production", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "topics", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "production profile refuses plaintext Kafka" in lines[0]
    assert "Traceback" not in proc.stderr


def test_clickhouse_options():
    assert clickhouse_options(make(clickhouse_password="x")) == {}  # chdb: none
    opts = clickhouse_options(
        make(
            clickhouse_url="https://ch:8443/db",
            clickhouse_user="reader",
            clickhouse_password="pw",
            clickhouse_ca_file="/ca.pem",
        )
    )
    assert opts == {"username": "reader", "password": "pw", "verify": True, "ca_cert": "/ca.pem"}


def test_no_secret_in_settings_repr_or_str():
    s = make(
        clickhouse_url="https://u:url-pass-1@ch:8443/db",
        clickhouse_password="ch-pass-2",
        posthog_api_key="phc-3",
        pii_hmac_key="hmac-4",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="svc",
        kafka_sasl_password="sasl-5",
    )
    secrets = s.secret_values()
    assert set(secrets) == {"url-pass-1", "ch-pass-2", "phc-3", "hmac-4", "sasl-5"}
    for text in (repr(s), str(s), s.model_dump_json()):
        for secret in secrets:
            assert secret not in text
