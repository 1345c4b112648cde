"""Memory: resident memory of one worker holding the attribution state of N emails.

For each N (``--memory-emails``): a worker on topics, group and chDB store of its own,
sinks off, rollups on (checkpoint every 2 s, as the sluice contender); once it holds every
event partition its idle RSS is read (the baseline), then N ``email_sent`` and one
``email_delivered`` each (2·N events, 64 tenants, 1,000 campaigns, sends 50 ms apart,
delivered 30 s later) are generated, encoded and produced in chunks while the worker
consumes them. When it has consumed and checkpointed all 2·N: its RSS (``VmRSS``) and
peak (the higher of the polled peak and the kernel's ``VmHWM``), and the emails its
partitions hold (``/sluice/status/``). Bytes per email = RSS / N, and (RSS − baseline) / N;
between consecutive N the slope, which leaves every fixed cost out.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from avro_schemas.codec import Codec
from bench import live
from bench.measure import RssWatcher, RunContext
from bench.workload import START

TENANTS = tuple(f"mem-tenant-{i}" for i in range(64))
CHUNK = 50_000


def emails(n: int, seed: int = 1, first: int = 0) -> Iterator[dict[str, Any]]:
    """``email_sent`` then ``email_delivered`` for each of ``n`` emails (2·n events),
    numbered from ``first``."""
    rng = random.Random(seed)
    t0 = int(START.timestamp() * 1000)
    for i in range(first, first + n):
        campaign = f"mem-c-{i % 1000}"
        common = {
            "tenant_id": TENANTS[i % len(TENANTS)],
            "source": "mailer",
            "email_id": f"mem-em-{i}",
            "campaign_id": campaign,
            "mailbox_id": f"mbx-{i % 200}",
            "lead_id": f"lead-{i}",
        }
        sent_at = t0 + i * 50
        yield {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": "email_sent",
            "occurred_at": sent_at,
            "sequence_step_id": f"{campaign}-step-1",
            **common,
        }
        yield {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": "email_delivered",
            "occurred_at": sent_at + 30_000,
            **common,
        }


def run(
    ctx: RunContext,
    sizes: Sequence[int],
    state_env: dict[str, str] | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """``state_env``: the worker's state store settings (SLUICE_STATE_STORE, ...);
    ``restart``: then restart the worker and measure it rebuilding the state."""
    state_env = state_env or {}
    steps = [one(ctx, n, state_env, restart) for n in sizes]
    ok_steps = [s for s in steps if s["ok"]]
    for a, b in zip(ok_steps, ok_steps[1:], strict=False):
        b["bytes_per_email_slope"] = (b["rss_bytes"] - a["rss_bytes"]) / (b["emails"] - a["emails"])
    return {"steps": steps, "ok": all(s["ok"] for s in steps), "state": state_env}


def one(ctx: RunContext, n: int, state_env: dict[str, str], restart: bool) -> dict[str, Any]:
    total = 2 * n
    problems: list[str] = []
    out: dict[str, Any] = {"emails": n, "events": total}
    dep = live.deployment(
        ctx, f"mem{n}", sink_env={**live.WORKER_ENV, **state_env}, flush_interval_s=2.0
    )  # fmt: skip
    try:
        dep.run("topics", "create")
        dep.run("olap", "migrate")
        dep.start_worker()
        assert dep.worker is not None
        pid = dep.worker.pid
        every = 8 * dep.partitions
        live.wait_until(
            lambda: len(live.event_partitions(dep, live.status(dep))) == every,
            180,
            "the worker assigned every event partition",
            dep,
        )
        time.sleep(1.0)
        out["baseline_rss_bytes"] = live.rss_kb(pid)[0] * 1024
        watcher = RssWatcher(pid).start()
        started = time.monotonic()
        out["produce_seconds"] = _produce(dep, ctx.bootstrap, emails(n))
        timeout = total / 2000 + 300
        live.wait_until(
            lambda: (
                (st := live.status(dep)).get("events", 0) >= total
                and st.get("unflushed_events") == 0
            ),
            timeout,
            f"{total:,} events consumed and checkpointed",
            dep,
        )
        out["consumed_seconds"] = time.monotonic() - started
        time.sleep(1.0)  # a checkpoint in flight has reset unflushed_events already
        st = live.status(dep)
        rss, hwm = live.rss_kb(pid)
        peak = watcher.stop()
        held = sum(p["emails"] for p in st.get("partitions", {}).values())
        if held != n:
            problems.append(f"partitions hold {held:,} emails, produced {n:,}")
        out |= {
            "state_store": st.get("state_store"),
            "rss_bytes": rss * 1024,
            "peak_rss_bytes": max(peak, hwm * 1024),
            "state_emails": held,
            "per_partition": {p: v["emails"] for p, v in st.get("partitions", {}).items()},
            "bytes_per_email": rss * 1024 / n,
            "bytes_per_email_over_baseline": (rss * 1024 - out["baseline_rss_bytes"]) / n,
        }
        code = dep.stop_worker(signal.SIGTERM)
        if code != 0:
            problems.append(f"worker exited {code} on SIGTERM")
        if restart:
            out["restart"] = _restart(dep, n, problems)
    except Exception as exc:  # one broken size must not hide the others
        problems.append(f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        dep.close()
    out["ok"] = not problems
    out["problems"] = problems
    return out


def _restart(dep: live.BenchDeployment, n: int, problems: list[str]) -> dict[str, Any]:
    """Start the worker again: it rebuilds the state of all ``n`` emails from the
    changelog. Seconds until it holds them all, and its RSS then and at its peak."""
    started = time.monotonic()
    dep.start_worker()
    assert dep.worker is not None
    pid = dep.worker.pid
    watcher = RssWatcher(pid).start()

    def held() -> int:
        return sum(p["emails"] for p in live.status(dep).get("partitions", {}).values())

    live.wait_until(lambda: held() >= n, n / 5000 + 300, f"{n:,} emails restored", dep)
    seconds = time.monotonic() - started
    time.sleep(5.0)  # the first checkpoints rewrite rows (a batch at a time)
    rss, hwm = live.rss_kb(pid)
    peak = watcher.stop()
    store = live.status(dep).get("state_store")
    code = dep.stop_worker(signal.SIGTERM)
    if code != 0:
        problems.append(f"restarted worker exited {code} on SIGTERM")
    return {
        "restore_seconds": round(seconds, 1),
        "rss_bytes": rss * 1024,
        "peak_rss_bytes": max(peak, hwm * 1024),
        "state_store": store,
    }


def _produce(dep: live.BenchDeployment, bootstrap: str, events: Iterator[dict[str, Any]]) -> float:
    """Encode and produce in chunks (never all of them in memory); seconds it took."""
    codec, p, errors = Codec(), live.producer(bootstrap), []
    started = time.perf_counter()
    chunk: list[dict[str, Any]] = []

    def flush_chunk() -> None:
        for family, key, value in live.encode(chunk, codec):
            live.send(p, dep.topic(family), key, value, errors)
        p.poll(0)
        chunk.clear()

    for e in events:
        chunk.append(e)
        if len(chunk) >= CHUNK:
            flush_chunk()
    flush_chunk()
    left = p.flush(300)
    if left or errors:
        raise RuntimeError(f"produce: {left} not delivered, errors {errors[:3]}")
    return time.perf_counter() - started
