"""Shared machinery of the fault-injection suite: workloads, producers, the exactness verdict.

Every scenario produces a seeded :func:`dev.workload.mixed_workload` (every event
family, with its ground truth), injects its fault against the real broker and the real
worker, and then calls :func:`verify`: every analytics row must equal the reference SQL
over the facts (difference 0), the audit log must hold each compliance action exactly
once, the sensitive-access log and the system events exactly theirs; and
:func:`dead_letters` must return exactly the injected bad records.

Sizes scale with ``SLUICE_FAULT_EVENTS`` (default 20,000 events per scenario, so the
suite stays within CI's time; run it with 200000 for the figures in the report). Each
scenario appends its measured figures to ``SLUICE_FAULT_REPORT`` (a JSON-lines file)
when that is set.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from datetime import date, datetime
from typing import Any

from confluent_kafka import Consumer, Producer

from avro_schemas.codec import Codec
from dev.workload import REFERENCE_SQL, MixedWorkload, mixed_workload
from sluice.olap import OLAP_TABLES
from tests._olapsim import reference_tables
from tests._sluice import _QUIET, Deployment
from topics.catalog import Catalog
from topics.dead_letters import parse_headers
from topics.taxonomy import family_of

EVENTS = int(os.environ.get("SLUICE_FAULT_EVENTS", "20000"))
# how long paced producers take for a whole stream: longer than a worker's recovery, so
# kills land at the fractions asked for and not after the producer finished
PACE_S = float(os.environ.get("SLUICE_FAULT_PACE_S", "36"))
# events in a mixed workload per email generated (measured: 28,077 for 6,000 emails)
EVENTS_PER_EMAIL = 4.68


def workload(
    seed: int,
    events: int = EVENTS,
    tenants: tuple[str, ...] = ("acme", "globex:eu", "initech"),
    heavy: float = 0.0,
) -> MixedWorkload:
    """A mixed workload of about ``events`` events (duplicate deliveries included);
    ``heavy``: the first tenant's share of the emails (:func:`dev.workload.tenant_of`)."""
    emails = max(100, int(events / EVENTS_PER_EMAIL))
    return mixed_workload(
        emails=emails, warmups=emails // 3, seed=seed, tenants=tenants, heavy=heavy
    )


class RawProducer:
    """Produces to a deployment's topics from the test process (no CLI start-up cost).

    Keyed as the topic catalog says (email and warm-up by tenant and email, the rest by
    tenant) with the Java-compatible murmur2 partitioner, like the SDK.
    """

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.codec = Codec()
        self.catalog = Catalog(dep.prefix, dep.partitions)
        self.producer = Producer(
            {
                "bootstrap.servers": dep.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "message.max.bytes": 16 * 1024 * 1024,
                "delivery.timeout.ms": 300_000,
                "logger": _QUIET,
            }
        )
        self.errors: list[str] = []
        self.sent = 0
        self.landed: dict[str, tuple[str, int, int]] = {}

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())

    def raw(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: dict | None = None,
        label: str | None = None,
    ) -> None:
        """Queue raw bytes; with a ``label``, remember where they landed in ``self.landed``."""

        def delivered(err: Any, msg: Any) -> None:
            self._on_delivery(err, msg)
            if err is None and label is not None:
                self.landed[label] = (msg.topic(), msg.partition(), msg.offset())

        while True:
            try:
                self.producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1
        self.producer.poll(0)

    def key(self, event: dict[str, Any]) -> bytes:
        """The record key the SDK would give ``event``."""
        family = family_of(event["event_type"])
        assert family is not None, event["event_type"]
        return self.catalog.for_family(family).record_key(event)

    def send(self, event: dict[str, Any]) -> None:
        family = family_of(event["event_type"])
        assert family is not None, event["event_type"]
        self.raw(self.dep.topic(family), self.key(event), self.codec.encode(family, event))

    def send_all(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.send(event)
        self.flush()

    def flush(self) -> None:
        left = self.producer.flush(300)
        assert not left and not self.errors, (left, self.errors[:5])


def produce_paced(
    dep: Deployment, events: list[dict[str, Any]], seconds: float
) -> threading.Thread:
    """Produce ``events`` evenly over ``seconds`` from a background thread (started)."""

    def run() -> None:
        producer = RawProducer(dep)
        chunks = max(1, int(seconds * 10))
        size = -(-len(events) // chunks)
        start = time.monotonic()
        for i in range(chunks):
            for event in events[i * size : (i + 1) * size]:
                producer.send(event)
            producer.producer.poll(0)
            time.sleep(max(0.0, start + (i + 1) * seconds / chunks - time.monotonic()))
        producer.flush()

    thread = threading.Thread(target=run, name="paced-producer", daemon=True)
    thread.start()
    return thread


def duplicates(events: list[dict[str, Any]], rate: float, seed: int) -> list[dict[str, Any]]:
    """``rate`` of ``events`` again (same event ids), in a shuffled order."""
    rng = random.Random(seed)
    again = [dict(e) for e in events if rng.random() < rate]
    rng.shuffle(again)
    return again


def wait_for(predicate, timeout: float, what: str, dep: Deployment | None = None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if dep is not None and dep.worker is not None and dep.worker.poll() is not None:
            raise AssertionError(f"worker exited {dep.worker.returncode}:\n{dep.log_tail()}")
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    tail = dep.log_tail() if dep is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


# ------------------------------------------------------------------------------ verdicts


def _norm(value: Any) -> Any:
    return str(value) if isinstance(value, date | datetime) else value


def query(dep: Deployment, sql: str) -> list[dict[str, Any]]:
    """Rows as dicts: through the running worker's HTTP endpoint, else ``sluice olap query``."""
    if dep.worker is None or dep.worker.poll() is not None:
        return dep.query(sql)
    request = urllib.request.Request(
        f"http://127.0.0.1:{dep.web_port}/sluice/query/",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json", **dep.auth()},
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                body = json.loads(response.read())
            break
        except urllib.error.URLError as exc:
            # a worker just (re)started has not bound its port yet
            if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                raise
            if dep.worker is None or dep.worker.poll() is not None:
                raise AssertionError(f"worker exited:\n{dep.log_tail()}") from exc
            time.sleep(0.5)
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


def _olap_table(dep: Deployment, table: str) -> dict[tuple, tuple]:
    spec = OLAP_TABLES[table]
    public = [c for c in spec.view_columns if c != "updated"]
    rows = query(dep, f"SELECT {', '.join(public)} FROM {table}_v")
    width = len(spec.view_key)
    out: dict[tuple, tuple] = {}
    for r in rows:
        values = tuple(_norm(r[c]) for c in public)
        if any(v not in (0, None, "") for v in values[width:]):  # rows all emails moved out of
            out[values[:width]] = values
    return out


def verify(
    dep: Deployment,
    wl: MixedWorkload,
    reference_olap: Any,
    erased: frozenset[tuple[str, str]] = frozenset(),
) -> dict[str, int]:
    """Assert the deployment's OLAP equals the workload's truth; return the figures.

    ``rows`` counts every row compared (analytics, audit, sensitive access, system
    events); ``difference`` is the number of rows missing, extra or different (always 0
    when this returns). ``erased``: (tenant, lead) whose ``lead_analytics`` row must be
    gone (and only that row: every other table keeps counting their emails).
    """
    reference = reference_tables(reference_olap, wl)
    for key in erased:
        assert key in reference["lead_analytics"], key  # there was a row to lose
        del reference["lead_analytics"][key]
    compared = 0
    problems: list[Any] = []
    for table in REFERENCE_SQL:
        want = {
            tuple(_norm(x) for x in k): tuple(_norm(v) for v in row)
            for k, row in reference[table].items()
        }
        got = _olap_table(dep, table)
        assert want, table
        compared += len(want)
        missing, extra = set(want) - set(got), set(got) - set(want)
        wrong = {k: (got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]}
        if missing or extra or wrong:
            problems.append(
                (
                    table,
                    len(missing),
                    len(extra),
                    len(wrong),
                    sorted(missing)[:2],
                    sorted(extra)[:2],
                    list(wrong.items())[:2],
                )
            )

    audit = query(dep, "SELECT tenant_id, seq, event_id FROM admin_audit_log FINAL")
    compliance = wl.compliance_events()
    compared += len(compliance)
    got_ids = sorted(r["event_id"] for r in audit)
    if got_ids != sorted(e["event_id"] for e in compliance):
        problems.append(("admin_audit_log", len(got_ids), len(compliance)))
    if {r["event_id"] for r in audit} & wl.low_risk_ids:
        problems.append(("admin_audit_log", "low-risk rows"))
    for tenant in {e["tenant_id"] for e in compliance}:
        seqs = sorted(r["seq"] for r in audit if r["tenant_id"] == tenant)
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(("admin_audit_log", tenant, "chain seq gaps"))

    sensitive = query(dep, "SELECT tenant_id, event_id, kind FROM sensitive_access_log_v")
    compared += len(wl.sensitive)
    got_sensitive = [(r["tenant_id"], r["event_id"], r["kind"]) for r in sensitive]
    if sorted(got_sensitive) != sorted(set(wl.sensitive)):
        problems.append(("sensitive_access_log", len(got_sensitive), len(set(wl.sensitive))))

    system = query(dep, "SELECT tenant_id, event_key, kind, alert_count FROM admin_system_events_v")
    notable = {
        (r["tenant_id"], r["event_key"].removeprefix("event:"), r["kind"])
        for r in system
        if r["kind"] != "alert_storm"
    }
    storms = {
        (r["tenant_id"], r["event_key"]): r["alert_count"]
        for r in system
        if r["kind"] == "alert_storm"
    }
    compared += len(wl.notable) + len(wl.storms)
    if notable != set(wl.notable):
        problems.append(
            (
                "admin_system_events",
                "notable",
                sorted(set(wl.notable) - notable)[:5],
                sorted(notable - set(wl.notable))[:5],
            )
        )
    if storms != {(s.tenant_id, s.event_key): len(s.alert_ids) for s in wl.storms}:
        problems.append(("admin_system_events", "storms"))
    assert not problems, problems
    return {"rows": compared, "difference": 0}


def dead_letters(dep: Deployment, expect: int, timeout: float = 30) -> list[tuple[dict, bytes]]:
    """Every record on the deployment's ``events.dlq`` as (headers, raw value).

    Reads until ``expect`` arrived, then a little longer to catch any extra.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": dep.bootstrap,
            "group.id": f"{dep.name}-dlq-reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 16 * 1024 * 1024,
            "logger": _QUIET,
        }
    )
    consumer.subscribe([f"{dep.prefix}events.dlq"])
    letters: list[tuple[dict, bytes]] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                letters.append((parse_headers(msg.headers()), msg.value()))
            if len(letters) >= expect and quiet_until is None:
                quiet_until = time.monotonic() + 2.0
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
    finally:
        consumer.close()
    return letters


def letters_by_source(letters: list[tuple[dict, bytes]]) -> dict[tuple, tuple[dict, bytes]]:
    """Dead letters keyed by their source (topic, partition, offset); each at most once."""
    by_source: dict[tuple, tuple[dict, bytes]] = {}
    for headers, value in letters:
        source = (
            headers["source.topic"],
            int(headers["source.partition"]),
            int(headers["source.offset"]),
        )
        assert source not in by_source, f"dead-lettered twice: {source}"
        by_source[source] = (headers, value)
    return by_source


# A state budget far below what a scenario holds (~5,000 emails and their leads): most of
# the worker's state then lives in RocksDB (streams/spill.py) while the faults land.
SPILL = {"SLUICE_STATE_STORE": "rocksdb", "SLUICE_STATE_MEMORY_ITEMS": "1000"}


def status(dep: Deployment) -> dict[str, Any]:
    """The worker's /sluice/status/ ({} while it does not answer)."""
    url = f"http://127.0.0.1:{dep.web_port}/sluice/status/"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except OSError:
        return {}


def spilled(dep: Deployment) -> int:
    """State entries the running worker holds on disk; fails unless it is spilling."""
    store = status(dep).get("state_store") or {}
    assert store.get("kind") == "rocksdb", store
    assert store["on_disk"] > store["in_memory"] > 0, store
    return int(store["on_disk"])


def report(scenario: str, **figures: Any) -> None:
    """Record a scenario's measured figures (printed; appended to SLUICE_FAULT_REPORT)."""
    line = json.dumps({"scenario": scenario, "events_per_scenario": EVENTS, **figures})
    print(line)
    path = os.environ.get("SLUICE_FAULT_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")
