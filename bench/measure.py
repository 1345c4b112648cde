"""Measuring a contender: its process's peak RSS, its result file, the verdict.

Every contender runs as its own process so its memory is its own (the harness holds the
whole workload in memory; measuring in-process would blur that). The child reports its
own timing — first event received to last event counted, so start-up and group joins are
out of every figure alike — and its counts in a JSON result file; the harness polls the
child's RSS (``/proc``, the child and its descendants) until that file appears, then
stops the child. A contender whose counts differ from the expected ones is *failed*: its
speed is reported as such and never enters a ratio.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class Result:
    """One contender's figures in one run."""

    name: str
    events: int
    seconds: float
    peak_rss_bytes: int
    verified: bool
    problems: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    # filled by another engineer's latency work: {"p50": ms, "p99": ms, ...}
    latency_ms: dict[str, float] | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "seconds": self.seconds,
            # a contender that miscounted has no speed worth quoting
            "events_per_s": self.events_per_s if self.verified else None,
            "peak_rss_mb": self.peak_rss_mb,
            "verified": self.verified,
            "problems": self.problems,
            "latency_ms": self.latency_ms,
            "detail": self.detail,
        }


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_since(start: tuple[int, int]) -> float:
    """Fraction of the machine's CPU (all cores) busy since ``start`` (a :func:`cpu_times`)."""
    busy, total = cpu_times()
    return (busy - start[0]) / max(1, total - start[1])


def wait_quiet(threshold: float = 0.10, window_s: float = 2.0, limit_s: float = 120.0) -> float:
    """Wait until the machine was less than ``threshold`` busy over ``window_s`` (the broker
    compacting and deleting what the previous contender left, say), at most ``limit_s``.
    Returns the busy fraction of the last window."""
    deadline = time.monotonic() + limit_s
    while True:
        start = cpu_times()
        time.sleep(window_s)
        busy = busy_since(start)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def _status_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    kids = [int(c) for c in fh.read().split()]
            except FileNotFoundError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


class RssWatcher:
    """Peak resident memory of a process tree, polled from ``/proc`` in a thread.

    The peak is the larger of the highest polled sum over the tree and the kernel's own
    high-water mark (``VmHWM``) of the main process, which catches spikes between polls.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _sample(self) -> None:
        tree = [self.pid, *_descendants(self.pid)]
        total = sum(_status_kb(p, "VmRSS") for p in tree)
        self.peak_kb = max(self.peak_kb, total, _status_kb(self.pid, "VmHWM"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> RssWatcher:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Take a last sample, stop polling; return the peak in bytes (idempotent)."""
        if not self._stop.is_set():
            self._sample()
            self._stop.set()
            self._thread.join()
        return self.peak_kb * 1024


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """Write a child's result atomically: the harness must never read half a file."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(path)


def stop_process(proc: subprocess.Popen, grace: float = 30) -> int | None:
    """SIGTERM the child's process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


def run_child(
    cmd: list[str],
    result_path: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    cwd: Path | None = None,
) -> tuple[dict[str, Any], int]:
    """Run one contender process until it writes ``result_path``; (result, peak RSS bytes).

    Raises RuntimeError if the child exits or times out without a result.
    """
    result_path.unlink(missing_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    watcher = RssWatcher(proc.pid).start()
    deadline = time.monotonic() + timeout
    try:
        while not result_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{cmd[-1] if cmd else '?'} exited {proc.returncode} without a result:\n"
                    + tail(log_path)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result after {timeout:.0f}s:\n" + tail(log_path))
            time.sleep(0.1)
    finally:
        peak = watcher.stop()  # before stopping the child: its shutdown is not measured
        stop_process(proc)
    return json.loads(result_path.read_text()), peak


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def diff_counts(got: dict[str, int], expected: dict[str, int], limit: int = 5) -> list[str]:
    """Human-readable differences between two count tables (empty when equal)."""
    problems = []
    total_got, total_exp = sum(got.values()), sum(expected.values())
    if total_got != total_exp:
        problems.append(f"counted {total_got:,} events, expected {total_exp:,}")
    wrong = [k for k in expected.keys() | got.keys() if got.get(k, 0) != expected.get(k, 0)]
    if wrong:
        sample = ", ".join(
            f"{k}: {got.get(k, 0)} != {expected.get(k, 0)}" for k in sorted(wrong)[:limit]
        )
        problems.append(f"{len(wrong):,} of {len(expected):,} keys differ ({sample})")
    return problems


@dataclass
class RunContext:
    """What every contender of one run shares: broker, topics, workload, expectations."""

    bootstrap: str
    prefix: str  # SLUICE_TOPIC_PREFIX of this run: its topics are its own
    root: Path  # this run's scratch directory
    events: int
    expected: dict[str, int]  # events per bench.workload.count_key
    expected_destinations: dict[str, int]  # events per routing destination
    timeout: float = 1800
    extra: dict[str, Any] = field(default_factory=dict)

    def group(self, contender: str) -> str:
        """A consumer group of this run: every contender reads every event from the start."""
        return f"{self.prefix}{contender}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            SLUICE_TOPIC_PREFIX=self.prefix,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def verify(self, name: str, raw: dict[str, Any], peak: int) -> Result:
        """A child's result checked against the expected counts."""
        counts = {k: int(v) for k, v in raw.get("counts", {}).items()}
        problems = diff_counts(counts, self.expected)
        if raw.get("events") != self.events:
            problems.insert(0, f"processed {raw.get('events')} events, expected {self.events}")
        want = raw.get("destinations")
        if want is not None and want != self.expected_destinations:
            problems.append(f"routing differs: {want} != {self.expected_destinations}")
        detail = {k: v for k, v in raw.items() if k not in ("counts", "events", "seconds")}
        detail["keys"] = len(counts)
        return Result(
            name=name,
            events=int(raw.get("events") or 0),
            seconds=float(raw.get("seconds") or 0.0),
            peak_rss_bytes=peak,
            verified=not problems,
            problems=problems,
            detail=detail,
        )
