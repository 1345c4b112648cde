"""Scenarios 13–17: the worker's local state store, reused across restarts, exact whatever
state it is found in (docs/guarantees.md).

13. kill -9 inside checkpoints (after the changelog and the OLAP rows, before the store's
    image and the commit), the store kept: each restart reuses it and joins the
    changelog after its marker;
14. the store deleted after a kill -9: rebuilt in full from the changelog;
15. the store replaced by an older copy (a volume rolled back: written a day earlier, two
    runs behind): reused, the longer tail joined;
16. one partition's store replaced by a copy of another's: that partition rebuilt;
17. partitions that moved to another worker and came back: their stale stores reused and
    the other worker's changelog joined.

Every scenario ends with the verdict of :func:`tests.faults._faults.verify` (difference 0)
and checks, in the worker's log, that the store was used the way the scenario says.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import orjson
import pytest

from tests._sluice import FAULTY_SLUICE, Deployment, OlapServer
from tests.faults._faults import (
    PACE_S,
    SPILL,
    RawProducer,
    dead_letters,
    duplicates,
    produce_paced,
    report,
    status,
    verify,
    wait_for,
    workload,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

DAY_MS = 86_400_000
# "partition 2: state reused, 117 changelog entries [1203, 1320) joined in 0.1s"
RESTORED = re.compile(r"partition (\d+): state (kept|reused|rebuilt), (\d+) changelog entries")
# 16 tenants: two to four on each partition, whatever the partition count (murmur2)
TENANTS = tuple(f"tenant-{i:02d}" for i in range(16))


def restores(dep: Deployment, since: int = 0) -> list[tuple[int, str, int]]:
    """(partition, mode, changelog entries joined) of every restore the log shows after
    byte ``since``."""
    text = (dep.root / "worker.log").read_text()[since:]
    return [(int(p), mode, int(n)) for p, mode, n in RESTORED.findall(text)]


def log_size(dep: Deployment) -> int:
    path = dep.root / "worker.log"
    return len(path.read_text()) if path.exists() else 0


def shift_markers(state_dir: Path, ms: int) -> None:
    """Date every partition store's marker ``ms`` earlier (a copy made that long ago)."""
    from rocksdict import AccessType, Options, Rdict

    from streams.store import MARKER_KEY

    for path in state_dir.iterdir():
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_write())
        marker = orjson.loads(db[MARKER_KEY])
        marker["written_ms"] -= ms
        db[MARKER_KEY] = orjson.dumps(marker)
        db.close()


def test_sigkill_inside_checkpoints_with_the_store_kept(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1313)
    total = len(wl.events)
    dep.prepare()
    producer = produce_paced(dep, wl.events, seconds=max(PACE_S, total / 5000))
    # every image write waits first: a kill lands between the changelog and the image
    held = {**SPILL, "SLUICE_FAULT_STORE_HOLD_S": "0.3"}
    dep.start_worker(held, command=FAULTY_SLUICE)
    kills = []
    for fraction in (0.25, 0.5, 0.75):
        wait_for(lambda f=fraction: dep.committed() >= f * total, 300, f"{fraction:.0%}", dep)

        def inside() -> bool:
            text = (dep.root / "worker.log").read_text()
            return text.rfind("fault: image write held") > text.rfind("checkpoint: ")

        wait_for(inside, 60, "a held image write", dep)
        assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
        at, since = dep.committed(), log_size(dep)
        restarted = time.monotonic()
        dep.start_worker(held, command=FAULTY_SLUICE)
        wait_for(lambda a=at: dep.committed() > a or dep.committed() >= total, 300, "recovery", dep)
        came_back = restores(dep, since)
        kills.append((round(at / total, 2), round(time.monotonic() - restarted, 1), came_back))
    producer.join(300)
    dep.wait_drained(timeout=300)
    figures = verify(dep, wl, reference_olap)
    assert dead_letters(dep, expect=0, timeout=5) == []
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    modes = {mode for _, _, back in kills for _, mode, _ in back}
    assert modes == {"reused"}, kills  # the store was kept every time
    tails = [sum(n for _, _, n in back) for _, _, back in kills]
    assert max(tails) > 0, "a kill inside a checkpoint leaves a changelog tail to join"
    report(
        "13 kill -9 inside checkpoints, store kept",
        produced=total,
        killed_at=[k[0] for k in kills],
        recovery_s=[k[1] for k in kills],
        tail_entries_joined=tails,
        **figures,
    )


def test_store_deleted_after_a_kill(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1414)
    events = wl.events
    half = len(events) // 2
    dep.prepare()
    producer = RawProducer(dep)
    producer.send_all(events[:half])
    dep.start_worker(SPILL)
    dep.wait_drained()
    producer.send_all(events[half : half + half // 4])
    time.sleep(1.5)  # some of it applied, not all committed
    assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
    shutil.rmtree(dep.root / "var" / "state")  # the store (nothing else) is gone
    producer.send_all(events[half + half // 4 :] + duplicates(events[:half], 0.2, seed=14))
    since = log_size(dep)
    restarted = time.monotonic()
    dep.start_worker(SPILL)
    dep.wait_drained()
    recovery = time.monotonic() - restarted
    figures = verify(dep, wl, reference_olap)
    log = (dep.root / "worker.log").read_text()[since:]
    assert "no local store: rebuilding it from the changelog" in log
    came_back = restores(dep, since)
    assert {mode for _, mode, _ in came_back} == {"rebuilt"}
    assert sum(n for _, _, n in came_back) > 0
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "14 store deleted after a kill -9",
        produced=producer.sent,
        rebuilt_entries=sum(n for _, _, n in came_back),
        recovery_s=round(recovery, 1),
        **figures,
    )


def test_store_rolled_back_to_an_older_copy(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1515)
    events = wl.events
    third = len(events) // 3
    dep.prepare()
    producer = RawProducer(dep)
    producer.send_all(events[:third])
    dep.start_worker(SPILL)
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    old = dep.root / "state-copy"
    shutil.copytree(dep.state_dir, old)  # yesterday's backup of the volume
    producer.send_all(events[third : 2 * third])
    dep.start_worker(SPILL)
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    shutil.rmtree(dep.state_dir)
    shutil.copytree(old, dep.state_dir)  # the volume rolled back
    shift_markers(dep.state_dir, DAY_MS // 2)  # ... half a day old (delete.retention.ms: 1 day)
    producer.send_all(events[2 * third :] + duplicates(events[: 2 * third], 0.2, seed=15))
    since = log_size(dep)
    restarted = time.monotonic()
    dep.start_worker(SPILL)
    dep.wait_drained()
    recovery = time.monotonic() - restarted
    figures = verify(dep, wl, reference_olap)
    came_back = restores(dep, since)
    assert {mode for _, mode, _ in came_back} == {"reused"}, came_back
    assert sum(n for _, _, n in came_back) > 0, "the second run's changelog was joined"
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "15 store rolled back to an older copy (half a day old, a run behind)",
        produced=producer.sent,
        tail_entries_joined=sum(n for _, _, n in came_back),
        recovery_s=round(recovery, 1),
        **figures,
    )


def test_store_copied_from_another_partition(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1616, tenants=TENANTS)
    events = wl.events
    half = len(events) // 2
    dep.prepare()
    producer = RawProducer(dep)
    producer.send_all(events[:half])
    dep.start_worker(SPILL)
    dep.wait_drained()
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    shutil.rmtree(dep.state_dir / "1")
    shutil.copytree(dep.state_dir / "2", dep.state_dir / "1")  # a wrong copy
    producer.send_all(events[half:] + duplicates(events[:half], 0.2, seed=16))
    since = log_size(dep)
    dep.start_worker(SPILL)
    drained = dep.wait_drained()
    figures = verify(dep, wl, reference_olap)
    log = (dep.root / "worker.log").read_text()[since:]
    assert "partition 1: the local store holds another partition (it holds partition 2)" in log
    came_back = {p: mode for p, mode, _ in restores(dep, since)}
    assert came_back == {0: "reused", 1: "rebuilt", 2: "reused", 3: "reused"}, came_back
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report(
        "16 store copied from another partition",
        produced=producer.sent,
        drain_s=round(drained, 1),
        **figures,
    )


def test_partitions_moved_away_and_back_with_stale_stores(
    kafka_bootstrap, tmp_path, reference_olap
):
    server = OlapServer(tmp_path / "olap").start()

    def member(name: str, group_of: Deployment | None = None) -> Deployment:
        dep = Deployment(
            kafka_bootstrap,
            tmp_path / name,
            clickhouse_url=server.url,
            **({"name": group_of.name} if group_of else {}),
        )
        dep.instance_id = name
        dep.root.mkdir()
        return dep

    a = member("a")
    b = member("b", a)
    try:
        wl = workload(seed=1717, tenants=TENANTS)
        events = wl.events
        third = len(events) // 3
        a.prepare()
        producer = RawProducer(a)
        producer.send_all(events[:third])
        a.start_worker(SPILL)
        a.wait_drained()
        b.start_worker(SPILL)  # takes part of a's partitions (a keeps their stores)
        wait_for(lambda: len(_owned(b)) > 0 and len(_owned(a)) < 32, 120, "b assigned", b)
        moved = sorted({int(tp.rsplit(":", 1)[1]) for tp in _owned(b)})
        producer.send_all(events[third : 2 * third])
        a.wait_drained()
        since = log_size(a)
        assert b.stop_worker(signal.SIGTERM) == 0, b.log_tail()  # they come back to a
        wait_for(lambda: len(_owned(a)) == 32, 120, "a holds every partition again", a)
        producer.send_all(events[2 * third :] + duplicates(events[: 2 * third], 0.2, seed=17))
        drained = a.wait_drained()
        figures = verify(a, wl, reference_olap)
        back = {p: (mode, n) for p, mode, n in restores(a, since) if p in moved}
        assert set(back) == set(moved), (back, moved)
        assert {mode for mode, _ in back.values()} == {"reused"}, back
        assert sum(n for _, n in back.values()) > 0, "b's changelog was joined"
        assert a.stop_worker(signal.SIGTERM) == 0, a.log_tail()
        assert server.stop(signal.SIGTERM) == 0, server.log.read_text()
    finally:
        for dep in (a, b):
            dep.close()
        server.close()
    report(
        "17 partitions moved away and back with stale stores",
        produced=producer.sent,
        moved=moved,
        tail_entries_joined=sum(n for _, n in back.values()),
        drain_s=round(drained, 1),
        **figures,
    )


def _owned(dep: Deployment) -> list[str]:
    return [a for a in status(dep).get("assigned", []) if a.startswith(dep.prefix + "events.")]
