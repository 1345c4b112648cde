"""Sluice against its bounds and its peers, in one run: ``python -m bench.run``.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m bench.run [--events 200000]
        [--only limit,naive,peer,sluice] [--no-sinks] [--posthog-extras]

Produces one seeded workload (:mod:`bench.workload`) once into fresh topics (a topic
prefix of its own, 4 partitions, Sluice's Avro codec via ``sluice produce``), then runs
each contender over the same topics with its own consumer group, one after the other:

* ``limit``  — confluent-kafka batch consume + codec + routing + dict counters
  (:mod:`bench.limit`);
* ``naive``  — a per-event faust-streaming agent counting in a Table (:mod:`bench.naive`);
* ``peer``   — Quix Streams group_by + 1-day tumbling window count (:mod:`bench.peer`);
* ``sluice`` — the real worker, every sink on, checked exact (:mod:`bench.sluice_worker`).

Prints events/s and peak RSS side by side and the ratios sluice/naive, sluice/peer,
sluice/limit; writes ``bench/results/<date>.json`` and a PNG next to it.

Three more measurements, each on topics of its own, on request:

* ``--latency``  — produce → ClickHouse and produce → PostHog at half the sluice
  contender's throughput (or ``--rate``), production checkpoint interval
  (:mod:`bench.latency`);
* ``--scaling``  — one worker, then two in one group, sharing ``sluice olap serve``
  (:mod:`bench.scaling`);
* ``--memory``   — RSS of one worker holding N emails in flight (:mod:`bench.memory`).
  ``--only none --memory`` runs it alone.
* ``--skew``     — one tenant sends half of all email: per-worker shares and throughput
  for 1, 2 and 4 workers, email key against tenant key (:mod:`bench.skew`);
  ``--only none --skew`` runs it alone.
* ``--restore``  — restarts (SIGTERM, kill -9), a lost local store and a scale-out at N
  emails of state (:mod:`bench.restore`). ``--only none --restore`` runs it alone.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bench import workload as bench_workload
from bench.measure import Result, RunContext, busy_since, cpu_times, wait_quiet
from bench.plot import plot

CONTENDERS = ("limit", "naive", "peer", "sluice")
RESULTS = Path(__file__).resolve().parent / "results"

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
console = Console()


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = kb / 2**20
    except (OSError, ValueError, IndexError):
        pass
    from importlib.metadata import version

    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "faust_streaming": version("faust-streaming"),
        "confluent_kafka": version("confluent-kafka"),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _failed(name: str, exc: BaseException) -> Result:
    console.print(f"[red]{name} failed:[/red] {exc}")
    return Result(name, 0, 0.0, 0, False, [f"{type(exc).__name__}: {exc}"[:2000]])


def _ratio(a: Result, b: Result, attr: str) -> float | None:
    """a/b of one figure; None when either contender failed (no ratio of bad figures)."""
    if not (a.verified and b.verified):
        return None
    x, y = getattr(a, attr), getattr(b, attr)
    return x / y if y else None


def _fmt_ratio(x: float | None) -> str:
    return "n/a (failed)" if x is None else f"{x:.3f}×"


def report(results: list[Result]) -> dict[str, dict[str, float | None]]:
    """Print the figures and the ratios; return the ratios."""
    table = Table(title="contenders (same topics, same events, one after the other)")
    for col in ("contender", "events", "seconds", "events/s", "peak RSS MiB", "verified"):
        table.add_column(col, justify="left" if col in ("contender", "verified") else "right")
    for r in results:
        table.add_row(
            r.name,
            f"{r.events:,}",
            f"{r.seconds:,.1f}",
            f"{r.events_per_s:,.0f}" if r.verified else "[red]—[/red]",
            f"{r.peak_rss_mb:,.0f}",
            "[green]exact[/green]" if r.verified else "[red]FAILED[/red]",
        )
    console.print(table)
    for r in results:
        for p in r.problems:
            console.print(f"[red]{r.name}:[/red] {p}")

    for r in results:
        alone, sdk = r.detail.get("posthog_sink_alone"), r.detail.get("posthog_sdk_capture")
        if alone:
            console.print(
                f"PostHog sink alone: {alone['events_per_s']:,.0f} events/s "
                f"({alone['delivered']:,} of {alone['events']:,} delivered)"
            )
        if sdk:
            console.print(
                f"posthog SDK capture(): {sdk['capture_calls_per_s']:,.0f} calls/s, "
                f"{sdk['dropped']:,} of {sdk['events']:,} dropped by its queue"
            )

    by = {r.name: r for r in results}
    ratios: dict[str, dict[str, float | None]] = {}
    rt = Table(title="ratios (sluice contender / other)")
    for col in ("ratio", "throughput", "peak RSS"):
        rt.add_column(col, justify="left" if col == "ratio" else "right")
    for sluice in (r for r in results if r.name.startswith("sluice")):
        for other in ("naive", "peer", "limit", "limit-after"):
            if other not in by:
                continue
            label = f"{sluice.name}/{other}"
            ratios[label] = {
                "events_per_s": _ratio(sluice, by[other], "events_per_s"),
                "peak_rss": _ratio(sluice, by[other], "peak_rss_bytes"),
            }
            rt.add_row(
                label,
                _fmt_ratio(ratios[label]["events_per_s"]),
                _fmt_ratio(ratios[label]["peak_rss"]),
            )
    if ratios:
        console.print(rt)
    return ratios


def _extra(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    console.print(f"[bold]{name}[/bold] …")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a broken measurement must not hide the others
        traceback.print_exc()
        console.print(f"[red]{name} failed:[/red] {exc}")
        out = {"ok": False, "problems": [f"{type(exc).__name__}: {exc}"[:2000]]}
    out["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    for p in out.get("problems", []):
        console.print(f"[red]{name}:[/red] {p}")
    return out


def run_extras(
    ctx: RunContext,
    wl: bench_workload.BenchWorkload,
    results: list[Result],
    latency: bool,
    rate: float | None,
    latency_seconds: float,
    scaling: bool,
    memory: bool,
    sizes: list[int],
    seed: int,
    state_env: dict[str, str] | None = None,
    memory_restart: bool = False,
    restore: bool = False,
    restore_sizes: list[int] | None = None,
    restore_partitions: int = 6,
) -> dict[str, dict[str, Any]]:
    """The latency, scaling, memory and restore measurements asked for, one after the
    other."""
    extras: dict[str, dict[str, Any]] = {}
    if latency:
        from bench import latency as bench_latency

        sluice = next((r for r in results if r.name == "sluice" and r.verified), None)
        use, source = rate, "--rate"  # asked for: wins over the contender's
        if use is None and sluice is not None:
            use, source = sluice.events_per_s / 2, "half the sluice contender's, this run"
        if use is None:
            extras["latency"] = {"ok": False, "problems": ["no sluice result and no --rate"]}
        else:
            extras["latency"] = _extra(
                "latency",
                lambda: bench_latency.run(
                    ctx, wl, use, rate_source=source, seconds=latency_seconds, seed=seed
                ),
            )
            print_latency(extras["latency"])
    if scaling:
        from bench import scaling as bench_scaling

        extras["scaling"] = _extra("scaling", lambda: bench_scaling.run(ctx, wl))
        print_scaling(extras["scaling"])
    if memory:
        from bench import memory as bench_memory

        extras["memory"] = _extra(
            "memory", lambda: bench_memory.run(ctx, sizes, state_env, memory_restart)
        )
        print_memory(extras["memory"])
    if restore:
        from bench import restore as bench_restore

        extras["restore"] = _extra(
            "restore",
            lambda: bench_restore.run(
                ctx, restore_sizes or [1_000_000], restore_partitions, state_env
            ),
        )
        print_restore(extras["restore"])
    return extras


def latency_series(lat: dict[str, Any] | None) -> dict[str, dict[str, float]] | None:
    """The latency panel's series: produce → ClickHouse (probes), produce → PostHog."""
    if not lat or "clickhouse_ms" not in lat:
        return None
    keep = ("p50", "p99", "max")
    return {
        "→ ClickHouse": {k: lat["clickhouse_ms"][k] for k in keep},
        "→ PostHog": {k: lat["posthog_ms"][k] for k in keep},
    }


def print_latency(lat: dict[str, Any]) -> None:
    if "clickhouse_ms" not in lat:
        return
    table = Table(
        title=f"latency at {lat['rate_achieved']:,.0f} events/s ({lat['rate_source']}), "
        f"checkpoint every {lat['checkpoint_interval_s']:g} s"
    )
    for col in ("produce →", "p50 ms", "p99 ms", "max ms", "count"):
        table.add_column(col, justify="left" if col == "produce →" else "right")
    for label, key in (("ClickHouse (probes)", "clickhouse_ms"), ("PostHog", "posthog_ms")):
        f = lat[key]
        table.add_row(label, f"{f['p50']:,.0f}", f"{f['p99']:,.0f}", f"{f['max']:,.0f}",
                      f"{f['count']:,}")  # fmt: skip
    console.print(table)
    console.print(
        f"ClickHouse polled every {lat['polling']['every_s'] * 1000:.0f} ms "
        f"(mean period {lat['polling']['mean_period_ms']} ms, query p50 "
        f"{lat['polling']['query_ms']['p50']} ms): first-seen is an upper bound"
    )


def print_scaling(sc: dict[str, Any]) -> None:
    if "workers" not in sc:
        return
    for n, c in sc["workers"].items():
        rate = f"{c['events_per_s']:,.0f} events/s" if c.get("ok") else "[red]FAILED[/red]"
        console.print(f"  {n} worker(s): {rate}, peak RSS {c.get('peak_rss_mb')} MiB")
    if sc.get("ratio"):
        console.print(f"  2 workers / 1 worker: {sc['ratio']:.2f}×")


def print_memory(mem: dict[str, Any]) -> None:
    for s in mem.get("steps", []):
        if not s.get("ok"):
            console.print(f"  {s['emails']:,} emails: [red]FAILED[/red]")
            continue
        mib = {k: s[k] / 2**20 for k in ("rss_bytes", "peak_rss_bytes", "baseline_rss_bytes")}
        slope = s.get("bytes_per_email_slope")
        console.print(
            f"  {s['emails']:,} emails: RSS {mib['rss_bytes']:,.0f} MiB "
            f"(peak {mib['peak_rss_bytes']:,.0f}, idle {mib['baseline_rss_bytes']:,.0f}), "
            f"{s['bytes_per_email']:,.0f} B/email, "
            f"{s['bytes_per_email_over_baseline']:,.0f} over idle"
            + (f", slope {slope:,.0f}" if slope is not None else "")
        )
        store = s.get("state_store") or {}
        if store.get("kind") == "rocksdb":
            console.print(
                f"    state entries: {store['in_memory']:,} in memory, {store['on_disk']:,} "
                f"in RocksDB (budget {store['memory_items']:,})"
            )
        if r := s.get("restart"):
            console.print(
                f"    restarted: state rebuilt in {r['restore_seconds']:,} s, RSS "
                f"{r['rss_bytes'] / 2**20:,.0f} MiB (peak {r['peak_rss_bytes'] / 2**20:,.0f})"
            )


def print_skew(sk: dict[str, Any]) -> None:
    """The skew figures: per keying, the busiest worker's share and throughput ratios."""
    if "keyings" not in sk:
        return
    table = Table(
        title=f"skew: one tenant = {sk['agency_share_of_email_events']:.0%} of email events, "
        f"{sk['events']:,} events, {sk['partitions']} partitions"
    )
    columns = ("key", "workers", "busiest share", "÷ even", "ev/CPU-s", "×1", "ev/s wall", "×1 ")
    for col in columns:
        table.add_column(col, justify="left" if col == "key" else "right")
    for keying, k in sk["keyings"].items():
        for n, t in k["throughput"].items():
            share = k["share"][n]

            def fmt(figure: str, t: dict[str, Any] = t) -> tuple[str, str]:
                rate, ratio = t.get(figure), t.get(f"{figure}_ratio_to_1")
                return (
                    f"{rate:,}" if rate else "[red]FAILED[/red]",
                    f"{ratio:.2f}" if ratio else "—",
                )

            table.add_row(
                keying,
                n,
                f"{share['busiest_share']:.1%}",
                f"{share['busiest_over_even']:.2f}",
                *fmt("events_per_cpu_s"),
                *fmt("events_per_s"),
            )
    console.print(table)
    console.print(f"  assignment per number of workers: {sk.get('assignment')}")
    for keying, k in sk["keyings"].items():
        for n, c in k.get("concurrent", {}).items():
            rate = f"{c['events_per_s']:,}" if c.get("ok") else "[red]FAILED[/red]"
            console.print(
                f"  {keying} key, {n} worker(s) at once on this machine: {rate} events/s, "
                f"events per worker {c.get('events_per_worker')}"
            )


def print_restore(rs: dict[str, Any]) -> None:
    for s in rs.get("steps", []):
        if not s.get("ok"):
            console.print(f"  {s['emails']:,} emails: [red]FAILED[/red] {s.get('problems')}")
            continue
        cold = s["rebuild"]
        console.print(
            f"  {s['emails']:,} emails, {s['partitions']} partitions: cold start (store lost, "
            f"full rebuild) {cold['to_lag0_seconds']:,} s to lag 0, "
            f"{cold.get('rebuild_entries_per_s') or 0:,} entries/s, peak RSS "
            f"{cold['peak_rss_bytes'] / 2**20:,.0f} MiB = {cold['peak_over_steady']:.2f}x steady"
        )
        for key, what in (
            ("sigterm", "SIGTERM → restart"),
            ("kill9", "kill -9 → restart"),
            ("third_worker", "a third worker joins"),
        ):
            f = s[key]
            console.print(
                f"    {what}: {f['to_lag0_seconds']:,} s to lag 0 "
                f"({s['ratios_to_cold_start'][key]:.3f}x the cold start), "
                f"{f['changelog_entries_joined']:,} changelog entries joined, {f['modes']}"
            )
        console.print(f"    state on disk: {s['disk']['bytes_per_email']:,} bytes per email")


def _result_path(directory: Path, now: datetime) -> Path:
    path = directory / f"{now:%Y-%m-%d}.json"
    if path.exists():  # a second run that day keeps the first
        path = directory / f"{now:%Y-%m-%d-%H%M%S}.json"
    return path


@app.command()
def main(
    events: int = typer.Option(200_000, help="Events produced once and read by every contender."),
    only: str = typer.Option(",".join(CONTENDERS), help="Comma-separated contenders to run."),
    bootstrap: str = typer.Option(
        "127.0.0.1:9092", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."
    ),
    seed: int = typer.Option(1, help="Workload seed."),
    no_sinks: bool = typer.Option(
        False, "--no-sinks", help="Also run the worker with every sink off (sluice-nosinks)."
    ),
    posthog_extras: bool = typer.Option(
        False, help="Also measure the PostHog sink alone and the posthog SDK's capture()."
    ),
    http_store: bool = typer.Option(
        False,
        "--http-store",
        help="Also run the worker against an HTTP store (chDB in a process of its own, as a "
        "ClickHouse server): sluice-http (and sluice-nosinks-http with --no-sinks).",
    ),
    work_dir: Path | None = typer.Option(None, help="Scratch directory (default: a temp dir)."),
    keep: bool = typer.Option(False, help="Keep the scratch directory (logs, chDB store)."),
    timeout: float = typer.Option(1800, help="Seconds each contender may take."),
    results_dir: Path = typer.Option(RESULTS, help="Where the JSON and PNG go."),
    latency: bool = typer.Option(
        False, "--latency", help="Measure produce→ClickHouse and produce→PostHog latency."
    ),
    rate: float | None = typer.Option(
        None, help="Latency: events/s to produce (default: half the sluice contender's)."
    ),
    latency_seconds: float = typer.Option(30.0, help="Latency: seconds of paced production."),
    checkpoint_interval: float = typer.Option(
        2.0,
        help="The sluice contenders' SLUICE_FLUSH_INTERVAL_S (2, as every figure before "
        "2026-12-03; the product's default is 5).",
    ),
    scaling: bool = typer.Option(
        False, "--scaling", help="One worker, then two in one group (shared olap serve)."
    ),
    memory: bool = typer.Option(
        False, "--memory", help="RSS of one worker holding N emails in flight (long)."
    ),
    memory_emails: str = typer.Option(
        "100000,300000,1000000", help="Memory: comma-separated numbers of emails."
    ),
    memory_store: str = typer.Option(
        "rocksdb", help="Memory: the worker's SLUICE_STATE_STORE (rocksdb or memory)."
    ),
    memory_items: int = typer.Option(
        1_000_000, help="Memory: the worker's SLUICE_STATE_MEMORY_ITEMS (with rocksdb)."
    ),
    memory_restart: bool = typer.Option(
        False, "--memory-restart", help="Memory: then restart the worker (state rebuilt)."
    ),
    skew: bool = typer.Option(
        False, "--skew", help="One tenant half the email: 1/2/4 workers, email vs tenant key."
    ),
    skew_events: int | None = typer.Option(
        None, help="Skew: events of its workload (default: --events)."
    ),
    restore: bool = typer.Option(
        False,
        "--restore",
        help="Restarts, kill -9, a lost store and a scale-out at N emails of state (long).",
    ),
    restore_emails: str = typer.Option(
        "1000000", help="Restore: comma-separated numbers of emails."
    ),
    restore_partitions: int = typer.Option(6, help="Restore: partitions of its topics."),
) -> None:
    """Run the contenders over one workload and compare them."""
    signal.signal(signal.SIGTERM, _interrupt)  # clean up the contenders' processes
    wanted = [c.strip() for c in only.split(",") if c.strip() and c.strip() != "none"]
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        raise typer.BadParameter(f"unknown contender(s) {sorted(unknown)}; pick from {CONTENDERS}")
    if latency and rate is None and "sluice" not in wanted:
        raise typer.BadParameter("--latency without the sluice contender needs --rate")
    for name, value in (
        ("--rate", rate),
        ("--latency-seconds", latency_seconds),
        ("--checkpoint-interval", checkpoint_interval),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise typer.BadParameter(f"{name} {value}: a positive number is needed")
    sizes = [int(x) for x in memory_emails.replace("_", "").split(",") if x.strip()]
    if memory_store not in ("rocksdb", "memory"):
        raise typer.BadParameter(f"--memory-store {memory_store!r}: pick rocksdb or memory")
    state_env = {
        "SLUICE_STATE_STORE": memory_store,
        "SLUICE_STATE_MEMORY_ITEMS": str(memory_items),
    }
    contenders = bool(wanted or no_sinks or http_store)
    now = datetime.now(UTC)
    name = f"bench{now:%Y%m%d%H%M%S}{uuid.uuid4().hex[:4]}"
    prefix = f"{name}."
    # This process and its children build the topic catalog from the settings: point
    # them at this run's topics before anything caches the settings.
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    os.environ["SLUICE_TOPIC_PREFIX"] = prefix
    os.environ["SLUICE_TOPIC_PARTITIONS"] = "4"
    from sluice.settings import get_settings

    get_settings.cache_clear()

    if work_dir is None:
        root = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    else:
        root = work_dir / name
        root.mkdir(parents=True)
    t = time.perf_counter()
    wl = bench_workload.build(events, seed)
    console.print(
        f"workload: {events:,} events, {wl.chunks} chunks, {len(wl.facts):,} emails; "
        + ", ".join(f"{f} {n / events:.0%}" for f, n in wl.families().most_common())
        + f" ({time.perf_counter() - t:.1f}s)"
    )
    ctx = RunContext(
        bootstrap=bootstrap,
        prefix=prefix,
        root=root,
        events=events,
        expected=bench_workload.expected_counts(wl.events),
        expected_destinations=bench_workload.expected_destinations(wl.events),
        timeout=timeout,
        extra={"checkpoint_interval_s": checkpoint_interval},
    )
    from bench import limit, naive, peer, sluice_worker

    produce_s = 0.0
    if contenders:
        dep = sluice_worker.deployment(ctx, "produce")
        dep.run("topics", "create")
        t = time.perf_counter()
        dep.produce(wl.events)
        produce_s = time.perf_counter() - t
        console.print(f"produced {events:,} events to {prefix}events.* in {produce_s:.1f}s")

    runners: dict[str, Callable[[], Result]] = {
        "limit": lambda: limit.run(ctx),
        "naive": lambda: naive.run(ctx),
        "peer": lambda: peer.run(ctx),
        "sluice": lambda: sluice_worker.run(ctx, wl, posthog_extras=posthog_extras),
    }
    jobs = [(c, runners[c]) for c in CONTENDERS if c in wanted]
    if no_sinks:
        jobs.append(("sluice-nosinks", lambda: sluice_worker.run(ctx, wl, sinks=False)))
    if http_store:
        jobs.append(("sluice-http", lambda: sluice_worker.run(ctx, wl, http_store=True)))
        if no_sinks:
            jobs.append(
                (
                    "sluice-nosinks-http",
                    lambda: sluice_worker.run(ctx, wl, sinks=False, http_store=True),
                )
            )
    if "limit" in wanted and any(name.startswith("sluice") for name, _ in jobs):
        # the limit once more, last: the machine's speed drifts over a run (measured
        # 92,000-128,000 events/s within an hour), so every ratio is given against both
        jobs.append(("limit-after", lambda: limit.run(ctx, "limit-after")))
    results: list[Result] = []
    extras: dict[str, dict[str, Any]] = {}
    try:
        for contender, runner in jobs:
            # every contender starts on a quiet machine: the broker may still be busy
            # with what the previous one left (its changelog and repartition topics)
            quiet = wait_quiet()
            console.print(f"[bold]{contender}[/bold] … (machine {quiet:.0%} busy before)")
            load_before = os.getloadavg()[0]
            started = cpu_times()
            try:
                result = runner()
            except Exception as exc:  # one broken contender must not hide the others
                traceback.print_exc()
                result = _failed(contender, exc)
            # the machine may be shared: a 1-minute load above the core count taints figures
            result.detail["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            # both cores, everything on the machine (contender, broker, receivers, ...)
            result.detail["machine_busy"] = {"before": round(quiet, 3)}
            result.detail["machine_busy"]["during"] = round(busy_since(started), 3)
            results.append(result)
            if result.verified:
                console.print(
                    f"  {result.events_per_s:,.0f} events/s, "
                    f"peak RSS {result.peak_rss_mb:,.0f} MiB, exact"
                )
            else:
                console.print(f"  [red]FAILED[/red]: {'; '.join(result.problems)[:300]}")
        extras = run_extras(
            ctx,
            wl,
            results,
            latency,
            rate,
            latency_seconds,
            scaling,
            memory,
            sizes,
            seed,
            state_env,
            memory_restart,
            restore,
            [int(x) for x in restore_emails.replace("_", "").split(",") if x.strip()],
            restore_partitions,
        )
        if skew:
            from bench import skew as bench_skew

            skewed = bench_workload.build(skew_events or events, seed, heavy=0.5)
            extras["skew"] = _extra("skew", lambda: bench_skew.run(ctx, skewed))
            print_skew(extras["skew"])
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"scratch directory kept: {root}")

    ratios = report(results) if results else {}
    machine = _machine()
    for r in results:
        for key in ("quixstreams",):
            if key in r.detail:
                machine[key] = r.detail[key]
    out = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "events": events,
        "seed": seed,
        "topic_prefix": prefix,
        "partitions": 4,
        "families": dict(wl.families()),
        "produce_seconds": produce_s,
        "machine": machine,
        "results": [r.to_json() for r in results],
        "ratios": ratios,
        **extras,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = _result_path(results_dir, now)
    path.write_text(json.dumps(out, indent=2))
    png = plot(
        results,
        path.with_suffix(".png"),
        f"Sluice bench {now:%Y-%m-%d}: "
        + (f"{events:,} events, " if contenders or latency or scaling else "")
        + f"{machine['cores']} cores",
        latencies=latency_series(extras.get("latency")),
        scaling=extras.get("scaling"),
        memory=extras.get("memory"),
    )
    console.print(f"wrote {path}" + (f" and {png}" if png else ""))
    if not all(r.verified for r in results) or not all(x.get("ok") for x in extras.values()):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
