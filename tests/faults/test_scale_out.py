"""Scenario 10: scale by partition. Two workers of one consumer group share the OLAP store
through ``sluice olap serve`` (chDB allows one process per store); a third worker joins
and leaves five times while the stream is produced (once by SIGKILL), so partitions move
back and forth under load: every move revokes, checkpoints, re-seeks and restores state
from the changelog on the partition's next owner.

DESIGN §5: rollups exact across rebalances; every partition consumed to its end.
"""

from __future__ import annotations

import signal
import time

import pytest

from sluice.kafka import group_lag
from tests._sluice import _QUIET, Deployment, OlapServer
from tests.faults._faults import (
    PACE_S,
    dead_letters,
    produce_paced,
    report,
    status,
    verify,
    wait_for,
    workload,
)
from topics.taxonomy import FAMILIES

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

PARTITIONS = 6
CYCLES = 5
# the third leave is a SIGKILL (its partitions wait out the session timeout; so do those
# of a SIGTERM: a static member does not leave the group)
KILLED_AT = 2
# events are keyed by tenant (murmur2): these 16 put 2 to 4 tenants on each of 6 partitions
TENANTS = tuple(f"tenant-{i:02d}" for i in range(16))


def _owned(dep: Deployment) -> list[str]:
    """The event-topic partitions the deployment's worker holds now."""
    return [a for a in status(dep).get("assigned", []) if a.startswith(dep.prefix + "events.")]


def test_two_workers_share_the_store_and_a_third_joins_and_leaves(
    kafka_bootstrap, tmp_path, reference_olap
):
    server = OlapServer(tmp_path / "olap").start()

    def member(name: str, group_of: Deployment | None = None) -> Deployment:
        dep = Deployment(
            kafka_bootstrap,
            tmp_path / name,
            partitions=PARTITIONS,
            clickhouse_url=server.url,
            **({"name": group_of.name} if group_of else {}),
        )
        dep.instance_id = name  # static members: c's rejoins find their partitions
        dep.root.mkdir()
        return dep

    a = member("a")
    b, c = member("b", a), member("c", a)  # same topics, group and store; own port and dirs
    try:
        wl = workload(seed=1010, tenants=TENANTS)
        total = len(wl.events)
        a.prepare()
        a.start_worker()
        b.start_worker()
        wait_for(lambda: _owned(a) and _owned(b), 120, "both workers assigned", a)
        # long enough for five joins and leaves (~10 s each: a join takes a rebalance)
        producer = produce_paced(a, wl.events, seconds=max(PACE_S, 60.0, total / 5000))
        started = time.monotonic()
        cycles = []
        for i in range(CYCLES):
            joined = time.monotonic()
            c.start_worker()
            wait_for(lambda: bool(_owned(c)), 120, f"the third worker assigned (join {i + 1})", c)
            join_s = time.monotonic() - joined
            owned = sorted({int(tp.rsplit(":", 1)[1]) for tp in _owned(c)})
            time.sleep(2.0)  # it consumes and checkpoints its share for a while
            for dep in (a, b):
                assert dep.worker is not None and dep.worker.poll() is None, dep.log_tail()
            sig = signal.SIGKILL if i == KILLED_AT else signal.SIGTERM
            code = c.stop_worker(sig)
            assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), c.log_tail()
            cycles.append(
                {
                    "join_s": round(join_s, 1),
                    "partitions": owned,
                    "left_by": sig.name,
                    "at_s": round(time.monotonic() - started, 1),
                }
            )
            time.sleep(1.0)
        during_stream = producer.is_alive()
        producer.join(300)
        produced_s = time.monotonic() - started
        drained = a.wait_drained(timeout=180)
        assert b.worker is not None and b.worker.poll() is None, b.log_tail()

        # every partition of every event topic consumed to its end by the group
        topics = [a.topic(f) for f in FAMILIES]
        lag = group_lag({"bootstrap.servers": kafka_bootstrap, "logger": _QUIET}, a.group, topics)
        assert len(lag) == len(FAMILIES) * PARTITIONS, lag
        behind = [r for r in lag if (r["committed"] or r["low"]) != r["high"]]
        assert not behind, behind
        used = {r["partition"] for r in lag if r["high"] > 0 and r["topic"] == a.topic("email")}
        assert used == set(range(PARTITIONS)), used

        figures = verify(a, wl, reference_olap)
        assert dead_letters(a, expect=0, timeout=5) == []
        assert a.stop_worker(signal.SIGTERM) == 0, a.log_tail()
        assert b.stop_worker(signal.SIGTERM) == 0, b.log_tail()
        assert server.stop(signal.SIGTERM) == 0, server.log.read_text()
    finally:
        for dep in (a, b, c):
            dep.close()
        server.close()
    report(
        "10 scale out: 2 workers + a third joining/leaving x5",
        produced=total,
        partitions=PARTITIONS,
        cycles=cycles,
        all_cycles_during_stream=during_stream,
        stream_s=round(produced_s, 1),
        final_drain_s=round(drained, 1),
        **figures,
    )
