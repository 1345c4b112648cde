"""Latency: produce time → effect visible in ClickHouse, and → arrival at PostHog.

The real worker, configured as the sluice contender (every sink at the local receivers,
rollups to its own chDB store) **except the checkpoint interval**: ``SLUICE_FLUSH_INTERVAL_S``
is not set, so the production default applies (the interval the worker's settings resolve
to is reported). A paced producer sends the seeded workload at ``rate`` events/s (the
harness passes half the sluice contender's measured throughput) for ``seconds``, on topics
of its own, after one warm-up probe has gone all the way through.

* **ClickHouse**: every ``probe_every`` s the producer also sends a probe, an
  ``email_sent`` with a unique ``campaign_id`` ``probe-<n>`` (tenant: one of the
  workload's, in turn); a poller asks the worker (``POST /sluice/query/``) for
  ``SELECT campaign_id FROM campaign_analytics_v WHERE campaign_id LIKE 'probe-%'``
  every ``poll_every`` s and keeps each probe's first-seen time (when the answer
  arrived: the figure is an upper bound, by up to one polling period plus a query).
* **PostHog**: every event the routing table sends to PostHog (the workload's and the
  probes), from its produce time to its batch's arrival at the receiver (uuid = event id).
  The receiver stamps each request as it reads it and parses the bodies only once every
  probe is in ClickHouse: this process also paces the producer, and parsing beside it
  (gunzip, JSON, ~7,000 events a second at the default rate) delayed the very arrivals
  it stamps.

Produce times are ``time.time()`` right before ``produce()``; the receiver and poller stamp
with ``time.time()`` too (one machine, one clock).
"""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench import live
from bench import workload as bench_workload
from bench.measure import RunContext
from bench.sluice_worker import BenchDeployment, sink_env
from bench.workload import BenchWorkload
from sinks.posthog import posthog_uuid
from streams.routing import sink_targets

PROBE_SQL = "SELECT campaign_id FROM campaign_analytics_v WHERE campaign_id LIKE 'probe-%'"


@dataclass
class DefaultIntervalDeployment(BenchDeployment):
    """A deployment whose worker runs with the production default checkpoint interval."""

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(**extra)
        if "SLUICE_FLUSH_INTERVAL_S" not in extra:
            env.pop("SLUICE_FLUSH_INTERVAL_S", None)
        return env


def _probe(n: int, tenant: str, now_ms: int, campaign: str | None = None) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "email_sent",
        "occurred_at": now_ms,
        "tenant_id": tenant,
        "source": "bench-probe",
        "sequence_step_id": "probe-step",
        "email_id": f"probe-email-{n}-{uuid.uuid4().hex[:8]}",
        "campaign_id": campaign or f"probe-{n}",
        "mailbox_id": "probe-mbx",
        "lead_id": f"probe-lead-{n}",
    }


CHECKPOINT_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*checkpoint: (\d+) events"
)


def checkpoint_gaps(
    dep: BenchDeployment, skip_lines: int, window: tuple[float, float]
) -> dict[str, float | int] | None:
    """Seconds between the worker's checkpoints that carried events, during the window
    (from its log, local time; checkpoints of 0 events only finish a previous one's work)."""
    times = []
    for line in dep.log_tail(10**9).splitlines()[skip_lines:]:
        m = CHECKPOINT_LINE.match(line)
        if m and int(m.group(2)) > 0:
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if window[0] <= at <= window[1]:
                times.append(at)
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    if not gaps:
        return None
    return {"count": len(gaps), "median": round(gaps[len(gaps) // 2], 2), "max": round(gaps[-1], 2)}


class Poller(threading.Thread):
    """Polls the probes' rows through the worker; first-seen time per campaign id."""

    def __init__(self, dep: BenchDeployment, every: float) -> None:
        super().__init__(name="probe-poller", daemon=True)
        self.dep, self.every = dep, every
        self.seen: dict[str, float] = {}
        self.query_s: list[float] = []
        self.starts: list[float] = []
        self.errors = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.time()
            self.starts.append(t0)
            try:
                rows = live.query(self.dep, PROBE_SQL)
            except Exception:  # noqa: BLE001 - a slow or refused poll is counted, not fatal
                self.errors += 1
                rows = []
            t1 = time.time()
            self.query_s.append(t1 - t0)
            for (campaign,) in rows:
                self.seen.setdefault(campaign, t1)
            self.stop_event.wait(max(0.0, self.every - (t1 - t0)))


def run(
    ctx: RunContext,
    wl: BenchWorkload,
    rate: float,
    *,
    rate_source: str,
    seconds: float = 30.0,
    probe_every: float = 0.05,
    poll_every: float = 0.1,
    seed: int = 1,
) -> dict[str, Any]:
    """Measure both latencies at ``rate`` events/s for ``seconds``; the figures as a dict."""
    n = max(1, int(rate * seconds))
    events = wl.events[:n] if len(wl.events) >= n else bench_workload.build(n, seed).events
    encoded = live.encode(events)
    tenants = sorted({f.tenant_id for f in wl.facts}) or ["acme-0"]
    problems: list[str] = []
    label = "latency"
    rs = live.rsyslog(ctx.root / label)
    try:
        # deferred: requests are read and stamped, parsed only once every probe is in
        # ClickHouse (this process also paces the producer: parsing ~7,000 PostHog events
        # a second beside it delayed the very arrivals it stamps)
        with live.TimedReceiver(deferred=True) as rx:
            env = live.WORKER_ENV | sink_env(rx, rs)
            dep = live.deployment(ctx, label, cls=DefaultIntervalDeployment, sink_env=env)
            dep.run("topics", "create")
            dep.run("olap", "migrate")
            interval = live.flush_interval(dep)
            dep.start_worker()
            poller = Poller(dep, poll_every)
            try:
                out = _measure(
                    dep, rx, events, encoded, tenants, rate, seconds, probe_every, poller, problems
                )
            finally:
                poller.stop_event.set()
                if dep.worker is not None and dep.worker.poll() is None:
                    code = dep.stop_worker(signal.SIGTERM)
                    if code != 0:
                        problems.append(f"worker exited {code} on SIGTERM")
                dep.close()
    finally:
        if rs is not None:
            rs.stop()
    return {
        "rate_target": rate,
        "rate_source": rate_source,
        "seconds": seconds,
        "checkpoint_interval_s": interval,
        "checkpoint_interval_source": "production default: SLUICE_FLUSH_INTERVAL_S not set",
        **out,
        "ok": not problems,
        "problems": problems,
    }


def _measure(
    dep: BenchDeployment,
    rx: live.TimedReceiver,
    events: list[dict[str, Any]],
    encoded: list[live.Encoded],
    tenants: list[str],
    rate: float,
    seconds: float,
    probe_every: float,
    poller: Poller,
    problems: list[str],
) -> dict[str, Any]:
    codec_probe = live.Codec()
    every_partition = 8 * dep.partitions
    live.wait_until(
        lambda: len(live.event_partitions(dep, live.status(dep))) == every_partition,
        180,
        "the worker assigned every event partition",
        dep,
    )
    p, errors = live.producer(dep.bootstrap, linger_ms=5), []

    def send_event(event: dict[str, Any]) -> None:
        (family, key, value) = live.encode([event], codec_probe)[0]
        live.send(p, dep.topic(family), key, value, errors)
        p.poll(0)

    # warm-up: one probe all the way to ClickHouse before anything is timed
    send_event(_probe(-1, tenants[0], int(time.time() * 1000), campaign="warmup-probe"))
    p.flush(30)
    warm = "SELECT count() FROM campaign_analytics_v WHERE campaign_id = 'warmup-probe'"
    live.wait_until(lambda: live.query(dep, warm)[0][0] > 0, 180, "the warm-up probe", dep)

    n = len(events)
    produced: dict[str, float] = {}  # event_id → first produce time (epoch s)
    probes: dict[str, float] = {}  # probe campaign id → produce time
    poller.start()
    i = k = 0
    start = time.monotonic()
    started_wall = time.time()
    log_mark = len(dep.log_tail(10**9).splitlines())
    next_probe = start
    end = start + seconds
    while True:
        now = time.monotonic()
        due = min(n, int((now - start) * rate) + 1)
        while i < due:
            family, key, value = encoded[i]
            produced.setdefault(events[i]["event_id"], time.time())
            live.send(p, dep.topic(family), key, value, errors)
            i += 1
        if now >= next_probe and now < end:
            probe = _probe(k, tenants[k % len(tenants)], int(time.time() * 1000))
            family, key, value = live.encode([probe], codec_probe)[0]
            t = time.time()
            probes[probe["campaign_id"]] = t
            produced[probe["event_id"]] = t
            live.send(p, dep.topic(family), key, value, errors)
            k += 1
            next_probe += probe_every
        p.poll(0)
        if i >= n and now >= end:
            break
        live.check_alive(dep)
        time.sleep(0.002)
    produce_s = time.monotonic() - start
    left = p.flush(60)
    if left or errors:
        problems.append(f"producer: {left} undelivered, errors {errors[:3]}")
    window = (started_wall, time.time())

    want_posthog = {
        posthog_uuid(e["event_id"]): e["event_id"] for e in events if "posthog" in sink_targets(e)
    }
    workload_ids = {e["event_id"] for e in events}
    probe_ids = [eid for eid in produced if eid not in workload_ids]
    for eid in probe_ids:
        want_posthog[posthog_uuid(eid)] = eid

    def complete() -> bool:
        if not all(c in poller.seen for c in probes):
            return False  # (a checkpoint flushes the sinks before it writes its rows)
        rx.settle()
        with rx.lock:
            return all(u in rx.arrived for u in want_posthog)

    try:
        live.wait_until(complete, 120, "every probe in ClickHouse and every event at PostHog", dep)
    except TimeoutError as exc:
        problems.append(str(exc).splitlines()[0])
    poller.stop_event.set()
    poller.join(15)
    rx.settle()

    olap = [poller.seen[c] - t for c, t in probes.items() if c in poller.seen]
    with rx.lock:
        arrived = dict(rx.arrived)
    posthog = [arrived[u] - produced[eid] for u, eid in want_posthog.items() if u in arrived]
    probes_posthog = [
        arrived[posthog_uuid(eid)] - produced[eid]
        for eid in probe_ids
        if posthog_uuid(eid) in arrived
    ]
    periods = [b - a for a, b in zip(poller.starts, poller.starts[1:], strict=False)]
    missing_olap = len(probes) - len(olap)
    missing_posthog = len(want_posthog) - len(posthog)
    if missing_olap:
        problems.append(f"{missing_olap} of {len(probes)} probes never seen in ClickHouse")
    if missing_posthog:
        problems.append(f"{missing_posthog} of {len(want_posthog)} events never reached PostHog")
    return {
        "events": n,
        "probes": len(probes),
        "probe_every_s": probe_every,
        "rate_achieved": n / produce_s,
        "produce_seconds": produce_s,
        "observed_checkpoint_gaps_s": checkpoint_gaps(dep, log_mark, window),
        "clickhouse_ms": live.summary_ms(olap),
        "posthog_ms": live.summary_ms(posthog),
        "posthog_probes_ms": live.summary_ms(probes_posthog),
        "polling": {
            "every_s": poller.every,
            "mean_period_ms": round(1000 * sum(periods) / len(periods), 1) if periods else None,
            "query_ms": live.summary_ms(poller.query_s),
            "errors": poller.errors,
            "note": "first-seen = when the answer arrived: an upper bound, resolution one "
            "polling period plus a query",
        },
    }
