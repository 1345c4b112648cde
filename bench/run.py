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
"""

from __future__ import annotations

import json
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
from bench.measure import Result, RunContext
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
    sluice = by.get("sluice") or by.get("sluice-nosinks")
    ratios: dict[str, dict[str, float | None]] = {}
    rt = Table(title=f"ratios ({sluice.name if sluice else 'sluice'} / other)")
    for col in ("ratio", "throughput", "peak RSS"):
        rt.add_column(col, justify="left" if col == "ratio" else "right")
    for other in ("naive", "peer", "limit"):
        if other not in by or sluice is None:
            continue
        label = f"{sluice.name}/{other}"
        ratios[label] = {
            "events_per_s": _ratio(sluice, by[other], "events_per_s"),
            "peak_rss": _ratio(sluice, by[other], "peak_rss_bytes"),
        }
        rt.add_row(
            label, _fmt_ratio(ratios[label]["events_per_s"]), _fmt_ratio(ratios[label]["peak_rss"])
        )
    if ratios:
        console.print(rt)
    return ratios


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
    work_dir: Path | None = typer.Option(None, help="Scratch directory (default: a temp dir)."),
    keep: bool = typer.Option(False, help="Keep the scratch directory (logs, chDB store)."),
    timeout: float = typer.Option(1800, help="Seconds each contender may take."),
    results_dir: Path = typer.Option(RESULTS, help="Where the JSON and PNG go."),
) -> None:
    """Run the contenders over one workload and compare them."""
    signal.signal(signal.SIGTERM, _interrupt)  # clean up the contenders' processes
    wanted = [c.strip() for c in only.split(",") if c.strip()]
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        raise typer.BadParameter(f"unknown contender(s) {sorted(unknown)}; pick from {CONTENDERS}")
    now = datetime.now(UTC)
    name = f"bench{now:%Y%m%d%H%M%S}{uuid.uuid4().hex[:4]}"
    prefix = f"{name}."
    # This process and its children read their topics from the catalog, which reads the
    # settings: point both at this run's topics before anything caches them.
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    os.environ["SLUICE_TOPIC_PREFIX"] = prefix
    os.environ["SLUICE_TOPIC_PARTITIONS"] = "4"
    from sluice.settings import get_settings
    from topics.catalog import catalog

    get_settings.cache_clear()
    catalog.cache_clear()

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
    )
    from bench import limit, naive, peer, sluice_worker

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
    results: list[Result] = []
    try:
        for contender, runner in jobs:
            console.print(f"[bold]{contender}[/bold] …")
            load_before = os.getloadavg()[0]
            try:
                result = runner()
            except Exception as exc:  # one broken contender must not hide the others
                traceback.print_exc()
                result = _failed(contender, exc)
            # the machine may be shared: a 1-minute load above the core count taints figures
            result.detail["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            results.append(result)
            if result.verified:
                console.print(
                    f"  {result.events_per_s:,.0f} events/s, "
                    f"peak RSS {result.peak_rss_mb:,.0f} MiB, exact"
                )
            else:
                console.print(f"  [red]FAILED[/red]: {'; '.join(result.problems)[:300]}")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"scratch directory kept: {root}")

    ratios = report(results)
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
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = _result_path(results_dir, now)
    path.write_text(json.dumps(out, indent=2))
    png = plot(
        results,
        path.with_suffix(".png"),
        f"Sluice bench {now:%Y-%m-%d}: {events:,} events, {machine['cores']} cores",
    )
    console.print(f"wrote {path}" + (f" and {png}" if png else ""))
    if not all(r.verified for r in results):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
