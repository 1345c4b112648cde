"""Contender *naive*: a per-event faust-streaming agent with a Table (see naive_app.py)."""

from __future__ import annotations

import sys

from bench.measure import Result, RunContext, run_child


def run(ctx: RunContext) -> Result:
    """Run the worker app as a subprocess until it has counted every event; verify it."""
    out = ctx.root / "naive.json"
    data_dir = ctx.root / "naive-data"
    data_dir.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "bench.naive_app",
        "--group",
        ctx.group("naive"),
        "--events",
        str(ctx.events),
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
    ]
    raw, peak = run_child(cmd, out, ctx.root / "naive.log", env=ctx.env(), timeout=ctx.timeout)
    return ctx.verify("naive", raw, peak)
