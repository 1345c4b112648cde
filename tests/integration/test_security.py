"""Kafka client security against a real TLS broker: SASL/SCRAM over TLS, mTLS, hostname
verification, and no secret in any log, status or metrics output.

The test starts its own broker (dev.kafka) with a throwaway CA made here with the
``cryptography`` package: a PLAINTEXT listener (readiness, admin set-up, lag checks), a
SASL_SSL listener (SCRAM) and an SSL listener that requires a client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dev import kafka as devkafka
from dev.workload import email_workload, iso
from tests._broker import free_ports, unavailable
from tests._receivers import HttpReceiver
from tests._sluice import Deployment

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

_QUIET = logging.getLogger("tests.security.librdkafka")  # refused logins are expected
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())

USER = "sluice-svc"
PASSWORD = "scram-Pa55-w0rd-7f3a9c"
SECRETS = {
    "KAFKA_SASL_PASSWORD": PASSWORD,
    "POSTHOG_API_KEY": "phc_secret_key_5d1e8b2a",
    "PII_HMAC_KEY": "hmac-secret-0c9d7e6f",
    "CLICKHOUSE_PASSWORD": "ch-secret-a1b2c3",
}


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    sans: list[x509.GeneralName] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class TlsBroker:
    plaintext: str
    sasl_ssl: str
    mtls: str
    ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tls-broker")
    ca_key = _key()
    ca_cert = _cert("sluice test CA", ca_key, None, ca=True)
    ca_issuer = (ca_cert.subject, ca_key)
    # DNS:localhost only: a client that connects to 127.0.0.1 must fail verification
    server_key = _key()
    server_cert = _cert("localhost", server_key, ca_issuer, [x509.DNSName("localhost")])
    client_key = _key()
    client_cert = _cert("sluice-client", client_key, ca_issuer)
    pem = serialization.Encoding.PEM
    (root / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (root / "server.pem").write_bytes(
        _pem_key(server_key) + server_cert.public_bytes(pem) + ca_cert.public_bytes(pem)
    )
    (root / "client.pem").write_bytes(client_cert.public_bytes(pem))
    (root / "client.key").write_bytes(_pem_key(client_key))

    port, sasl_port, mtls_port, controller = free_ports(4)
    host = "127.0.0.1"
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    props = {
        "listeners": f"PLAINTEXT://{host}:{port},SASL_SSL://{host}:{sasl_port},"
        f"SSL://{host}:{mtls_port},CONTROLLER://{host}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},SASL_SSL://localhost:{sasl_port},"
        f"SSL://localhost:{mtls_port},CONTROLLER://{host}:{controller}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,"
        "CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": jaas,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(root / "server.pem"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(root / "ca.pem"),
        "listener.name.ssl.ssl.client.auth": "required",
    }
    try:
        handle = devkafka.start(
            root / "data", port=port, controller_port=controller, extra_props=props
        )
    except devkafka.ToolchainError as exc:
        unavailable(f"cannot run a local TLS Kafka: {exc}")
    try:
        from confluent_kafka.admin import (
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        admin = AdminClient({"bootstrap.servers": handle.bootstrap})
        for mechanism in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512):
            # one credential per user and request (the broker refuses two)
            upsert = UserScramCredentialUpsertion(
                USER, ScramCredentialInfo(mechanism, 8192), PASSWORD.encode()
            )
            for future in admin.alter_user_scram_credentials([upsert]).values():
                future.result(timeout=30)
        yield TlsBroker(
            handle.bootstrap,
            f"localhost:{sasl_port}",
            f"localhost:{mtls_port}",
            root / "ca.pem",
            root / "client.pem",
            root / "client.key",
        )
    finally:
        devkafka.stop(handle.data_dir, timeout=30)


def _sasl_env(broker: TlsBroker, password: str = PASSWORD, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.sasl_ssl,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_SSL_CA_FILE": str(broker.ca),
        **extra,
    }


def _settings(**env: str):
    from sluice.settings import Settings

    return Settings(**{k.lower(): v for k, v in env.items()})


def _one_line_error(proc) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def _event(dep: Deployment) -> dict:
    event = email_workload(emails=2, days=2, seed=7).events[0]
    return {**event, "occurred_at": iso(event["occurred_at"])}


def test_topics_create_over_sasl_ssl_accepts_right_and_refuses_wrong_credentials(
    tls_broker, tmp_path
):
    dep = Deployment(tls_broker.plaintext, tmp_path)
    wrong = dep.run(
        "topics", "create", check=False, env_extra=_sasl_env(tls_broker, "not-the-password")
    )
    line = _one_line_error(wrong)
    assert "not-the-password" not in wrong.stdout + wrong.stderr
    assert "cannot reach Kafka" in line
    right = dep.run("topics", "create", env_extra=_sasl_env(tls_broker))
    assert f"created  {dep.topic('email')}" in right.stdout
    assert PASSWORD not in right.stdout + right.stderr


def test_producer_sdk_over_sasl_ssl(tls_broker, tmp_path):
    from sluice.producer import DeliveryError, EventProducer

    dep = Deployment(tls_broker.plaintext, tmp_path)
    dep.run("topics", "create", env_extra=_sasl_env(tls_broker))
    env = {**_sasl_env(tls_broker), "SLUICE_TOPIC_PREFIX": dep.prefix}
    # the producer takes its topics from its own settings: no process state to patch
    with EventProducer(_settings(**env)) as producer:
        producer.send(_event(dep))
    assert producer.stats.delivered == 1

    started = time.monotonic()
    bad = EventProducer(
        _settings(**{**env, "KAFKA_SASL_PASSWORD": "wrong-password"}), logger=_QUIET
    )
    bad.send(_event(dep))
    with pytest.raises(DeliveryError) as info:
        bad.flush(timeout=60)
    assert time.monotonic() - started < 30  # an auth failure fails fast
    assert "wrong-password" not in str(info.value)
    assert "Authentication" in str(info.value) or "SASL" in str(info.value)
    del bad  # stop its connection attempts


def test_mtls_and_hostname_verification(tls_broker):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from sluice.kafka import kafka_config

    base = {
        "KAFKA_BOOTSTRAP_SERVERS": tls_broker.mtls,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": str(tls_broker.ca),
    }
    mtls = _settings(
        **base,
        KAFKA_SSL_CERT_FILE=str(tls_broker.client_cert),
        KAFKA_SSL_KEY_FILE=str(tls_broker.client_key),
    )
    assert AdminClient(kafka_config(mtls)).list_topics(timeout=20).brokers

    def refused(settings) -> None:
        with pytest.raises(KafkaException):
            AdminClient(kafka_config(settings)).list_topics(timeout=5)

    refused(_settings(**base))  # no client certificate
    # the certificate names localhost, not 127.0.0.1: hostname verification refuses it
    host_port = tls_broker.mtls.replace("localhost", "127.0.0.1")
    refused(
        _settings(
            **{**base, "KAFKA_BOOTSTRAP_SERVERS": host_port},
            KAFKA_SSL_CERT_FILE=str(tls_broker.client_cert),
            KAFKA_SSL_KEY_FILE=str(tls_broker.client_key),
        )
    )


class SecureDeployment(Deployment):
    """A deployment whose Sluice processes talk SASL_SSL; ``bootstrap`` stays plaintext
    so the test's own lag checks need no credentials."""

    secure_env: dict[str, str] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**(self.secure_env or {}), **extra})


def test_worker_over_sasl_ssl_and_no_secret_anywhere(tls_broker, tmp_path):
    with HttpReceiver() as rx:
        _worker_over_sasl_ssl(tls_broker, tmp_path, rx)
        assert rx.posthog, "the PostHog sink (key set) received nothing"


def _worker_over_sasl_ssl(tls_broker: TlsBroker, tmp_path: Path, rx: HttpReceiver) -> None:
    dep = SecureDeployment(tls_broker.plaintext, tmp_path, partitions=2)
    dep.secure_env = _sasl_env(tls_broker, **SECRETS, POSTHOG_HOST=rx.url)
    dep.run("topics", "create")
    events = [
        {**e, "occurred_at": iso(e["occurred_at"])}
        for e in email_workload(emails=20, days=2, seed=3).events
    ]
    produced = dep.produce(events)
    dep.start_worker()
    try:
        dep.wait_drained(timeout=120)
        base = f"http://127.0.0.1:{dep.web_port}"
        with urllib.request.urlopen(f"{base}/sluice/status/", timeout=10) as r:
            status = r.read().decode()
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert json.loads(status)["events"] >= len(events)
        cli_status = dep.run("status", "--format", "json", check=False)
    finally:
        assert dep.stop_worker() == 0, dep.log_tail()
    log = (tmp_path / "worker.log").read_text()
    outputs = {
        "worker log": log,
        "status": status,
        "metrics": metrics,
        "sluice status": cli_status.stdout + cli_status.stderr,
        "sluice produce": produced.stdout + produced.stderr,
    }
    for where, text in outputs.items():
        for name, secret in SECRETS.items():
            assert secret not in text, f"{name} leaked into the {where}"


def test_worker_over_mtls(tls_broker, tmp_path):
    dep = SecureDeployment(tls_broker.plaintext, tmp_path, partitions=2)
    dep.secure_env = {
        "KAFKA_BOOTSTRAP_SERVERS": tls_broker.mtls,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": str(tls_broker.ca),
        "KAFKA_SSL_CERT_FILE": str(tls_broker.client_cert),
        "KAFKA_SSL_KEY_FILE": str(tls_broker.client_key),
        "SLUICE_PROFILE": "production",  # TLS everywhere, chDB: allowed
    }
    dep.run("topics", "create")
    events = [
        {**e, "occurred_at": iso(e["occurred_at"])}
        for e in email_workload(emails=10, days=2, seed=4).events
    ]
    dep.produce(events)
    dep.start_worker()
    try:
        dep.wait_drained(timeout=120)
    finally:
        assert dep.stop_worker() == 0, dep.log_tail()
    sent = dep.query("SELECT sum(sent) AS sent FROM campaign_analytics FINAL")[0]["sent"]
    assert sent > 0


def test_worker_endpoint_over_https_with_the_token(tmp_path, kafka_bootstrap):
    """SLUICE_WEB_TLS_*: the endpoint serves HTTPS, the CLI verifies it against the CA and
    sends the token; plain HTTP and an unverified client get nowhere."""
    import ssl

    ca_key, web_key = _key(), _key()
    ca_cert = _cert("sluice web CA", ca_key, None, ca=True)
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    web_cert = _cert("localhost", web_key, (ca_cert.subject, ca_key), sans)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (tmp_path / "web.pem").write_bytes(web_cert.public_bytes(pem))
    (tmp_path / "web.key").write_bytes(_pem_key(web_key))
    dep = SecureDeployment(kafka_bootstrap, tmp_path, partitions=2)
    dep.secure_env = {
        "SLUICE_WEB_TLS_CERT_FILE": str(tmp_path / "web.pem"),
        "SLUICE_WEB_TLS_KEY_FILE": str(tmp_path / "web.key"),
        "SLUICE_WEB_TLS_CA_FILE": str(tmp_path / "ca.pem"),
    }
    dep.prepare()
    dep.produce(email_workload(emails=10, days=2, seed=6).events)
    dep.start_worker()
    try:
        dep.wait_drained(timeout=120)
        answer = dep.run(
            "olap", "query", "--format", "json", "SELECT count() AS n FROM lead_analytics_v"
        )
        assert json.loads(answer.stdout)[0]["n"] > 0
        status = dep.run("status", "--format", "json")
        assert json.loads(status.stdout)["worker"]["events"] > 0
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: hung up
            urllib.request.urlopen(f"http://127.0.0.1:{dep.web_port}/metrics", timeout=10)
        with pytest.raises(urllib.error.URLError) as info:  # a client without the CA
            urllib.request.urlopen(f"https://127.0.0.1:{dep.web_port}/metrics", timeout=10)
        assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
        trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{dep.web_port}/metrics", timeout=10, context=trusted
        ) as r:
            assert r.status == 200
    finally:
        assert dep.stop_worker() == 0, dep.log_tail()
