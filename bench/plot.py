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
    "sluice": "#1f77b4",
    "sluice-nosinks": "#6baed6",
    "naive": "#d62728",
    "peer": "#2ca02c",
}


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
) -> Path | None:
    """Write the PNG; None (and a message) if matplotlib is not installed.

    A failed contender gets an empty bar labelled FAILED: its speed is not a figure.
    ``latencies`` adds to (or overrides) the contenders' own ``latency_ms``.
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
    panels = 3 if latencies else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    names = [r.name for r in results]
    colours = [COLOURS.get(n, "#555555") for n in names]

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

    if latencies:
        add_latency_panel(axes[2], latencies)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
