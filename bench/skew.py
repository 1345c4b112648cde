"""Skew: one tenant sends half of all email; the email key against the tenant key, for 1, 2
and 4 worker processes, in one run.

The workload is :func:`bench.workload.build` with ``heavy=0.5``: the tenant ``agency`` sends
half of all emails (so half of the email events, ~63 % of all traffic), the other tenants
share the rest, and every other family is spread over the tenants as usual. It runs over
topics of ``PARTITIONS`` partitions keyed two ways:

* ``email``  — the topic catalog of this release (email and warm-up by tenant and email);
* ``tenant`` — every family by tenant, the releases before it (the worker runs with the
  dev hook ``SLUICE_FAULT_LEGACY_KEYS``, which makes its catalog, and so its placement of
  state, exactly that: :mod:`dev.faults`).

**Share** — from the events each partition of the produced topics holds: N workers own
the partition numbers Faust's group assignment gives N members of one group, *observed*
(N workers started together, sinks off, their assignment read once the group is stable;
round robin if that fails). Reported: events per worker, the busiest worker's share, and
that share over the even one (1/N): the target is ≤ 1.3.

**Throughput** — a 2-core machine cannot run four workers side by side (nor two, with the
broker on the same cores), so each simulated worker is *measured alone*: the events of its
partitions (exactly those, with their keys and partitions) are produced to fresh topics
and the real ``sluice worker`` (sinks off, checkpoint every 2 s, its own chDB store)
consumes them; measured are the wall seconds from the start of production to every event
applied and the CPU seconds the worker process spent meanwhile (``/proc``: all its
threads). N workers with a core each finish when the slowest does: throughput(N) = events
/ max over workers of their seconds — by CPU seconds (what a worker costs, hardly touched
by what else runs on a shared machine) and by wall seconds (what this machine gave it);
the ratio is throughput(N) / throughput(1) of the same keying. What this leaves out, said
here: the broker, the store and the network as shared bottlenecks, and rebalances
(measured in tests/faults/test_scale_out.py).

**Concurrent** — what the cores allow: one worker, then two workers of one consumer
group *at once* (sharing ``sluice olap serve``, the real group assignment), per keying.

**Verified** — every measured worker's ``campaign_analytics_v`` rows; the rows of the N
workers summed per key equal the spec's query over the email facts (each worker counted
its partitions' emails: the sum is the table) — the same check as the sluice contender.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import live
from bench.measure import RssWatcher, RunContext, busy_since, cpu_times, wait_quiet
from bench.sluice_worker import campaign_rows
from bench.workload import CAMPAIGN_METRICS, BenchWorkload, reference_campaign_rows
from tests._sluice import FAULTY_SLUICE, SLUICE, OlapServer
from topics.catalog import Catalog
from topics.partitioner import partition_for
from topics.taxonomy import family_of

PARTITIONS = 8
WORKERS = (1, 2, 4)
KEYINGS = ("email", "tenant")
LEGACY = {"SLUICE_FAULT_LEGACY_KEYS": "1"}
ENV = {**live.WORKER_ENV, "SLUICE_STATE_STORE": "memory"}
# A shared machine is rarely quiet for long: each measured run waits at most this long for
# a quiet moment, and records how busy the machine was before and while it ran.
QUIET_LIMIT_S = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def encode(wl: BenchWorkload, keying: str) -> list[tuple[str, bytes, bytes, int]]:
    """(family, key, value, partition) of every event under ``keying``."""
    catalog = Catalog(partitions=PARTITIONS)
    out = []
    for (family, key, value), e in zip(live.encode(wl.events), wl.events, strict=True):
        if keying == "tenant":
            key = str(e["tenant_id"]).encode()
        out.append((family, key, value, partition_for(key, catalog.partitions)))
    return out


def round_robin(workers: int) -> list[list[int]]:
    """Partition numbers per worker, round robin (a balanced assignment)."""
    return [[p for p in range(PARTITIONS) if p % workers == w] for w in range(workers)]


def shares(
    records: list[tuple[str, bytes, bytes, int]], assignment: dict[int, list[list[int]]]
) -> dict[str, Any]:
    per_partition = Counter(p for *_, p in records)
    email = Counter(p for f, *_, p in records if f == "email")
    total = len(records)
    out: dict[str, Any] = {
        "events_per_partition": [per_partition[p] for p in range(PARTITIONS)],
        "email_events_per_partition": [email[p] for p in range(PARTITIONS)],
    }
    for n in WORKERS:
        per_worker = [sum(per_partition[p] for p in ps) for ps in assignment[n]]
        busiest = max(per_worker) / total
        out[str(n)] = {
            "events_per_worker": per_worker,
            "busiest_share": round(busiest, 4),
            "busiest_over_even": round(busiest * n, 3),
        }
    return out


def run(ctx: RunContext, wl: BenchWorkload) -> dict[str, Any]:
    reference = reference_campaign_rows(wl.facts)
    agency = sum(1 for e in wl.events if e["tenant_id"] == "agency" and _email(e))
    out: dict[str, Any] = {
        "events": len(wl.events),
        "partitions": PARTITIONS,
        "agency_share_of_email_events": round(agency / sum(map(_email, wl.events)), 4),
        # the agency's events of the families keyed by tenant sit on its tenant's partition
        # whatever the key of email: the floor of the busiest worker's share
        "agency_tenant_keyed_share_of_all_events": round(
            sum(
                1
                for e in wl.events
                if e["tenant_id"] == "agency"
                and family_of(e["event_type"]) not in ("email", "warmup")
            )
            / len(wl.events),
            4,
        ),
        "keyings": {},
        "problems": [],
    }
    assignment = {n: observed_assignment(ctx, n) if n > 1 else round_robin(1) for n in WORKERS}
    out["assignment"] = assignment
    for keying in KEYINGS:
        records = encode(wl, keying)
        share = shares(records, assignment)
        result: dict[str, Any] = {"share": share, "alone": {}, "throughput": {}}
        out["keyings"][keying] = result
        for n in WORKERS:
            runs = []
            for w, owned in enumerate(assignment[n]):
                subset = [r for r in records if r[3] in owned]
                label = f"skew-{keying}-{n}-{w}"
                runs.append(_alone(ctx, label, keying, subset))
            result["alone"][str(n)] = runs
            rows: dict[tuple, list[int]] = {}
            for r in runs:
                for key, values in r.pop("rows").items():
                    acc = rows.setdefault(key, [0] * len(CAMPAIGN_METRICS))
                    for i, v in enumerate(values):
                        acc[i] += v
            wrong = {
                k
                for k in reference.keys() | rows.keys()
                if tuple(rows.get(k, ())) != reference.get(k)
            }
            ok = not wrong and all(r["ok"] for r in runs)
            if wrong:
                out["problems"].append(f"{keying}, {n} workers: {len(wrong)} campaign rows differ")
            slowest = max(r["seconds"] for r in runs)
            costliest = max(r["cpu_seconds"] for r in runs)
            result["throughput"][str(n)] = {
                "seconds_per_worker": [round(r["seconds"], 2) for r in runs],
                "cpu_seconds_per_worker": [round(r["cpu_seconds"], 2) for r in runs],
                "events_per_s": round(len(records) / slowest) if ok else None,
                "events_per_cpu_s": round(len(records) / costliest) if ok else None,
                "verified": ok,
            }
        one = result["throughput"]["1"]
        for n in WORKERS:
            t = result["throughput"][str(n)]
            for figure in ("events_per_s", "events_per_cpu_s"):
                ok = one[figure] and t[figure]
                t[f"{figure}_ratio_to_1"] = round(t[figure] / one[figure], 3) if ok else None
        result["concurrent"] = {
            str(n): _concurrent(ctx, keying, records, n, reference) for n in (1, 2)
        }
    out["ok"] = not out["problems"]
    return out


def _email(e: dict[str, Any]) -> bool:
    return family_of(e["event_type"]) == "email"


def _deployment(
    ctx: RunContext, label: str, member: str = "", **kwargs: Any
) -> live.BenchDeployment:
    return live.deployment(
        ctx, label, member, sink_env=ENV, flush_interval_s=2.0, partitions=PARTITIONS, **kwargs
    )


def _start(dep: live.BenchDeployment, keying: str) -> None:
    if keying == "tenant":
        dep.start_worker(LEGACY, command=FAULTY_SLUICE)
    else:
        dep.start_worker(command=SLUICE)


def _produce(
    dep: live.BenchDeployment, records: list[tuple[str, bytes, bytes, int]], bootstrap: str
) -> float:
    p, errors = live.producer(bootstrap), []
    started = time.perf_counter()

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    for i, (family, key, value, partition) in enumerate(records):
        while True:
            try:
                p.produce(dep.topic(family), value, key, partition=partition, on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(300)
    if left or errors:
        raise RuntimeError(f"produce: {left} not delivered, errors {errors[:3]}")
    return time.perf_counter() - started


def _produce_in_background(
    dep: live.BenchDeployment, records: list, bootstrap: str
) -> threading.Thread:
    """Produce while the caller watches the workers (as fast as the client goes)."""
    errors: list[str] = []

    def run() -> None:
        try:
            _produce(dep, records, bootstrap)
        except Exception as exc:  # noqa: BLE001 - the watch times out and says why
            errors.append(str(exc))

    thread = threading.Thread(target=run, name="skew-producer", daemon=True)
    thread.start()
    return thread


def _alone(ctx: RunContext, label: str, keying: str, records: list) -> dict[str, Any]:
    """One worker over exactly ``records`` (their partitions), alone on the machine."""
    out: dict[str, Any] = {"events": len(records), "ok": False, "rows": {}}
    out["machine_busy_before"] = round(wait_quiet(limit_s=QUIET_LIMIT_S), 3)
    dep = _deployment(ctx, label)
    try:
        dep.run("topics", "create")
        dep.run("olap", "migrate")
        _start(dep, keying)
        every = {f"{dep.topic(f)}:{p}" for f in _families() for p in range(PARTITIONS)}
        live.wait_until(
            lambda: live.event_partitions(dep, live.status(dep)) >= every, 240, "assignment", dep
        )
        watcher = RssWatcher(dep.worker.pid).start() if dep.worker else None
        started = cpu_times()
        pid = dep.worker.pid if dep.worker else 0
        cpu = _cpu_seconds(pid)
        first = time.monotonic()  # the worker cannot consume before this
        producer = _produce_in_background(dep, records, ctx.bootstrap)
        applied, done = _watch([dep], len(records), ctx.timeout, cpu_of=pid)
        out["cpu_seconds"] = _applied_cpu[pid] - cpu
        producer.join(60)
        out["seconds"] = applied - first
        out["seconds_to_checkpointed"] = round(done - first, 2)
        out["machine_busy_during"] = round(busy_since(started), 3)
        out["events_per_s"] = round(len(records) / out["seconds"]) if out["seconds"] else None
        out["forwarded"] = live.status(dep).get("forwarded", 0)
        out["peak_rss_mb"] = round(watcher.stop() / 2**20) if watcher else None
        code = dep.stop_worker(signal.SIGTERM)
        out["rows"] = campaign_rows(dep)  # from the store, once the worker is gone
        out["ok"] = code == 0 and out["forwarded"] == 0
    finally:
        dep.close()
    return out


_applied_cpu: dict[int, float] = {}  # pid -> its CPU seconds when every event was applied


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, every thread (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _watch(
    deps: list[live.BenchDeployment], total: int, timeout: float, cpu_of: int = 0
) -> tuple[float, float]:
    """Poll the workers every 0.1 s: (every event applied, every event checkpointed: rows
    written and offsets committed). Timed from the start of production (the worker is
    already polling, so this understates its rate by the producer's head start, never
    overstates it; the worker's counter moves a batch of 5,000 at a time). Throughput is
    reckoned to the first figure: checkpoints during the run are in it, the last one (up
    to an interval later, whatever the number of events) is reported beside it."""
    applied = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in deps:
            live.check_alive(d)
        sts = [live.status(d) for d in deps]
        now = time.monotonic()
        consumed = sum(s.get("events", 0) for s in sts)
        if applied is None and consumed >= total:
            applied = now
            _applied_cpu[cpu_of] = _cpu_seconds(cpu_of)
        if (
            applied is not None
            and all(s.get("unflushed_events") == 0 for s in sts)
            and deps[0].offsets()[0] >= total
        ):
            return applied, now
        time.sleep(0.1)
    raise TimeoutError(deps[0].log_tail())


def _families() -> list[str]:
    from topics.taxonomy import FAMILIES

    return list(FAMILIES)


def observed_assignment(ctx: RunContext, workers: int) -> list[list[int]]:
    """The partition numbers Faust's group gives each of ``workers`` members (started
    together, nothing produced); round robin if the group does not settle."""
    label = f"skew-assign-{workers}"
    server = OlapServer(ctx.root / label / "olap-server").start()
    members = [_deployment(ctx, label, f"w{i}", clickhouse_url=server.url) for i in range(workers)]
    try:
        members[0].run("topics", "create")
        members[0].run("olap", "migrate")
        for m in members:
            m.start_worker()
        every = {f"{members[0].topic(f)}:{p}" for f in _families() for p in range(PARTITIONS)}

        def owned() -> list[set[int]]:
            return [
                {int(a.rsplit(":", 1)[1]) for a in live.event_partitions(m, live.status(m))}
                for m in members
            ]

        def stable() -> bool:
            tps = [live.event_partitions(m, live.status(m)) for m in members]
            return set().union(*tps) == every and sum(map(len, tps)) == len(every) and all(tps)

        live.wait_until(stable, 240, "the group holding every event partition", *members)
        return sorted(sorted(o) for o in owned())
    except Exception:  # noqa: BLE001 - the figures say which assignment they used
        return round_robin(workers)
    finally:
        for m in members:
            m.close()
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        server.close()


def _concurrent(
    ctx: RunContext, keying: str, records: list, workers: int, reference: dict
) -> dict[str, Any]:
    """``workers`` real workers of one group at once, sharing one ``sluice olap serve``."""
    busy = wait_quiet(limit_s=QUIET_LIMIT_S)
    label = f"skew-{keying}-together-{workers}"
    server = OlapServer(ctx.root / label / "olap-server").start()
    members = [_deployment(ctx, label, f"w{i}", clickhouse_url=server.url) for i in range(workers)]
    out: dict[str, Any] = {"workers": workers, "ok": False, "machine_busy_before": round(busy, 3)}
    try:
        members[0].run("topics", "create")
        members[0].run("olap", "migrate")
        for m in members:
            _start(m, keying)
        every = {f"{members[0].topic(f)}:{p}" for f in _families() for p in range(PARTITIONS)}

        def stable() -> bool:
            owned = [live.event_partitions(m, live.status(m)) for m in members]
            return (
                set().union(*owned) == every and sum(map(len, owned)) == len(every) and all(owned)
            )

        live.wait_until(stable, 240, "the group holding every event partition", *members)
        assigned = [
            sorted({int(a.rsplit(":", 1)[1]) for a in live.event_partitions(m, live.status(m))})
            for m in members
        ]
        started = cpu_times()
        first = time.monotonic()
        producer = _produce_in_background(members[0], records, ctx.bootstrap)
        applied, done = _watch(members, len(records), ctx.timeout)
        producer.join(60)
        seconds = applied - first
        out["seconds_to_checkpointed"] = round(done - first, 2)
        out["machine_busy_during"] = round(busy_since(started), 3)
        per_worker = [live.status(m).get("events", 0) for m in members]
        codes = [m.stop_worker(signal.SIGTERM) for m in members]
        got = campaign_rows(members[0])  # from the store, once the workers are gone
        wrong = {k for k in reference.keys() | got.keys() if got.get(k) != reference.get(k)}
        out.update(
            seconds=round(seconds, 2),
            events_per_s=round(len(records) / seconds) if seconds else None,
            partitions_per_worker=assigned,
            events_per_worker=per_worker,
            busiest_share=round(max(per_worker) / sum(per_worker), 4),
            campaign_rows_wrong=len(wrong),
        )
        out["ok"] = not wrong and all(c == 0 for c in codes)
    finally:
        for m in members:
            m.close()
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        server.close()
    return out
