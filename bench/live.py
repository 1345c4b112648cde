"""Shared by the live measurements (:mod:`bench.latency`, :mod:`bench.scaling`,
:mod:`bench.memory`): a pre-encoding producer, the worker's HTTP endpoints, a PostHog
receiver that timestamps each event's arrival, percentiles, ``/proc`` memory.

Each measurement runs on topics of its own (``<run prefix><label>.events.*``, created
with ``sluice topics create``) so it never reads another one's events, and with a
consumer group and OLAP store of its own.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import Producer

from avro_schemas.codec import Codec
from bench.measure import RunContext
from bench.sluice_worker import BenchDeployment
from tests._receivers import HttpReceiver, Rsyslog
from topics.catalog import Catalog
from topics.taxonomy import family_of

_QUIET = logging.getLogger("bench.live.librdkafka")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())

# what the sluice contender runs with (bench/sluice_worker.py), minus the interval: the
# product's defaults (a SLUICE_* setting in the harness's environment reaches the worker)
WORKER_ENV: dict[str, str] = {}


def deployment(
    ctx: RunContext,
    label: str,
    member: str = "",
    cls: type[BenchDeployment] = BenchDeployment,
    **kwargs: Any,
) -> BenchDeployment:
    """A deployment on topics, group and store of its own: ``<run prefix><label>``.

    ``member`` gives one of several workers of the same deployment its own directory
    (log, data dir) and port; the topics and group stay the label's.
    """
    root = ctx.root / label / member if member else ctx.root / label
    root.mkdir(parents=True, exist_ok=True)
    name = f"{ctx.prefix}{label}"
    return cls(ctx.bootstrap, root, name=name, group_name=f"{name}.group", **kwargs)


def rsyslog(root: Any) -> Rsyslog | None:
    return Rsyslog(root / "rsyslog").start() if shutil.which("rsyslogd") else None


class TimedReceiver(HttpReceiver):
    """:class:`HttpReceiver` that also keeps the wall-clock arrival of every PostHog event
    (``time.time()`` when its batch request was read, before parsing), by uuid.
    ``deferred``: see :class:`HttpReceiver` (the arrival is still the request's)."""

    def __init__(self, deferred: bool = False) -> None:
        super().__init__(deferred=deferred)
        self.arrived: dict[str, float] = {}  # PostHog uuid → first arrival (epoch s)

    def _accept(
        self, path: str, body: bytes, at: float | None = None, epoch: float | None = None
    ) -> bool:
        arrived = time.time() if epoch is None else epoch
        ok = super()._accept(path, body, at, epoch)
        if ok and path == "/batch/":
            uuids = [e["uuid"] for e in json.loads(body)["batch"]]
            with self.lock:
                for u in uuids:
                    self.arrived.setdefault(u, arrived)
        return ok


# -- producing ------------------------------------------------------------------------------
Encoded = tuple[str, bytes, bytes]  # family, key, value


def encode(events: Iterable[dict[str, Any]], codec: Codec | None = None) -> list[Encoded]:
    """Events as wire bytes, keyed as the topic catalog says (what ``sluice produce`` and
    the SDK send)."""
    codec = codec or Codec()
    catalog = Catalog()
    out = []
    for e in events:
        family = family_of(e["event_type"])
        assert family is not None, e["event_type"]
        out.append((family, catalog.for_family(family).record_key(e), codec.encode(family, e)))
    return out


def producer(bootstrap: str, linger_ms: int = 20) -> Producer:
    """The SDK's settings (idempotent, acks=all, murmur2 like the Java client)."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": 1_000_000,
            "message.max.bytes": 16 * 1024 * 1024,
            "logger": _QUIET,
        }
    )


def send(p: Producer, topic: str, key: bytes, value: bytes, errors: list[str]) -> None:
    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    while True:
        try:
            p.produce(topic, key=key, value=value, on_delivery=delivered)
            return
        except BufferError:
            p.poll(0.05)


def produce_all(dep: BenchDeployment, encoded: Sequence[Encoded], bootstrap: str) -> float:
    """Produce pre-encoded events as fast as the client goes; seconds it took (flushed)."""
    p, errors = producer(bootstrap), []
    started = time.perf_counter()
    for i, (family, key, value) in enumerate(encoded):
        send(p, dep.topic(family), key, value, errors)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(300)
    if left or errors:
        raise RuntimeError(f"produce: {left} not delivered, errors {errors[:3]}")
    return time.perf_counter() - started


# -- the worker's endpoints -----------------------------------------------------------------
def status(dep: BenchDeployment) -> dict[str, Any]:
    """``/sluice/status/``, or {} while the worker is not listening."""
    try:
        url = f"http://127.0.0.1:{dep.web_port}/sluice/status/"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except OSError:
        return {}


def event_partitions(dep: BenchDeployment, st: dict[str, Any]) -> set[str]:
    return {a for a in st.get("assigned", []) if a.startswith(dep.prefix + "events.")}


def query(dep: BenchDeployment, sql: str, timeout: float = 10) -> list[list[Any]]:
    """Rows of a read-only query through the running worker (``POST /sluice/query/``)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{dep.web_port}/sluice/query/",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json", **dep.auth()},
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())["rows"]


def check_alive(dep: BenchDeployment) -> None:
    if dep.worker is not None and dep.worker.poll() is not None:
        raise RuntimeError(f"worker exited {dep.worker.returncode}:\n{dep.log_tail()}")


def wait_until(predicate: Any, timeout: float, what: str, *deps: BenchDeployment) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for d in deps:
            check_alive(d)
        if time.monotonic() > deadline:
            tail = deps[0].log_tail() if deps else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.2)


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process, in KiB."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out["VmRSS"], out["VmHWM"]


def flush_interval(dep: BenchDeployment, env_extra: dict[str, str] | None = None) -> float:
    """The checkpoint interval the worker's own settings resolve to (same env and cwd)."""
    code = "from sluice.settings import get_settings; print(get_settings().sluice_flush_interval_s)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dep.env(**(env_extra or {})),
        cwd=dep.root,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


# -- figures --------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary_ms(seconds: Iterable[float]) -> dict[str, float]:
    """p50 / p99 / max (ms) and count of latencies given in seconds."""
    xs = sorted(s * 1000 for s in seconds)
    return {
        "p50": round(percentile(xs, 50), 1),
        "p99": round(percentile(xs, 99), 1),
        "max": round(xs[-1], 1) if xs else math.nan,
        "count": len(xs),
    }
