"""State restores against a real broker (streams/restore.py, streams/app.py).

* A rebuild in processes of their own (``python -m streams.restore rebuild``) gives the
  state a rebuild inside the worker gives, from the same changelog read in batches.
* Static membership: a worker killed -9 and restarted with the same ``SLUICE_INSTANCE_ID``
  gets its partitions back in the same group generation (no rebalance, no wait for its
  old session), while a dynamic member's restart makes a new generation.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from sluice.settings import Settings
from streams.engine import Engine
from streams.fetch import ChangelogWriter
from streams.restore import ChangelogSource, Restorer
from tests._sluice import _QUIET, Deployment
from tests.faults._faults import RawProducer, status, wait_for, workload
from topics.catalog import Catalog
from topics.taxonomy import family_of

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def _changelog(bootstrap: str, settings: Settings, partitions: int) -> None:
    """A changelog of a few thousand emails' state, as a worker would have written it."""
    spec = Catalog.from_settings(settings).changelog
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _QUIET})
    topic = NewTopic(spec.name, partitions, 1, config=spec.topic_config())
    admin.create_topics([topic])[spec.name].result(30)
    engine = Engine()
    writer = ChangelogWriter({"bootstrap.servers": bootstrap, "logger": _QUIET}, spec.name)
    wl = workload(seed=31, events=12_000)
    for i, event in enumerate(wl.events):
        family = family_of(event["event_type"])
        engine.apply(i % partitions, f"events.{family}", i, family, event)
        if i % 3000 == 2999:  # several checkpoints: some keys more than once
            writer.write(engine.snapshot().changelog)
            writer.flush()
    writer.write(engine.snapshot().changelog)
    writer.flush()


def _state(engine: Engine) -> dict:
    return {
        p: (
            {k: list(v) for k, v in ps.email.states.items()},
            {t: dict(m.items()) for t, m in ps.email.rows.items()},
            dict(ps.positions),
        )
        for p, ps in engine.partitions.items()
    }


def test_a_rebuild_in_processes_of_their_own_equals_one_inside_the_worker(
    kafka_bootstrap, tmp_path, monkeypatch
):
    partitions = 2
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SLUICE_APP_ID": f"restore-{time.monotonic_ns()}",
        "SLUICE_TOPIC_PARTITIONS": str(partitions),
        "SLUICE_STATE_MEMORY_ITEMS": "2000",  # most of it on disk
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    _changelog(kafka_bootstrap, settings, partitions)
    spec = Catalog.from_settings(settings).changelog
    conf = {"bootstrap.servers": kafka_bootstrap, "logger": _QUIET}
    states = {}
    for label, processes in (("inside", 0), ("processes", 2)):
        monkeypatch.setenv("SLUICE_DATA_DIR", str(tmp_path / label))
        settings = Settings()
        engine = Engine.for_settings(settings, persistent=True)
        source = ChangelogSource(conf, spec.name, 7 * 86_400_000)

        async def restore_all(engine=engine, source=source, processes=processes) -> list:
            restorer = Restorer(
                engine, asyncio.Lock(), source, processes=processes, process_min_entries=1
            )
            done = await asyncio.gather(*(restorer.restore(p) for p in range(partitions)))
            restorer.close()
            return done

        done = asyncio.run(restore_all())
        assert {(r.mode, r.process) for r in done} == {("rebuilt", processes > 0)}
        assert all(r.entries > 0 for r in done)
        if processes:
            # the processes wrote images (rows still to rewrite); the worker reopened them
            for p in range(partitions):
                marker = engine.partitions[p].db.marker
                assert marker.rewrite and marker.offset == done[p].high
                assert engine.partitions[p].email.rewrite_pending()
        states[label] = _state(engine)
        engine.close()
    assert states["inside"] == states["processes"]
    assert sum(len(s[0]) for s in states["inside"].values()) > 1000


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_a_killed_worker_restarted_gets_its_partitions_back(kafka_bootstrap, tmp_path, static):
    """With SLUICE_INSTANCE_ID the restart rejoins the same generation (no rebalance);
    without, the group must first drop the dead member: a new generation."""
    dep = Deployment(kafka_bootstrap, tmp_path, session_timeout_s=15.0)
    if static:
        dep.instance_id = "worker-1"
    try:
        dep.prepare()
        producer = RawProducer(dep)
        producer.send_all(workload(seed=41, events=3000).events)
        dep.start_worker()
        dep.wait_drained()
        before = status(dep)["generation"]
        assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
        producer.send_all(workload(seed=42, events=1000).events)
        dep.start_worker()
        wait_for(lambda: bool(status(dep).get("assigned")), 120, "assigned again", dep)
        dep.wait_drained(timeout=120)
        after = status(dep)
        assert after["instance_id"] == ("worker-1" if static else None)
        assert (after["generation"] == before) is static, (before, after["generation"])
        restored = after["restore"]["partitions"]
        assert {r["mode"] for r in restored.values()} == {"reused"}
        assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    finally:
        dep.close()


def test_the_worker_stays_in_its_group_past_the_max_poll_interval(kafka_bootstrap, tmp_path):
    """Faust never polls aiokafka (Sluice reads every partition itself): the hot loop must
    keep the member alive, or aiokafka leaves the group after max.poll.interval and never
    rejoins (found by the 5,000,000-email restore benchmark, 1000 s after start)."""
    dep = Deployment(kafka_bootstrap, tmp_path)
    dep.instance_id = "worker-1"
    try:
        dep.prepare()
        dep.start_worker({"KAFKA_MAX_POLL_INTERVAL_S": "4"})
        wait_for(lambda: bool(status(dep).get("assigned")), 120, "assigned", dep)
        before = status(dep)["generation"]
        time.sleep(12)  # three max poll intervals without a single Faust poll
        producer = RawProducer(dep)
        producer.send_all(workload(seed=43, events=1000).events)
        dep.wait_drained(timeout=60)
        assert status(dep)["generation"] == before
        assert "LeaveGroup" not in (dep.root / "worker.log").read_text()
        assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    finally:
        dep.close()
