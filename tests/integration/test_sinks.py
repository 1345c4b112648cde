"""Each sink against a local receiver on 127.0.0.1 (no broker): faults lose nothing,
duplicate nothing, refused events come back for the DLQ, nothing leaks PII."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from typing import Any

import pytest

from sinks.base import BatchLimits, Envelope, RetryPolicy
from sinks.observability import ATTRIBUTE_KEYS, ObservabilitySink
from sinks.pii import Pseudonymizer
from sinks.posthog import PostHogSink
from sinks.sampling import Sampler
from sinks.siem import HecSink, SyslogSink
from tests._receivers import Fault, HttpReceiver, Rsyslog, require_rsyslog

EMAIL = re.compile(rb"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+\.[A-Za-z]{2,}")
IPV4 = re.compile(rb"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
FAST = RetryPolicy(initial_s=0.05, max_s=0.5, jitter=0.1)


def limits(n: int, **kw: Any) -> BatchLimits:
    return BatchLimits(
        **{"max_events": n, "linger_s": 0.2, "max_in_flight": 3, "flush_deadline_s": 20, **kw}
    )


def envelope(record: dict[str, Any], offset: int) -> Envelope:
    return Envelope(record, "events.x", 0, offset, record["tenant_id"].encode(), b"raw")


def email_events(n: int) -> list[dict[str, Any]]:
    types = ["email_sent", "email_opened", "email_clicked", "email_bounced", "email_replied"]
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": types[i % len(types)],
            "occurred_at": 1_763_500_000_000 + i,
            "tenant_id": f"tenant-{i % 3}",
            "source": "mailer",
            "user_id": None,
            "email_id": f"em-{i}",
            "campaign_id": "c-1",
            "mailbox_id": "mb-1",
            "lead_id": f"ld-{i}",
            "recipient_email": f"lead{i}@example.com",
            "ip_address": f"198.51.100.{i % 250}",
            "link_url": f"https://x.example.com/?e=lead{i}@example.com",
            "bounce_reason": f"550 <lead{i}@example.com> unknown",
            "bounce_type": "hard",
        }
        for i in range(n)
    ]


def security_events(n: int) -> list[dict[str, Any]]:
    types = [
        "security_login_succeeded",
        "security_login_failed",
        "security_suspicious_activity",
        "security_data_access",
    ]
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": types[i % 4],
            "occurred_at": 1_763_500_000_000 + i,
            "tenant_id": "acme",
            "source": "auth",
            "user_id": f"u{i}",
            "ip_address": f"203.0.113.{i % 200}",
            "user_agent": "curl/8",
            "failure_reason": "bad password" if i % 4 == 1 else None,
            "sensitive": i % 8 == 3,
        }
        for i in range(n)
    ]


async def run_sink(sink: Any, records: list[dict[str, Any]], chunk: int = 97) -> list:
    await sink.start()
    envs = [envelope(r, i) for i, r in enumerate(records)]
    for i in range(0, len(envs), chunk):
        sink.write(envs[i : i + chunk])
        await asyncio.sleep(0)
    rejected = await sink.flush()
    await sink.close()
    return rejected


def assert_no_pii(bodies: list[bytes]) -> None:
    for body in bodies:
        assert not EMAIL.search(body), EMAIL.search(body)
        assert not IPV4.search(body), IPV4.search(body)


# -- PostHog ----------------------------------------------------------------------------------
def posthog_sink(rx: HttpReceiver, **kw: Any) -> PostHogSink:
    return PostHogSink(
        "phc_test",
        rx.url,
        pseudonymizer=Pseudonymizer(b"k"),
        timeout_s=kw.pop("timeout_s", 1.0),
        limits=kw.pop("limits", limits(200)),
        policy=FAST,
        **kw,
    )


def test_posthog_faults_lose_nothing_and_duplicate_nothing(caplog):
    caplog.set_level(logging.INFO)
    records = email_events(2000)
    with HttpReceiver() as rx:
        rx.faults = [
            Fault(500),
            Fault(429, {"Retry-After": "1"}),
            Fault(504, hang_s=2.0, process_first=True),  # accepted, answered too late
            Fault(503),
        ]
        rejected = asyncio.run(run_sink(posthog_sink(rx), records))
        got = rx.posthog_uuids()
    assert rejected == []
    assert set(got) == {r["event_id"] for r in records}  # distinct uuids received = sent
    assert len(got) - len(set(got)) <= 200  # only the batch accepted-then-hung came twice
    assert rx.statuses[429] == 1 and rx.statuses[500] == 1
    assert_no_pii(rx.bodies)
    assert_no_pii([r.getMessage().encode() for r in caplog.records])


def test_posthog_400_rejects_exactly_the_bad_events():
    records = email_events(300)
    bad = {records[17]["event_id"], records[250]["event_id"]}
    with HttpReceiver() as rx:
        rx.poison = bad
        rejected = asyncio.run(run_sink(posthog_sink(rx), records))
        got = rx.posthog_uuids()
    assert {records[r.envelope.offset]["event_id"] for r in rejected} == bad
    assert {r.sink for r in rejected} == {"posthog"} and {r.reason for r in rejected} == {
        "http_400"
    }
    assert set(got) == {r["event_id"] for r in records} - bad and len(got) == len(set(got))


def test_posthog_sampling_is_recorded_and_deterministic():
    records = email_events(1000)
    with HttpReceiver() as rx:
        sink = posthog_sink(rx, sampler=Sampler({"email_opened": 0.2}))
        asyncio.run(run_sink(sink, records))
        sent = list(rx.posthog)
    opened = [e for e in sent if e["event"] == "email_opened"]
    assert 20 <= len(opened) <= 60  # ~40 of 200
    assert all(e["properties"]["sample_rate"] == 0.2 for e in opened)
    assert all(e["properties"]["sample_rate"] == 1.0 for e in sent if e["event"] != "email_opened")
    assert all(e["properties"]["$groups"]["tenant"].startswith("tenant-") for e in sent)


def test_posthog_sink_down_keeps_everything_for_the_next_flush():
    records = email_events(150)

    async def main(rx: HttpReceiver) -> None:
        sink = posthog_sink(rx, limits=limits(50, flush_deadline_s=0.6))
        rx.faults = [Fault(503)] * 1000
        sink.write([envelope(r, i) for i, r in enumerate(records)])
        with pytest.raises(Exception, match="unavailable"):
            await sink.flush()
        assert sink.buffered() == 150
        rx.faults = []
        assert await sink.flush() == []
        await sink.close()

    with HttpReceiver() as rx:
        asyncio.run(main(rx))
        got = rx.posthog_uuids()
    assert sorted(got) == sorted(r["event_id"] for r in records)


# -- observability ----------------------------------------------------------------------------
def infra_events() -> list[dict[str, Any]]:
    base = {
        "occurred_at": 1_763_500_000_000,
        "tenant_id": "acme",
        "source": "api",
        "service": "api",
    }
    out = []
    for i in range(200):
        out.append(
            {
                **base,
                "event_id": str(uuid.uuid4()),
                "event_type": "infra_latency",
                "latency_ms": float(i),
                "node": f"node-{i}",
            }
        )
    out.append(
        {
            **base,
            "event_id": "p1",
            "event_type": "infra_connection_pool_metrics",
            "pool_name": "pg",
            "pool_size": 20,
            "pool_in_use": 15,
            "pool_waiting": 4,
        }
    )
    out.append(
        {
            **base,
            "event_id": "e1",
            "event_type": "infra_error_rate",
            "error_count": 5,
            "request_count": 100,
        }
    )
    out.append(
        {
            **base,
            "event_id": "q1",
            "event_type": "query_executed",
            "query_duration_ms": 12.5,
            "rows_scanned": 1000,
            "query_kind": "dashboard",
        }
    )
    out.append(
        {
            **base,
            "event_id": "a1",
            "event_type": "infra_alert",
            "severity": "critical",
            "message": "disk full on 10.0.0.7",
        }
    )
    out += [
        {
            **base,
            "event_id": f"s{i}",
            "event_type": "infra_health_check",
            "service": f"svc-{i}",
            "health_status": "healthy",
        }
        for i in range(100)
    ]
    return out


def test_observability_exports_otlp_metrics_with_bounded_attributes():
    with HttpReceiver() as rx:
        rx.faults = [Fault(500), Fault(429, {"Retry-After": "0.2"})]
        sink = ObservabilitySink(
            f"{rx.url}/v1/metrics", timeout_s=1.0, limits=limits(10_000), policy=FAST
        )
        rejected = asyncio.run(run_sink(sink, infra_events()))
        points = rx.otlp_points()
        bodies = rx.bodies
    assert rejected == []
    api = {"sluice.service.name": "api"}
    pg = {**api, "db.client.connection.pool.name": "pg"}
    # 200 samples, no node attribute
    assert points["sluice.infra.latency"] == [(api, 200.0)]
    assert points["db.client.connection.count"] == [
        ({**pg, "db.client.connection.state": "used"}, 15)
    ]
    assert points["db.client.connection.max"] == [(pg, 20)]
    assert points["db.client.connection.pending_requests"] == [(pg, 4)]
    assert points["sluice.infra.error_rate"][0][1] == pytest.approx(0.05)
    assert points["db.client.operation.duration"] == [
        ({**api, "sluice.query.kind": "dashboard", "db.system.name": "other_sql"}, 1.0)
    ]
    assert points["sluice.infra.alerts"] == [({**api, "sluice.alert.severity": "critical"}, 1.0)]
    services = {a["sluice.service.name"] for a, _ in points["sluice.infra.health_checks"]}
    assert len(services) <= 65 and "other" in services  # cardinality capped
    for name, series in points.items():
        for attrs, _ in series:
            assert set(attrs) <= ATTRIBUTE_KEYS, name
    assert_no_pii(bodies)


def test_observability_400_dead_letters_the_batch():
    with HttpReceiver() as rx:
        rx.faults = [Fault(400)]
        sink = ObservabilitySink(
            f"{rx.url}/v1/metrics", timeout_s=1.0, limits=limits(10_000), policy=FAST
        )
        records = infra_events()[:10]
        rejected = asyncio.run(run_sink(sink, records))
    assert len(rejected) == 10 and {r.sink for r in rejected} == {"observability"}


# -- SIEM -----------------------------------------------------------------------------------
def test_hec_collector_gets_ecs_records_through_faults():
    records = security_events(600)
    bad = {records[5]["event_id"]}
    with HttpReceiver() as rx:
        rx.faults = [
            Fault(503),
            Fault(429, {"Retry-After": "1"}),
            Fault(504, hang_s=2.0, process_first=True),
        ]
        rx.poison = bad
        sink = HecSink(
            f"{rx.url}/services/collector/event",
            "tok",
            timeout_s=1.0,
            limits=limits(100),
            policy=FAST,
        )
        rejected = asyncio.run(run_sink(sink, records))
        ids, hec = rx.hec_ids(), list(rx.hec)
    assert {records[r.envelope.offset]["event_id"] for r in rejected} == bad
    assert set(ids) == {r["event_id"] for r in records} - bad
    doc = next(r["event"] for r in hec if r["event"]["event"]["action"] == "security_login_failed")
    assert doc["event"]["outcome"] == "failure" and doc["event"]["category"] == ["authentication"]
    assert doc["source"]["ip"].startswith("203.0.113.")  # the SIEM gets the detail
    assert doc["organization"]["id"] == "acme" and doc["user"]["id"].startswith("u")


def test_syslog_to_a_real_rsyslog_survives_a_restart(tmp_path):
    require_rsyslog()
    records = security_events(400)

    async def main(rs: Rsyslog) -> list:
        sink = SyslogSink("127.0.0.1", rs.port, timeout_s=2.0, limits=limits(50), policy=FAST)
        await sink.start()
        envs = [envelope(r, i) for i, r in enumerate(records)]
        sink.write(envs[:200])
        assert await sink.flush() == []
        # Syslog has no application-level ack: what rsyslog holds in memory when it stops
        # is its own loss, not the sink's. Let it write the first half out, then restart it
        # to test what is ours: noticing the dead connection and reconnecting.
        first = {r["event_id"] for r in records[:200]}
        for _ in range(100):
            if set(rs.ids()) >= first:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(rs.stop)  # the collector restarts ...
        await asyncio.to_thread(rs.start)
        await asyncio.sleep(0.2)
        sink.write(envs[200:])
        rejected = await sink.flush()
        await sink.close()
        return rejected

    with Rsyslog(tmp_path / "rsyslog") as rs:
        assert asyncio.run(main(rs)) == []
        sent = {r["event_id"] for r in records}
        for _ in range(50):
            if set(rs.ids()) >= sent:
                break
            asyncio.run(asyncio.sleep(0.1))
        got = rs.records()
    ids = [doc["event"]["id"] for _, _, doc in got]
    assert set(ids) == sent
    msgid, sd, doc = got[0]
    assert msgid == doc["event"]["action"] and f'event_id="{doc["event"]["id"]}"' in sd
    assert doc["ecs"]["version"] and doc["@timestamp"].endswith("Z")


def test_syslog_over_tls_verifies_the_server_and_delivers(tmp_path):
    """TLS mode against a local TLS listener with a throwaway CA-less self-signed cert."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:  # .ci/run installs it; CI must not skip
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("openssl CLI not installed", pytrace=False)
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    records = security_events(120)
    received = bytearray()

    async def main() -> list:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(65536):
                received.extend(chunk)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        untrusted = SyslogSink(
            "127.0.0.1",
            port,
            tls=ssl.create_default_context(),
            timeout_s=2.0,
            limits=limits(50, flush_deadline_s=0.5),
            policy=FAST,
        )
        untrusted.write([envelope(records[0], 0)])
        with pytest.raises(Exception, match="unavailable"):  # self-signed, not in the trust store
            await untrusted.flush()
        await untrusted.close()
        sink = SyslogSink(
            "127.0.0.1",
            port,
            tls=ssl.create_default_context(cafile=str(cert)),
            timeout_s=2.0,
            limits=limits(50),
            policy=FAST,
        )
        rejected = await run_sink(sink, records)
        await asyncio.sleep(0.3)
        server.close()
        await server.wait_closed()
        return rejected

    assert asyncio.run(main()) == []
    ids = set(re.findall(rb'event_id="([^"]+)"', bytes(received)))
    assert ids == {r["event_id"].encode() for r in records}
