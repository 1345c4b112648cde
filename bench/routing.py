"""Routing throughput: ≥200,000 events through the real worker to local receivers.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m bench.routing [--events 200000]

Produces a mixed workload (email, admin UI, business → PostHog; infra → OTLP; security
and sensitive admin actions → SIEM over HEC and, when rsyslogd is installed, syslog),
starts ``sluice worker`` with every sink pointed at receivers on 127.0.0.1, and reports
events/s per sink (events a receiver accepted / time between its first and last
accepted request) and overall (events consumed / time from the first delivery to the
worker having committed everything). Then, in the same run, it measures the posthog
SDK's own ``capture()`` against the same receiver: its cost per call and how many
events its bounded queue dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sinks.base import Envelope
from sinks.pii import Pseudonymizer
from sinks.posthog import PostHogSink
from sluice.taxonomy import EVENT_TYPES
from streams.routing import sink_targets
from tests._receivers import HttpReceiver, Rsyslog
from tests._sluice import Deployment

# Share of the workload per family (sums to 1).
MIX = {
    "email": 0.62,
    "admin_ui": 0.10,
    "business": 0.03,
    "infra": 0.15,
    "security": 0.06,
    "admin_action": 0.02,
    "warmup": 0.015,
    "system": 0.005,
}


@dataclass
class BenchDeployment(Deployment):
    sink_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.sink_env, **extra})


def workload(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    families = list(MIX)
    weights = [MIX[f] for f in families]
    types = {f: sorted(EVENT_TYPES[f]) for f in families}
    out = []
    t0 = 1_793_000_000_000
    for i in range(n):
        family = rng.choices(families, weights)[0]
        event_type = rng.choice(types[family])
        e: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "occurred_at": t0 + i,
            "tenant_id": f"tenant-{i % 50}",
            "source": "bench",
            "user_id": f"user-{rng.randrange(5000)}",
        }
        if family in ("email", "warmup"):
            e.update(email_id=f"em-{i}", mailbox_id=f"mb-{i % 200}")
        if family == "email":
            e.update(
                campaign_id=f"c-{i % 40}",
                lead_id=f"ld-{i % 20000}",
                recipient_email=f"lead{i % 20000}@example.com",
                ip_address=f"198.51.100.{i % 250}",
            )
        if family == "security":
            e.update(ip_address=f"203.0.113.{i % 250}", user_agent="Mozilla/5.0", outcome="success")
        if family == "infra":
            e.update(
                service=f"svc-{i % 8}",
                latency_ms=float(i % 500),
                pool_name="pg",
                pool_size=20,
                pool_in_use=i % 20,
                pool_waiting=i % 3,
                error_count=i % 5,
                request_count=100,
                severity="warning",
                health_status="healthy",
                query_duration_ms=float(i % 90),
                rows_scanned=i % 10000,
                query_kind="report",
                scale_to=3,
            )
        out.append(e)
    return out


def watch_worker(dep: Deployment, total: int, timeout: float = 900) -> tuple[float, float]:
    """Poll the worker's status: (first event consumed, all consumed and checkpointed)."""
    url = f"http://127.0.0.1:{dep.web_port}/sluice/status/"
    first: float | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                status = json.load(r)
        except OSError:
            time.sleep(0.2)  # not listening yet
            continue
        now = time.monotonic()
        if first is None and status["events"] > 0:
            first = now
        if status["events"] >= total and status["unflushed_events"] == 0:
            assert first is not None
            return first, now
        time.sleep(0.2)
    raise TimeoutError(f"worker did not finish in {timeout}s:\n{dep.log_tail()}")


def scrape_flush_times(dep: Deployment) -> dict[str, dict[str, float]]:
    """Total and count of checkpoint and per-sink flush time, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{dep.web_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for metric in ("sluice_sink_flush_seconds", "sluice_checkpoint_seconds"):
            for part in ("_sum", "_count"):
                if line.startswith(metric + part):
                    labels, _, value = line.rpartition(" ")
                    sink = (
                        labels.split('sink="')[1].split('"')[0]
                        if "sink=" in labels
                        else "checkpoint"
                    )
                    out.setdefault(sink, {})[part[1:]] = float(value)
    return out


def measure_sink_alone(
    url: str, events: list[dict[str, Any]], rx: HttpReceiver
) -> dict[str, float]:
    """Sluice's PostHog sink without Kafka or Faust in front: its own ceiling."""
    sink = PostHogSink("phc_bench", url, pseudonymizer=Pseudonymizer(b"bench"))
    envelopes = [Envelope(e, "bench", 0, i) for i, e in enumerate(events)]
    before = rx.accepted["/batch/"]

    async def run() -> None:
        for i in range(0, len(envelopes), 5000):  # the worker's batch size
            sink.write(envelopes[i : i + 5000])
            await asyncio.sleep(0)
        assert await sink.flush() == []
        await sink.close()

    started = time.perf_counter()
    asyncio.run(run())
    seconds = time.perf_counter() - started
    received = rx.accepted["/batch/"] - before
    return {
        "events": len(events),
        "delivered": received,
        "seconds": seconds,
        "events_per_s": len(events) / seconds,
    }


def measure_sdk_capture(url: str, n: int, rx: HttpReceiver) -> dict[str, float]:
    """The posthog SDK's capture() as documented, against the same receiver."""
    import posthog

    before = rx.accepted["/batch/"]
    client = posthog.Posthog(
        "phc_bench",
        host=url,
        flush_at=100,
        flush_interval=0.5,
        gzip=False,
        max_retries=3,
        sync_mode=False,
    )
    started = time.perf_counter()
    for i in range(n):
        client.capture(
            "email_opened",
            distinct_id=f"user-{i % 5000}",
            properties={
                "tenant_id": f"tenant-{i % 50}",
                "campaign_id": "c-1",
                "email_id": f"em-{i}",
            },
            groups={"tenant": f"tenant-{i % 50}"},
            uuid=str(uuid.uuid4()),
        )
    call_s = time.perf_counter() - started
    client.flush()
    client.shutdown()
    total_s = time.perf_counter() - started
    received = rx.accepted["/batch/"] - before
    return {
        "events": n,
        "capture_us_per_call": call_s / n * 1e6,
        "capture_calls_per_s": n / call_s,
        "delivered": received,
        "dropped": n - received,
        "delivered_per_s": received / total_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sdk-events", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-sinks", action="store_true", help="baseline: the same run with every sink off"
    )
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    events = workload(args.events)
    expected = {"posthog": 0, "siem": 0, "observability": 0}
    for e in events:
        for sink in sink_targets(e):
            expected[sink] += 1
    rs = Rsyslog(root / "rsyslog").start() if shutil.which("rsyslogd") else None
    try:
        with HttpReceiver() as rx:
            env = {
                "POSTHOG_API_KEY": "phc_bench",
                "POSTHOG_HOST": rx.url,
                "PII_HMAC_KEY": "bench",
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
                "SIEM_HEC_URL": f"{rx.url}/services/collector/event",
                "SIEM_HEC_TOKEN": "bench",
                "SLUICE_FLUSH_INTERVAL_S": "2",
                "SLUICE_BATCH_MAX": "5000",
            }
            if rs is not None:
                env["SIEM_SYSLOG_ADDRESS"] = f"127.0.0.1:{rs.port}"
            if args.no_sinks:
                env = {k: v for k, v in env.items() if k.startswith("SLUICE_")}
            dep = BenchDeployment(bootstrap, root, sink_env=env)
            dep.run("topics", "create")
            t = time.perf_counter()
            dep.produce(events)
            produce_s = time.perf_counter() - t
            print(f"produced {len(events):,} events in {produce_s:.1f}s", file=sys.stderr)
            dep.start_worker()
            try:
                first, consumed_at = watch_worker(dep, len(events))
                dep.wait_drained(timeout=900)
                flush_times = scrape_flush_times(dep)
                assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
            finally:
                if dep.worker is not None:
                    dep.stop_worker(signal.SIGKILL)
            overall_s = consumed_at - first
            report: dict[str, Any] = {
                "events": len(events),
                "expected_per_sink": expected,
                "overall_events_per_s": len(events) / overall_s,
                "overall_seconds": overall_s,
                "sinks": {},
                "flush_seconds": flush_times,
            }
            for name, path in (("posthog", "/batch/"), ("siem.hec", "/services/collector/event")):
                start, end = rx.windows.get(path, (0.0, 0.0))
                got = rx.accepted[path]
                report["sinks"][name] = {
                    "events": got,
                    "seconds": end - start,
                    "events_per_s": got / max(end - start, 1e-9),
                }
            report["sinks"]["observability"] = {"exports": rx.accepted["/v1/metrics"]}
            if args.no_sinks:
                print(json.dumps(report, indent=2))
                return 0
            if rs is not None:
                ids = rs.ids()
                report["sinks"]["siem.syslog"] = {"events": len(ids), "distinct": len(set(ids))}
            uuids = rx.posthog_uuids()
            report["sinks"]["posthog"]["distinct_uuids"] = len(set(uuids))
            posthog_events = [e for e in events if "posthog" in sink_targets(e)]
            report["posthog_sink_alone"] = measure_sink_alone(rx.url, posthog_events, rx)
            report["posthog_sdk_capture"] = measure_sdk_capture(rx.url, args.sdk_events, rx)
    finally:
        if rs is not None:
            rs.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
