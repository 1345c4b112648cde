"""Scaling: the same workload through ONE worker, then TWO workers of one consumer group.

Both configurations write their rollups to a shared store through ``sluice olap serve``
(a fresh server per configuration), so the only difference is the second worker; sinks
on as in the sluice contender (PostHog, OTLP and HEC at one local receiver, syslog at a
local rsyslogd when installed), checkpoint every 2 s. Each configuration has topics of its
own (4 partitions each) and a fresh consumer group: the workers are started, the harness
waits until the group holds every event partition (with two workers: each some, none
twice) so no rebalance cuts into the measurement, then produces the pre-encoded workload
as fast as the client goes.

Throughput = events / (first event consumed by any worker → every event consumed and
checkpointed by all: ``/sluice/status/`` says so and the group's committed offsets reach
the end), polled every 0.2 s. Checked exact like the sluice contender: offsets,
``campaign_analytics`` row for row against the reference, sinks' distinct ids.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from bench import live
from bench.measure import RssWatcher, RunContext
from bench.sluice_worker import campaign_rows, sink_env, sink_figures
from bench.workload import BenchWorkload, reference_campaign_rows
from tests._receivers import HttpReceiver
from tests._sluice import OlapServer


def run(ctx: RunContext, wl: BenchWorkload, workers: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    encoded = live.encode(wl.events)
    configs = {str(n): one(ctx, wl, encoded, n) for n in workers}
    rates = [c.get("events_per_s") for c in configs.values()]
    ok = all(c["ok"] for c in configs.values())
    ratio = rates[-1] / rates[0] if ok and len(rates) > 1 and rates[0] else None
    return {
        "events": len(wl.events),
        "partitions": 4,
        "store": "sluice olap serve (chDB over ClickHouse's HTTP interface), one per config",
        "workers": configs,
        "ratio": ratio,
        "ok": ok,
    }


def one(
    ctx: RunContext, wl: BenchWorkload, encoded: list[live.Encoded], workers: int
) -> dict[str, Any]:
    total = len(wl.events)
    label = f"scale{workers}"
    problems: list[str] = []
    server = OlapServer(ctx.root / label / "olap-server").start()
    rs = live.rsyslog(ctx.root / label)
    members = []
    out: dict[str, Any] = {"workers": workers}
    try:
        with HttpReceiver() as rx:
            env = live.WORKER_ENV | sink_env(rx, rs)
            members = [
                live.deployment(
                    ctx,
                    label,
                    f"w{i}",
                    sink_env=env,
                    flush_interval_s=2.0,
                    clickhouse_url=server.url,
                )
                for i in range(workers)
            ]
            members[0].run("topics", "create")
            members[0].run("olap", "migrate")
            for m in members:
                m.start_worker()
            watchers = [RssWatcher(m.worker.pid).start() for m in members if m.worker]
            try:
                out |= _measure(members, encoded, total, ctx.bootstrap, ctx.timeout)
                for m in members:
                    code = m.stop_worker(signal.SIGTERM)
                    if code != 0:
                        problems.append(f"{m.root.name} exited {code} on SIGTERM")
            finally:
                out["peak_rss_mb"] = [round(w.stop() / 2**20) for w in watchers]
                for m in members:
                    m.close()
            done, end = members[0].offsets()
            if done != total or end != total:
                problems.append(f"committed {done:,} of {end:,} offsets, produced {total:,}")
            expected = reference_campaign_rows(wl.facts)
            got = campaign_rows(members[0])
            wrong = {k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)}
            out["campaign_rows"] = len(got)
            if wrong:
                sample = [(k, got.get(k), expected.get(k)) for k in sorted(wrong)[:3]]
                problems.append(f"campaign_analytics: {len(wrong)} rows differ, e.g. {sample}")
            out["sinks"] = sink_figures(rx, rs, wl.events, problems)
    except Exception as exc:  # one broken configuration must not hide the other
        problems.append(f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        for m in members:
            m.close()
        if rs is not None:
            rs.stop()
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        server.close()
    out["ok"] = not problems
    out["problems"] = problems
    if not out["ok"]:
        out.pop("events_per_s", None)
    return out


def _measure(
    members: list[live.BenchDeployment],
    encoded: list[live.Encoded],
    total: int,
    bootstrap: str,
    timeout: float,
) -> dict[str, Any]:
    every = 8 * members[0].partitions

    def group_stable() -> bool:
        owned = [live.event_partitions(m, live.status(m)) for m in members]
        union = set().union(*owned)
        return len(union) == every == sum(map(len, owned)) and all(owned)

    t = time.monotonic()
    live.wait_until(group_stable, 240, "the group holding every event partition", *members)
    join_s = time.monotonic() - t
    assigned = {m.root.name: sorted(live.event_partitions(m, live.status(m))) for m in members}
    produced: dict[str, Any] = {}

    def produce() -> None:
        try:
            produced["seconds"] = live.produce_all(members[0], encoded, bootstrap)
        except Exception as exc:  # noqa: BLE001 - reported below
            produced["error"] = str(exc)

    producer = threading.Thread(target=produce, name="scaling-producer", daemon=True)
    producer.start()
    first: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            live.check_alive(m)
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done in {timeout:.0f}s:\n{members[0].log_tail()}")
        sts = [live.status(m) for m in members]
        now = time.monotonic()
        consumed = sum(s.get("events", 0) for s in sts)
        if first is None and consumed > 0:
            first = now
        if (
            consumed >= total
            and all(s and s.get("unflushed_events") == 0 for s in sts)
            and members[0].offsets()[0] >= total
        ):
            end = time.monotonic()
            break
        time.sleep(0.2)
    producer.join(60)
    if "error" in produced:
        raise RuntimeError(produced["error"])
    assert first is not None
    moved = {
        m.root.name: sorted(live.event_partitions(m, s)) != assigned[m.root.name]
        for m, s in zip(members, sts, strict=True)
    }
    return {
        "seconds": end - first,
        "events_per_s": total / (end - first),
        "group_join_s": join_s,
        "produce_seconds": produced.get("seconds"),
        "events_per_worker": {
            m.root.name: s.get("events", 0) for m, s in zip(members, sts, strict=True)
        },
        "partitions_per_worker": {k: len(v) for k, v in assigned.items()},
        "rebalanced_during_run": any(moved.values()),
    }
