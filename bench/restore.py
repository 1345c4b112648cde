"""Restore: how fast a worker holding N emails of state is back after a restart, a kill -9,
the loss of its local store, and a scale-out.

For each N (``--restore-emails``), one deployment: topics of its own with
``--restore-partitions`` partitions (default 6, so a third worker takes a third), one
``sluice olap serve`` every worker writes to, sinks off, rollups on (checkpoint every 2 s),
the state store as the worker's default (``rocksdb``, ``--memory-items`` in memory), the
production session timeout (45 s), and static membership (``SLUICE_INSTANCE_ID`` per
worker). In order:

0. **build**: worker *a* consumes N ``email_sent`` + N ``email_delivered`` (64 tenants,
   1,000 campaigns, one lead per email: three state entries per email) while they are
   produced; its RSS when done is the *steady state*;
1. **SIGTERM**: *a* stops; 1 % more emails are produced; *a* restarts on the same data
   directory: seconds from its start to the group's lag 0 (every event partition
   committed to its end), how its partitions came back (reused / rebuilt, changelog
   entries joined), and whether the group's generation moved (static membership: it
   must not);
2. **kill -9**: 1 % more emails are produced and *a* is killed -9 while it consumes them
   (uncommitted work behind); restarted at once: seconds to lag 0;
3. **rebuild**: *a* stops, its local store is deleted (a new machine), *a* starts: seconds
   to lag 0 — the *cold start* every other figure is compared with — the changelog
   entries it read per second, and its peak RSS (the worker and its rebuild processes
   together) against the steady state;
4. **scale-out**: worker *b* joins *a* (rebuilding what it takes) and settles; then worker
   *c* joins the two and takes a third of the partitions: seconds from *c*'s start to
   lag 0.

At the end, exactness: the emails the workers hold and ``sum(sent)``, ``sum(delivered)``
over ``campaign_analytics_v`` equal every email produced. State on disk: the size of
*a*'s store directory after step 1, per email.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import live
from bench.measure import RssWatcher, RunContext
from bench.memory import _produce, emails
from tests._sluice import OlapServer

STEADY_S = 45.0  # the production session timeout: static members must not wait for it


def run(
    ctx: RunContext,
    sizes: list[int],
    partitions: int = 6,
    state_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    steps = [one(ctx, n, partitions, state_env or {}) for n in sizes]
    return {"steps": steps, "ok": all(s["ok"] for s in steps), "partitions": partitions}


def one(ctx: RunContext, n: int, partitions: int, state_env: dict[str, str]) -> dict[str, Any]:
    label = f"restore{n}"
    problems: list[str] = []
    out: dict[str, Any] = {"emails": n, "partitions": partitions}
    server = OlapServer(ctx.root / label / "olap-server").start()
    env = {
        **live.WORKER_ENV,
        **state_env,
        "KAFKA_SESSION_TIMEOUT_S": str(STEADY_S),
    }
    members = {
        name: live.deployment(
            ctx,
            label,
            name,
            sink_env={**env, "SLUICE_INSTANCE_ID": f"{label}-{name}"},
            flush_interval_s=2.0,
            clickhouse_url=server.url,
            partitions=partitions,
            session_timeout_s=STEADY_S,
        )
        for name in ("a", "b", "c")
    }
    a, b, c = members["a"], members["b"], members["c"]
    produced = 0

    def produce(count: int) -> float:
        nonlocal produced
        seconds = _produce(a, ctx.bootstrap, emails(count, seed=produced + 1, first=produced))
        produced += count
        return seconds

    try:
        a.run("topics", "create")
        a.run("olap", "migrate")
        # 0. build
        a.start_worker()
        _wait_assigned([a], partitions)
        watcher = _watch(a)
        started = time.monotonic()
        out["build"] = {"produce_seconds": produce(n)}
        live.wait_until(lambda: _lag(a) == 0, 2 * n / 2000 + 600, "the build consumed", a)
        out["build"]["seconds"] = round(time.monotonic() - started, 1)
        time.sleep(3.0)  # a checkpoint in flight
        out["build"] |= _rss(a, watcher)
        out["steady_rss_bytes"] = out["build"]["rss_bytes"]
        out["build"]["held"] = _held([a])

        # 1. SIGTERM, 1 % more emails while down, restart
        generation = live.status(a).get("generation")
        _stop(a, signal.SIGTERM, problems)
        out["disk"] = _disk(a, n)
        produce(max(1, n // 100))
        out["sigterm"] = _restart(a, [a], partitions, produced)
        out["sigterm"]["generation_unchanged"] = live.status(a).get("generation") == generation

        # 2. kill -9 while consuming 1 % more
        before = live.status(a).get("events", 0)
        producer = _background(lambda: produce(max(1, n // 100)))
        live.wait_until(
            lambda: live.status(a).get("events", 0) > before + n // 100,
            300,
            "a consuming before the kill",
            a,
        )
        uncommitted = _lag(a)
        _stop(a, signal.SIGKILL, problems)
        producer()
        out["kill9"] = _restart(a, [a], partitions, produced)
        out["kill9"]["lag_at_kill"] = uncommitted

        # 3. the local store lost: a full rebuild (the cold start)
        _stop(a, signal.SIGTERM, problems)
        shutil.rmtree(a.root / "var" / "state")
        out["rebuild"] = _restart(a, [a], partitions, produced, rss=True)
        out["rebuild"]["peak_over_steady"] = round(
            out["rebuild"]["peak_rss_bytes"] / out["steady_rss_bytes"], 3
        )

        # 4. b joins a, settles; then c joins both
        b.start_worker()
        live.wait_until(lambda: _settled([a, b], partitions), 900, "a and b settled", a, b)
        out["second_worker"] = {"restores": _restores(b)}
        out["third_worker"] = _restart(c, [a, b, c], partitions, produced, start_only=True)
        live.wait_until(lambda: _settled([a, b, c], partitions), 300, "a, b, c settled", a, c)
        out["third_worker"]["partitions"] = sorted(_restores(c))

        # exactness
        held = _held([a, b, c])
        if held != produced:
            problems.append(f"the workers hold {held:,} emails, produced {produced:,}")
        rows = live.query(a, "SELECT sum(sent), sum(delivered) FROM campaign_analytics_v")
        sent, delivered = (int(x) for x in rows[0])
        out["exact"] = {"emails": produced, "sent": sent, "delivered": delivered, "held": held}
        if (sent, delivered) != (produced, produced):
            problems.append(f"campaign_analytics: sent {sent:,}, delivered {delivered:,}")
        for m in (a, b, c):
            _stop(m, signal.SIGTERM, problems)
        # ratios against the same run's cold start
        cold = out["rebuild"]["to_lag0_seconds"]
        out["ratios_to_cold_start"] = {
            k: round(out[k]["to_lag0_seconds"] / cold, 3) for k in ("sigterm", "kill9")
        }
        out["ratios_to_cold_start"]["third_worker"] = round(
            out["third_worker"]["to_lag0_seconds"] / cold, 3
        )
    except Exception as exc:  # one broken size must not hide the others
        problems.append(f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        for m in members.values():
            m.close()
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        server.close()
    out["ok"] = not problems
    out["problems"] = problems
    return out


def _restart(
    dep: live.BenchDeployment,
    group: list[live.BenchDeployment],
    partitions: int,
    produced: int,
    rss: bool = False,
    start_only: bool = False,
) -> dict[str, Any]:
    """Start ``dep`` (its data directory as it is); seconds until its partitions are
    assigned, restored, and the group's lag is 0."""
    started = time.monotonic()
    dep.start_worker()
    assert dep.worker is not None
    watcher = RssWatcher(dep.worker.pid).start() if rss else None
    out: dict[str, Any] = {}
    live.wait_until(lambda: bool(_mine(dep)), 600, "partitions assigned", dep)
    out["assigned_seconds"] = round(time.monotonic() - started, 2)
    live.wait_until(lambda: _restored(dep), 1800, "state restored", dep)
    out["restored_seconds"] = round(time.monotonic() - started, 2)
    live.wait_until(lambda: _lag(dep) == 0, 1800, "lag 0", *group)
    out["to_lag0_seconds"] = round(time.monotonic() - started, 2)
    if watcher is not None:
        time.sleep(2.0)
        out |= _rss(dep, watcher)
    restores = _restores(dep)
    out["restores"] = restores
    out["modes"] = sorted({r["mode"] for r in restores.values()})
    out["changelog_entries_joined"] = sum(r["entries"] for r in restores.values())
    rebuilt = [r for r in restores.values() if r["mode"] == "rebuilt"]
    if rebuilt:
        entries = sum(r["entries"] for r in rebuilt)
        # the rebuilds overlap: entries over the span from the first start to the last end
        span = max(r["at"] for r in rebuilt) - min(r["at"] - r["seconds"] for r in rebuilt)
        out["rebuild_entries"] = entries
        out["rebuild_entries_per_s"] = round(entries / span) if span > 0 else None
    if not start_only:
        out["held"] = _held(group)
    return out


def _watch(dep: live.BenchDeployment) -> RssWatcher:
    assert dep.worker is not None
    return RssWatcher(dep.worker.pid).start()


def _rss(dep: live.BenchDeployment, watcher: RssWatcher) -> dict[str, int]:
    assert dep.worker is not None
    rss, _ = live.rss_kb(dep.worker.pid)
    return {"rss_bytes": rss * 1024, "peak_rss_bytes": watcher.stop()}


def _stop(dep: live.BenchDeployment, sig: int, problems: list[str]) -> None:
    code = dep.stop_worker(sig, timeout=300)
    if sig == signal.SIGTERM and code != 0:
        problems.append(f"{dep.root.name} exited {code} on SIGTERM")


def _background(fn: Callable[[], Any]) -> Callable[[], Any]:
    import threading

    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("v", fn()), daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(600)
        return result.get("v")

    return join


def _lag(dep: live.BenchDeployment) -> int:
    done, end = dep.offsets()
    return end - done


def _mine(dep: live.BenchDeployment) -> set[str]:
    return live.event_partitions(dep, live.status(dep))


def _restored(dep: live.BenchDeployment) -> bool:
    st = live.status(dep)
    mine = {int(a.rsplit(":", 1)[1]) for a in live.event_partitions(dep, st)}
    restore = st.get("restore") or {}
    done = {int(p) for p in restore.get("partitions", {})}
    return bool(mine) and not restore.get("restoring") and mine <= done


def _restores(dep: live.BenchDeployment) -> dict[str, dict[str, Any]]:
    """How the worker's partitions came back (asked again while it is too busy to say)."""
    for _ in range(30):
        found = (live.status(dep).get("restore") or {}).get("partitions", {})
        if found:
            return found
        time.sleep(1.0)
    return {}


def _settled(deps: list[live.BenchDeployment], partitions: int) -> bool:
    owned = [int(a.rsplit(":", 1)[1]) for d in deps for a in _mine(d) if "events.email" in a]
    return (
        sorted(owned) == list(range(partitions))
        and all(_restored(d) for d in deps)
        and (_lag(deps[0]) == 0)
    )


def _held(deps: list[live.BenchDeployment]) -> int:
    total = 0
    for d in deps:
        st = live.status(d)
        total += sum(p["emails"] for p in st.get("partitions", {}).values())
    return total


def _wait_assigned(deps: list[live.BenchDeployment], partitions: int) -> None:
    live.wait_until(
        lambda: sum(len(_mine(d)) for d in deps) == 8 * partitions,
        180,
        "every event partition assigned",
        *deps,
    )


def _disk(dep: live.BenchDeployment, n: int) -> dict[str, Any]:
    """The local store on disk (``du``), in all and per email."""
    path = Path(dep.root) / "var" / "state"
    used = int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])  # fmt: skip
    return {"state_bytes": used, "bytes_per_email": round(used / n, 1)}
