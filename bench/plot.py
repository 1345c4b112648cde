"""The results as a PNG: throughput and peak memory per contender, latency when measured.

matplotlib is optional (``pip install -e '.[bench]'``); without it the run still prints
and writes its JSON, and says which extra would add the plot.

Latency hook: :func:`add_latency_panel` takes ``{contender: {"p50": ms, "p99": ms, ...}}``
and draws one grouped bar chart; :func:`plot` calls it with every contender's
``Result.latency_ms`` that is set, so whoever measures latency only fills that field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.measure import Result

COLOURS = {
    "limit": "#9e9e9e",
    "limit-after": "#bdbdbd",
    "sluice": "#1f77b4",
    "sluice-nosinks": "#6baed6",
    "naive": "#d62728",
    "peer": "#2ca02c",
    "→ ClickHouse": "#1f77b4",
    "→ PostHog": "#ff7f0e",
}


def add_scaling_panel(ax: Any, scaling: Mapping[str, Any]) -> None:
    """Events/s of one worker and of two in one group (``bench.scaling``'s figures)."""
    configs = scaling.get("workers", {})
    names = [f"{n} worker{'s' if n != '1' else ''}" for n in configs]
    values = [c.get("events_per_s") or 0 for c in configs.values()]
    bars = ax.bar(names, values, color=["#1f77b4", "#08519c"][: len(names)])
    for bar, c in zip(bars, configs.values(), strict=True):
        _label(ax, bar, f"{c['events_per_s']:,.0f}" if c.get("ok") else "FAILED")
    ratio = scaling.get("ratio")
    ax.set_ylabel("events/s")
    ax.set_title("scaling (shared olap serve)" + (f": {ratio:.2f}×" if ratio else ""))


def add_memory_panel(ax: Any, memory: Mapping[str, Any]) -> None:
    """RSS (and peak) against emails held (``bench.memory``'s figures)."""
    steps = [s for s in memory.get("steps", []) if s.get("ok")]
    xs = [s["emails"] for s in steps]
    ax.plot(xs, [s["rss_bytes"] / 2**20 for s in steps], "o-", label="RSS", color="#1f77b4")
    ax.plot(xs, [s["peak_rss_bytes"] / 2**20 for s in steps], "s--", label="peak",
            color="#6baed6")  # fmt: skip
    for s in steps:
        ax.annotate(f"{s['bytes_per_email']:,.0f} B/email", (s["emails"], s["rss_bytes"] / 2**20),
                    fontsize=7, ha="right", va="bottom")  # fmt: skip
    ax.set_xlim(0, max(xs) * 1.08)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("emails in flight")
    ax.set_ylabel("MiB")
    ax.set_title("worker memory")
    ax.legend(fontsize=8)


def add_latency_panel(ax: Any, latencies: Mapping[str, Mapping[str, float]]) -> None:
    """Grouped bars of latency percentiles (ms) per contender on ``ax``.

    ``latencies``: ``{"sluice": {"p50": 12.0, "p99": 80.0}, "peer": {...}}``; percentiles
    are drawn in the order of the first contender's mapping.
    """
    names = list(latencies)
    percentiles = list(next(iter(latencies.values()))) if names else []
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(percentiles))]
        values = [latencies[name].get(p, 0.0) for p in percentiles]
        ax.bar(xs, values, width, label=name, color=COLOURS.get(name))
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(percentiles))])
    ax.set_xticklabels(percentiles)
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title("latency")
    ax.legend(fontsize=8)


def _label(ax: Any, bar: Any, text: str) -> None:
    x = bar.get_x() + bar.get_width() / 2
    if bar.get_height() > 0:
        ax.annotate(text, (x, bar.get_height()), ha="center", va="bottom", fontsize=8)
    else:  # an empty (failed) bar: label it at the bottom of the axes, log scale or not
        ax.annotate(
            text, (x, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=8,
            color="red",
        )  # fmt: skip


def plot(
    results: Sequence[Result],
    path: Path,
    title: str,
    latencies: Mapping[str, Mapping[str, float]] | None = None,
    scaling: Mapping[str, Any] | None = None,
    memory: Mapping[str, Any] | None = None,
) -> Path | None:
    """Write the PNG; None (and a message) if matplotlib is not installed.

    A failed contender gets an empty bar labelled FAILED: its speed is not a figure.
    ``latencies`` adds to (or overrides) the contenders' own ``latency_ms``; ``scaling``
    and ``memory`` (``bench.scaling`` / ``bench.memory`` figures) add a panel each.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is missing (pip install -e '.[bench]')")
        return None
    latencies = {
        **{r.name: r.latency_ms for r in results if r.latency_ms and r.verified},
        **(latencies or {}),
    }
    scaling = scaling if scaling and scaling.get("workers") else None
    memory = memory if memory and any(s.get("ok") for s in memory.get("steps", [])) else None
    panels = 2 * bool(results) + bool(latencies) + bool(scaling) + bool(memory)
    if not panels:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    axes = list(axes[0])
    names = [r.name for r in results]
    colours = [COLOURS.get(n, "#555555") for n in names]
    if not results:
        axes = [None, None, *axes]

    _contenders(axes, results, names, colours)
    rest = axes[2:]
    if latencies:
        add_latency_panel(rest.pop(0), latencies)
    if scaling:
        add_scaling_panel(rest.pop(0), scaling)
    if memory:
        add_memory_panel(rest.pop(0), memory)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _contenders(axes: list[Any], results: Sequence[Result], names: list[str],
                colours: list[str]) -> None:  # fmt: skip
    if not results:
        return
    ax = axes[0]
    bars = ax.bar(names, [r.events_per_s if r.verified else 0 for r in results], color=colours)
    for bar, r in zip(bars, results, strict=True):
        label = f"{r.events_per_s:,.0f}" if r.verified else "FAILED"
        _label(ax, bar, label)
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log)")
    ax.set_title("throughput")

    ax = axes[1]
    bars = ax.bar(names, [r.peak_rss_mb if r.verified else 0 for r in results], color=colours)
    for bar, r in zip(bars, results, strict=True):
        _label(ax, bar, f"{r.peak_rss_mb:,.0f}" if r.verified else "FAILED")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("peak memory")
