"""Contender *sluice*: the real worker (``sluice worker``), every route on.

Every sink points at receivers on 127.0.0.1 (PostHog, OTLP and Splunk-HEC on one HTTP
receiver; syslog on an rsyslogd when one is installed), rollups are flushed to chDB.
Throughput is events consumed / time from the first event consumed to the worker having
consumed *and checkpointed* all of them (``/sluice/status/``, polled every 0.2 s); peak
RSS is the worker process's until then.

Checked exact at the end, after a clean SIGTERM: every event consumed and committed;
``campaign_analytics`` equal, row for row, to the spec's query over the workload's email
facts; PostHog and the SIEM received exactly the distinct events the routing table sends
them. ``posthog_extras`` also measures Sluice's PostHog sink alone and the posthog SDK's
``capture()`` against the same receiver (what ``docs/sinks.md`` quotes).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.measure import Result, RssWatcher, RunContext
from bench.workload import CAMPAIGN_METRICS, BenchWorkload, reference_campaign_rows
from sinks.base import Envelope
from sinks.pii import Pseudonymizer
from sinks.posthog import PostHogSink
from streams.routing import sink_targets
from tests._receivers import HttpReceiver, Rsyslog
from tests._sluice import Deployment, OlapServer


@dataclass
class BenchDeployment(Deployment):
    sink_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.sink_env, **extra})


def deployment(ctx: RunContext, label: str = "sluice", **kwargs: Any) -> BenchDeployment:
    """A deployment over this run's topics (its prefix is the run's), with a consumer
    group, OLAP store and data directory of its own (``label``)."""
    root = ctx.root / label
    root.mkdir(exist_ok=True)
    return BenchDeployment(
        ctx.bootstrap, root, name=ctx.prefix.rstrip("."), group_name=ctx.group(label), **kwargs
    )


def watch_worker(
    dep: Deployment, total: int, timeout: float = 900, peaks: dict[str, int] | None = None
) -> tuple[float, float]:
    """Poll the worker's status: (first event consumed, all consumed and checkpointed).

    ``peaks``, if given, gets the most events seen unflushed (consumed, not checkpointed)
    and, per sink, the most it held buffered: where the worker's memory can go."""
    url = f"http://127.0.0.1:{dep.web_port}/sluice/status/"
    first: float | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dep.worker is not None and dep.worker.poll() is not None:
            raise RuntimeError(f"worker exited {dep.worker.returncode}:\n{dep.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                status = json.load(r)
        except OSError:
            time.sleep(0.2)  # not listening yet
            continue
        now = time.monotonic()
        if peaks is not None:
            seen = {"unflushed": status["unflushed_events"]} | {
                f"buffered.{sink}": n for sink, n in status["sinks"]["buffered"].items()
            }
            for name, n in seen.items():
                peaks[name] = max(peaks.get(name, 0), n)
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


def campaign_rows(dep: Deployment) -> dict[tuple[str, str, str], tuple]:
    got = dep.query(
        "SELECT company_id, campaign_id, toString(day) AS day, "
        + ", ".join(CAMPAIGN_METRICS)
        + " FROM campaign_analytics_v WHERE sent > 0"  # the view: one row per key
    )
    return {
        (r["company_id"], r["campaign_id"], r["day"]): tuple(r[m] for m in CAMPAIGN_METRICS)
        for r in got
    }


def sink_env(rx: HttpReceiver, rs: Rsyslog | None) -> dict[str, str]:
    """Every sink at the local receivers, as the sluice contender has them."""
    env = {
        "POSTHOG_API_KEY": "phc_bench",
        "POSTHOG_HOST": rx.url,
        "PII_HMAC_KEY": "bench",
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
        "SIEM_HEC_URL": f"{rx.url}/services/collector/event",
        "SIEM_HEC_TOKEN": "bench",
    }
    if rs is not None:
        env["SIEM_SYSLOG_ADDRESS"] = f"127.0.0.1:{rs.port}"
    return env


def _ids_for(events: list[dict[str, Any]], sink: str) -> set[str]:
    return {e["event_id"] for e in events if sink in sink_targets(e)}


def run(
    ctx: RunContext,
    workload: BenchWorkload,
    *,
    sinks: bool = True,
    posthog_extras: bool = False,
    sdk_events: int = 100_000,
    http_store: bool = False,
) -> Result:
    """Run the worker over the run's topics, measure it, check it exact. ``http_store``:
    the rollups go over HTTP to chDB in a process of its own (``python -m
    dev.olap_server``, standing in for a ClickHouse server) instead of the embedded chDB;
    the worker's peak RSS then excludes the store, whose own peak is in the detail."""
    events = workload.events
    label = ("sluice" if sinks else "sluice-nosinks") + ("-http" if http_store else "")
    root = ctx.root / label
    root.mkdir(exist_ok=True)
    rs = Rsyslog(root / "rsyslog").start() if sinks and shutil.which("rsyslogd") else None
    problems: list[str] = []
    detail: dict[str, Any] = {"sinks_on": sinks, "store": "http" if http_store else "embedded"}
    detail["checkpoint_interval_s"] = float(ctx.extra.get("checkpoint_interval_s", 2.0))
    server = OlapServer(root / "olap-server").start() if http_store else None
    store_watcher = None
    if server is not None:
        assert server.proc is not None
        store_watcher = RssWatcher(server.proc.pid).start()
    try:
        # deferred: the receiver answers at once and parses after the run, so the harness
        # does not take the worker's CPU (two cores; a real destination has its own)
        with HttpReceiver(deferred=True) as rx:
            interval = float(ctx.extra.get("checkpoint_interval_s", 2.0))
            env = {"SLUICE_FLUSH_INTERVAL_S": str(interval)}
            if sinks:
                env |= sink_env(rx, rs)
            extra = {"clickhouse_url": server.url} if server is not None else {}
            dep = deployment(ctx, label, sink_env=env, flush_interval_s=interval, **extra)
            dep.run("olap", "migrate")
            dep.start_worker()
            assert dep.worker is not None
            watcher = RssWatcher(dep.worker.pid).start()
            try:
                peaks: dict[str, int] = {}
                first, consumed_at = watch_worker(dep, len(events), ctx.timeout, peaks)
                detail["peak_held_events"] = peaks
                peak = watcher.stop()
                dep.wait_drained(timeout=ctx.timeout)
                detail["flush_seconds"] = scrape_flush_times(dep)
                code = dep.stop_worker(signal.SIGTERM)
                if code != 0:
                    problems.append(f"worker exited {code} on SIGTERM")
            finally:
                watcher.stop()
                dep.close()
            seconds = consumed_at - first
            done, end = dep.offsets()
            if done != len(events) or end != len(events):
                problems.append(f"committed {done:,} of {end:,} offsets, produced {len(events):,}")
            expected = reference_campaign_rows(workload.facts)
            got = campaign_rows(dep)
            wrong = {k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)}
            detail["campaign_rows"] = len(got)
            if wrong:
                sample = [(k, got.get(k), expected.get(k)) for k in sorted(wrong)[:3]]
                problems.append(f"campaign_analytics: {len(wrong)} rows differ, e.g. {sample}")
            rx.settle()
            if sinks:
                detail["sinks"] = sink_figures(rx, rs, events, problems)
            if posthog_extras and sinks:
                posthog_events = [e for e in events if "posthog" in sink_targets(e)]
                detail["posthog_sink_alone"] = measure_sink_alone(rx.url, posthog_events, rx)
                detail["posthog_sdk_capture"] = measure_sdk_capture(rx.url, sdk_events, rx)
    finally:
        if rs is not None:
            rs.stop()
        if store_watcher is not None:
            detail["store_peak_rss_bytes"] = store_watcher.stop()
        if server is not None:
            server.stop()
    return Result(
        name=label,
        events=len(events),
        seconds=seconds,
        peak_rss_bytes=peak,
        verified=not problems,
        problems=problems,
        detail=detail,
    )


def sink_figures(
    rx: HttpReceiver, rs: Rsyslog | None, events: list[dict[str, Any]], problems: list[str]
) -> dict[str, Any]:
    """What each receiver got; exact distinct ids against the routing table."""
    out: dict[str, Any] = {}
    for name, path in (("posthog", "/batch/"), ("siem.hec", "/services/collector/event")):
        start, end = rx.windows.get(path, (0.0, 0.0))
        got = rx.accepted[path]
        out[name] = {
            "events": got,
            "seconds": end - start,
            "events_per_s": got / max(end - start, 1e-9),
        }
    out["observability"] = {"exports": rx.accepted["/v1/metrics"]}
    checks = {
        "posthog": (set(rx.posthog_uuids()), _ids_for(events, "posthog")),
        "siem.hec": (set(rx.hec_ids()), _ids_for(events, "siem")),
    }
    if rs is not None:
        checks["siem.syslog"] = (set(rs.ids()), _ids_for(events, "siem"))
    for name, (got_ids, want) in checks.items():
        out.setdefault(name, {})["distinct"] = len(got_ids)
        if got_ids != want:
            problems.append(
                f"{name}: {len(want - got_ids)} events missing, {len(got_ids - want)} unexpected"
            )
    return out


def measure_sink_alone(
    url: str, events: list[dict[str, Any]], rx: HttpReceiver
) -> dict[str, float]:
    """Sluice's PostHog sink without Kafka or Faust in front: its own ceiling."""
    sink = PostHogSink("phc_bench", url, pseudonymizer=Pseudonymizer(b"bench"))
    envelopes = [Envelope(e, "bench", 0, i) for i, e in enumerate(events)]
    rx.settle()
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
    rx.settle()
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

    rx.settle()
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
    rx.settle()
    received = rx.accepted["/batch/"] - before
    return {
        "events": n,
        "capture_us_per_call": call_s / n * 1e6,
        "capture_calls_per_s": n / call_s,
        "delivered": received,
        "dropped": n - received,
        "delivered_per_s": received / total_s,
    }


if __name__ == "__main__":
    sys.exit("run it through the harness: python -m bench.run --only sluice")
