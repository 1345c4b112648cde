"""The chDB HTTP front (dev/olap_server.py): one chDB store behind ClickHouse's HTTP
interface, reached with the unchanged clickhouse-connect HTTP client (``sluice.olap.connect("http(s)://...")``).

Migrations, idempotent inserts (``insert_deduplication_token``), queries, ClickHouse's
errors as exceptions, credentials, TLS with hostname verification, a second process
refused the store, and a real worker writing its rollups through the server.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sluice.olap import OlapError, connect, migrate
from sluice.olap.migrations import available
from tests._sluice import OLAP_SERVER, REPO, Deployment, OlapServer

pytestmark = pytest.mark.integration

COLUMNS = ["company_id", "campaign_id", "day", "sent", "delivered", "opened_tracked"]
COLUMNS += ["clicked_tracked", "replied", "bounced", "unsubscribed", "spam_complaints"]
COLUMNS += ["updated", "_version"]


def _row(campaign: str, sent: int, version: int) -> list:
    day = dt.date(2026, 11, 2)
    return [
        "acme",
        campaign,
        day,
        sent,
        sent,
        1,
        0,
        0,
        0,
        0,
        0,
        dt.datetime(2026, 11, 2, 9),
        version,
    ]


@pytest.fixture
def server(tmp_path):
    srv = OlapServer(tmp_path / "srv").start()
    yield srv
    srv.close()


def test_migrate_insert_dedup_query_and_errors(server):
    client = connect(server.url)
    try:
        assert [m.version for m in migrate(client)] == [m.version for m in available()]
        assert migrate(client) == []  # recorded: idempotent

        first = [_row("c1", 10, 5), _row("c2", 3, 5)]
        token = client.insert("campaign_analytics", COLUMNS, first)
        # the same flush again (an ambiguous timeout retried): deduplicated by ClickHouse
        assert client.insert("campaign_analytics", COLUMNS, first) == token
        _, rows = client.query("SELECT count() FROM campaign_analytics")
        assert rows == [(2,)]
        # a new version of one row: a new token, a new part; the view reads the latest
        client.insert("campaign_analytics", COLUMNS, [_row("c1", 11, 6)])
        columns, rows = client.query(
            "SELECT campaign_id, day, sent, delivered FROM campaign_analytics_v "
            "WHERE company_id = {tenant:String} ORDER BY campaign_id",
            {"tenant": "acme"},
        )
        assert columns == ["campaign_id", "day", "sent", "delivered"]
        assert rows == [("c1", dt.date(2026, 11, 2), 11, 11), ("c2", dt.date(2026, 11, 2), 3, 3)]
        assert client.command("SELECT count() FROM campaign_analytics") == 3

        with pytest.raises(OlapError, match=r"Code: 60\..*Unknown table.*UNKNOWN_TABLE"):
            client.query("SELECT * FROM no_such_table")
        with pytest.raises(OlapError, match=r"Code: 62\..*SYNTAX_ERROR"):
            client.command("CREATE TABL oops")
        with pytest.raises(OlapError, match="not in the OLAP catalog"):
            client.insert("no_such_table", ["a"], [[1]])
        # the server is still fine after errors
        assert client.query("SELECT 1 AS one") == (["one"], [(1,)])
    finally:
        client.close()
    assert server.stop(signal.SIGTERM) == 0, server.log.read_text()


def test_a_second_process_cannot_take_the_store(server):
    proc = subprocess.run(
        [*OLAP_SERVER, "--path", str(server.root / "olap"), "--port", "0"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "locked by another process (PID" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # and the first server is untouched
    client = connect(server.url)
    assert client.query("SELECT 1 AS one") == (["one"], [(1,)])
    client.close()


def test_credentials_are_required(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3rv-Pa55\n")
    srv = OlapServer(tmp_path / "srv", args=("--user", "sluice", "--password-file", str(secret)))
    srv.start()
    try:
        client = connect(srv.url, username="sluice", password="s3rv-Pa55")
        assert client.query("SELECT 1 AS one") == (["one"], [(1,)])
        client.close()
        # the same through the URL (as CLICKHOUSE_URL may carry them)
        client = connect(f"http://sluice:s3rv-Pa55@127.0.0.1:{srv.port}")
        assert client.query("SELECT 2 AS two") == (["two"], [(2,)])
        client.close()
        for options in (
            {"username": "sluice", "password": "wrong"},
            {"username": "other", "password": "s3rv-Pa55"},
            {},
        ):
            with pytest.raises(OlapError, match=r"516.*Authentication failed") as refused:
                connect(srv.url, **options)
            assert "wrong" not in str(refused.value)
    finally:
        srv.close()


# ----------------------------------------------------------------------------- TLS


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else name
    )
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write_pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_https_with_hostname_verification(tmp_path):
    ca_key, other_key, server_key = _key(), _key(), _key()
    ca = _write_pem(tmp_path / "ca.pem", _cert("Test CA", ca_key))
    other_ca = _write_pem(tmp_path / "other-ca.pem", _cert("Other CA", other_key))
    server_cert = _cert("localhost", server_key, ("Test CA", ca_key), [x509.DNSName("localhost")])
    cert = _write_pem(tmp_path / "server.pem", server_cert)
    key = tmp_path / "server.key"
    key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    srv = OlapServer(
        tmp_path / "srv",
        args=("--tls-cert", str(cert), "--tls-key", str(key)),
        host="localhost",
        scheme="https",
    )
    srv.start()
    try:
        client = connect(srv.url, verify=True, ca_cert=str(ca))
        migrate(client)
        client.insert("campaign_analytics", COLUMNS, [_row("c9", 1, 1)])
        assert client.query("SELECT campaign_id FROM campaign_analytics_v") == (
            ["campaign_id"],
            [("c9",)],
        )
        client.close()
        # a client trusting another CA is refused
        with pytest.raises(OlapError, match="CERTIFICATE_VERIFY_FAILED.*unable to get local"):
            connect(srv.url, verify=True, ca_cert=str(other_ca))
        # the certificate names localhost, not 127.0.0.1: hostname verification is on
        with pytest.raises(OlapError, match="CERTIFICATE_VERIFY_FAILED.*IP address mismatch"):
            connect(f"https://127.0.0.1:{srv.port}", verify=True, ca_cert=str(ca))
        # plain HTTP to the TLS port gets nothing
        with pytest.raises(OlapError):
            connect(f"http://localhost:{srv.port}", connect_timeout=5)
    finally:
        srv.close()


# ------------------------------------------------------------------- a real worker


@pytest.mark.kafka
def test_worker_writes_through_the_server(kafka_bootstrap, tmp_path, reference_olap):
    from tests.faults._faults import RawProducer, verify, workload

    srv = OlapServer(tmp_path / "srv").start()
    dep = Deployment(kafka_bootstrap, tmp_path / "worker", clickhouse_url=srv.url)
    dep.root.mkdir()
    try:
        wl = workload(seed=4242, events=3000)
        dep.prepare()  # topics, and `sluice olap migrate` over HTTP
        RawProducer(dep).send_all(wl.events)
        dep.start_worker()
        dep.wait_drained(timeout=180)
        # `sluice olap query` reads the server directly (no worker needed)
        assert dep.query("SELECT count() AS n FROM sluice_schema_migrations FINAL") == [
            {"n": len(available())}
        ]
        figures = verify(dep, wl, reference_olap)
        assert figures["difference"] == 0
        assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
        # the server's store holds it all after the worker left
        figures_after = verify(dep, wl, reference_olap)
        assert figures_after == figures
    finally:
        dep.close()
        srv.close()
