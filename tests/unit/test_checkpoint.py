"""The worker's checkpoint (streams/checkpoint.py) with fake ports, broker-free.

The order of the steps, and every failure path: a sink down, a sink refusing an event, the
changelog produce failing, the dead-letter flush failing, the OLAP write failing or
ambiguous (written, reported failed), the commit refused or raising, and a rebalance in
the middle. In every case nothing is committed that is not durable everywhere, and the
next checkpoint delivers exactly what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sinks.base import Envelope, Rejected
from streams.checkpoint import Checkpointer, Outcome, Ports, Progress
from streams.engine import Engine

TOPIC = "events.email"


def sent(n: int, tenant: str = "acme", campaign: str = "c1") -> dict[str, Any]:
    return {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "event_type": "email_sent",
        "occurred_at": 1_764_000_000_000 + n,
        "tenant_id": tenant,
        "source": "test",
        "email_id": f"e{n}",
        "campaign_id": campaign,
        "mailbox_id": "m1",
        "lead_id": f"l{n}",
        "sequence_step_id": None,
    }


class World:
    """Fake ports that record the order of calls and fail on demand."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: set[str] = set()  # step names that raise once
        self.changelog: dict[str, list] = {}
        self.queued: list[tuple[int, str, list]] = []
        self.rows: dict[str, list[list]] = {}
        self.dead: list[Rejected] = []
        self.pending_dead: list[Rejected] = []
        self.refuse: list[Rejected] = []
        self.restored: list[Rejected] = []
        self.generation_value = 1
        self.assigned = {(TOPIC, 0), (TOPIC, 1)}
        self.committed: dict[Any, int] = {}
        self.commit_answer: bool | Exception = True
        self.during_olap: Any = None  # a callable run in the middle of the OLAP write
        self.ambiguous = False
        self.written: list[str] = []  # every changelog key that reached the topic
        self.gate: asyncio.Event | None = None  # the sinks' flush waits for it
        self.holding: list[str] = []  # sinks whose paused route holds events
        self.ends: dict[int, int] = {}  # changelog offsets acknowledged, per partition

    def _maybe_fail(self, step: str) -> None:
        self.calls.append(step)
        if step in self.fail:
            self.fail.discard(step)
            raise RuntimeError(f"{step} is down")

    # Sinks
    def held(self) -> list[str]:
        return self.holding

    async def flush(self) -> list[Rejected]:
        self._maybe_fail("sinks")
        if self.gate is not None:
            await self.gate.wait()
        refused, self.refuse = self.refuse, []
        return refused

    def restore_rejected(self, rejected: list[Rejected]) -> None:
        self.restored.extend(rejected)
        self.refuse.extend(rejected)

    # the ports that share method names get small adapters below
    def ports(self) -> Ports:
        world = self

        class DeadLetters:
            async def rejected(self, item: Rejected) -> None:
                world.pending_dead.append(item)

            async def flush(self) -> None:
                world._maybe_fail("dead letters")
                world.dead.extend(world.pending_dead)
                world.pending_dead = []

        class Changelog:
            def write(self, entries: Any) -> None:
                world.calls.append("changelog write")
                world.queued.extend(entries)

            async def acknowledged(self) -> None:
                queued, world.queued = world.queued, []
                world._maybe_fail("changelog")
                for partition, key, value in queued:
                    world.changelog[key] = value
                    world.written.append(key)
                    world.ends[partition] = world.ends.get(partition, 0) + 1

            def ends(self) -> dict[int, int]:
                return dict(world.ends)

            def runs(self) -> dict[int, tuple[int, int]]:
                return {p: (0, end) for p, end in world.ends.items()}  # the only writer

        class Warehouse:
            def write(self, rows: dict[str, list[list]]) -> None:
                world._maybe_fail("olap")
                if world.during_olap is not None:
                    world.during_olap()
                for table, table_rows in rows.items():
                    world.rows.setdefault(table, []).extend(table_rows)
                if world.ambiguous:
                    world.ambiguous = False
                    raise TimeoutError("written, but the answer was lost")

        class Group:
            def generation(self) -> int:
                return world.generation_value

            def assignment(self) -> set:
                return set(world.assigned)

            async def commit(self, offsets: Mapping[Any, int]) -> bool:
                world.calls.append("commit")
                answer = world.commit_answer
                if isinstance(answer, Exception):
                    raise answer
                if answer:
                    world.committed.update(offsets)
                return answer

        return Ports(world, DeadLetters(), Changelog(), Warehouse(), Group())


async def _direct(fn: Any, *args: Any) -> Any:
    return fn(*args)


class Rig:
    """An engine, its progress and a checkpointer over the fake world (``store``: with
    a local state store there, its partitions 0 and 1 open)."""

    def __init__(self, store: Path | None = None) -> None:
        self.world = World()
        self.engine = Engine() if store is None else _stored_engine(store)
        self.progress = Progress()
        self.lock = asyncio.Lock()
        self.checkpointer = Checkpointer(
            self.engine, self.progress, self.world.ports(), self.lock, run_blocking=_direct
        )
        self.offset = {0: 0, 1: 0}

    def apply(self, *events: dict[str, Any], partition: int = 0) -> None:
        for event in events:
            offset = self.offset[partition]
            self.engine.apply(partition, TOPIC, offset, "email", event)
            self.progress.applied[(TOPIC, partition)] = offset + 1
            self.progress.unflushed += 1
            self.offset[partition] = offset + 1

    def run(self) -> Outcome:
        return asyncio.run(self.checkpointer.run())

    def campaign_sent(self) -> int:
        """campaign_analytics.sent as FINAL shows it (the last row written per key)."""
        rows = self.world.rows.get("campaign_analytics", [])
        columns = self.engine.columns("campaign_analytics")
        latest: dict[tuple, dict] = {}
        for row in rows:
            named = dict(zip(columns, row, strict=True))
            key = (named["company_id"], named["campaign_id"], named["day"])
            if key not in latest or named["_version"] >= latest[key]["_version"]:
                latest[key] = named
        return sum(r["sent"] for r in latest.values())


def _stored_engine(root: Path) -> Engine:
    from streams.engine import default_components, state_schema
    from streams.store import Changelog, Identity, StateStore

    identity = Identity("app", 2, state_schema(default_components), "app-changelog")
    engine = Engine(default_components, StateStore.for_app(root, identity, 1000))
    for partition in (0, 1):
        engine.open(partition, Changelog(0, 0, 86_400_000))
        engine.rebuilt(partition, 0)  # an empty changelog: nothing to read
    return engine


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_steps_run_in_order_and_commit_what_they_cover(rig):
    rig.apply(sent(1), sent(2))
    outcome = rig.run()
    assert outcome.ok and outcome.events == 2
    assert rig.world.calls == [
        "sinks",
        "changelog write",
        "changelog",
        "dead letters",
        "olap",
        "commit",
    ]
    assert rig.world.committed == {(TOPIC, 0): 2}
    assert rig.campaign_sent() == 2 and rig.progress.unflushed == 0
    # what each step took, in order (metrics and the worker's log line)
    assert list(outcome.steps) == [
        "snapshot",
        "sinks",
        "changelog",
        "dead_letters",
        "olap",
        "commit",
    ]
    assert all(s >= 0 for s in outcome.steps.values())
    assert sum(outcome.steps.values()) <= outcome.seconds
    # nothing new: nothing written, nothing committed again
    rig.world.calls.clear()
    assert rig.run().ok and rig.world.calls == []


@pytest.mark.parametrize("step", ["sinks", "changelog", "dead letters"])
def test_a_failure_before_the_state_is_durable_commits_nothing_and_is_retried(rig, step):
    rig.apply(sent(1), sent(2))
    rig.world.fail.add(step)
    outcome = rig.run()
    assert not outcome.ok and outcome.step is not None and step.split()[0] in outcome.step
    assert rig.world.committed == {} and "commit" not in rig.world.calls
    assert rig.progress.unflushed == 2  # the events are pending again
    assert rig.run().ok
    assert rig.world.committed == {(TOPIC, 0): 2}
    assert rig.campaign_sent() == 2
    assert len(rig.world.changelog) >= 2  # the requeued state reached the changelog


def test_olap_down_keeps_the_rows_and_sends_no_changelog_twice(rig):
    rig.apply(sent(1))
    rig.world.fail.add("olap")
    assert not rig.run().ok
    assert rig.world.committed == {}
    assert rig.checkpointer.leftover  # the changelog is durable; only the rows are missing
    rig.apply(sent(2, campaign="c2"))  # another row: the first one is not rewritten
    rig.world.calls.clear()
    assert rig.run().ok
    # the left-over rows first, then the new snapshot
    assert rig.world.calls[0] == "olap" and rig.world.calls.count("olap") == 2
    assert rig.world.committed == {(TOPIC, 0): 2}
    assert rig.campaign_sent() == 2
    email_keys = [k for k in rig.world.written if '"e1"' in k]
    assert len(email_keys) == 1, email_keys  # the first email's state was sent once


def test_olap_failing_again_for_the_left_over_rows_takes_no_snapshot(rig):
    rig.apply(sent(1))
    rig.world.fail.add("olap")
    assert not rig.run().ok
    rig.apply(sent(2))
    rig.world.fail.add("olap")
    rig.world.calls.clear()
    outcome = rig.run()
    assert not outcome.ok and outcome.step == "0 leftover rows"
    assert rig.world.calls == ["olap"]  # no new snapshot, no changelog resent
    assert rig.run().ok and rig.campaign_sent() == 2


def test_ambiguous_olap_write_is_written_again_and_counted_once(rig):
    rig.apply(sent(1), sent(2))
    rig.world.ambiguous = True
    assert not rig.run().ok
    assert rig.world.committed == {}
    assert rig.run().ok
    assert rig.campaign_sent() == 2  # absolute values: the second write changes nothing
    assert rig.world.committed == {(TOPIC, 0): 2}


def test_refused_events_are_dead_lettered_before_the_commit(rig):
    rig.apply(sent(1))
    envelope = Envelope(sent(1), TOPIC, 0, 0, b"acme", b"raw")
    rig.world.refuse = [Rejected(envelope, "posthog", "http_400", "bad event")]
    assert rig.run().ok
    assert [r.sink for r in rig.world.dead] == ["posthog"]
    assert rig.world.committed == {(TOPIC, 0): 1}


def test_dead_letters_that_did_not_flush_are_handed_back_and_sent_once(rig):
    rig.apply(sent(1))
    envelope = Envelope(sent(1), TOPIC, 0, 0, b"acme", b"raw")
    rejected = Rejected(envelope, "posthog", "http_400", "bad event")
    rig.world.refuse = [rejected]
    rig.world.fail.add("dead letters")
    assert not rig.run().ok
    assert rig.world.restored == [rejected] and rig.world.committed == {}
    rig.world.pending_dead = []  # the failed producer's queue is gone with it
    assert rig.run().ok
    assert rig.world.dead == [rejected]
    assert rig.world.committed == {(TOPIC, 0): 1}


@pytest.mark.parametrize("answer", [False, RuntimeError("coordinator moved")])
def test_a_refused_commit_is_retried_by_the_next_checkpoint(rig, answer):
    rig.apply(sent(1))
    rig.world.commit_answer = answer
    outcome = rig.run()
    assert outcome.ok and outcome.committed == {}  # durable, just not committed yet
    assert rig.progress.committed == {}
    rig.world.commit_answer = True
    rig.world.calls.clear()
    assert rig.run().ok
    # nothing else to persist: no changelog, no rows, just the commit
    assert "changelog write" not in rig.world.calls and "olap" not in rig.world.calls
    assert rig.world.calls[-1] == "commit"
    assert rig.world.committed == {(TOPIC, 0): 1}


def test_a_rebalance_during_the_io_commits_nothing(rig):
    rig.apply(sent(1))
    rig.apply(sent(2, tenant="globex"), partition=1)

    def rebalance() -> None:
        rig.world.generation_value += 1

    rig.world.during_olap = rebalance
    outcome = rig.run()
    assert outcome.ok and outcome.committed == {}
    assert "commit" not in rig.world.calls
    assert rig.campaign_sent() == 2  # the rows are written: the next owner's replay is a no-op


def test_only_partitions_still_assigned_are_committed(rig):
    rig.apply(sent(1))
    rig.apply(sent(2, tenant="globex"), partition=1)
    rig.world.assigned = {(TOPIC, 1)}  # partition 0 moved away meanwhile
    outcome = rig.run()
    assert outcome.ok and rig.world.committed == {(TOPIC, 1): 1}


def test_one_checkpoint_at_a_time(rig):
    rig.apply(sent(1))

    async def both() -> list[Outcome]:
        rig.world.gate = asyncio.Event()
        first = asyncio.ensure_future(rig.checkpointer.run())
        await asyncio.sleep(0)
        assert rig.checkpointer.busy  # its I/O is under way (the sinks' flush waits)
        second = asyncio.ensure_future(rig.checkpointer.run())
        await asyncio.sleep(0)
        assert rig.world.calls == ["sinks"]  # the second waits for the first
        rig.world.gate.set()
        return [await first, await second]

    outcomes = asyncio.run(both())
    assert all(o.ok for o in outcomes)
    assert rig.world.calls.count("commit") == 1


def test_sinks_down_for_several_checkpoints_send_no_changelog_twice(rig):
    """While a destination is down the changelog is not written (step 2 fails before it):
    the states are sent once, by the checkpoint that gets through."""
    rig.apply(sent(1))
    for n in range(2, 5):
        rig.world.fail.add("sinks")
        outcome = rig.run()
        assert not outcome.ok and outcome.step == "2 sinks"
        assert rig.world.committed == {} and not rig.world.written
        rig.apply(sent(n))
    assert rig.run().ok
    assert rig.world.committed == {(TOPIC, 0): 4}
    assert rig.campaign_sent() == 4
    keys = [k for k in rig.world.written if k.startswith('["acme"')]
    assert len(keys) == len(set(keys)) == 4, keys  # each email's state sent once


def test_a_paused_route_takes_no_snapshot_and_commits_nothing(rig):
    rig.apply(sent(1))
    rig.world.holding = ["posthog"]
    outcome = rig.run()
    assert not outcome.ok and outcome.step == "1 snapshot"
    assert rig.world.calls == [] and rig.world.committed == {}
    rig.world.holding = []
    assert rig.run().ok and rig.world.committed == {(TOPIC, 0): 1}


# --------------------------------------------------------------- the local state store


def _marker(rig: Rig, partition: int = 0) -> int | None:
    marker = rig.engine.partitions[partition].db.read_marker()
    return None if marker is None else marker.offset


def test_the_store_image_follows_the_olap_rows_and_precedes_the_commit(tmp_path, monkeypatch):
    rig = Rig(tmp_path)
    order = rig.world.calls
    persist = rig.engine.persist

    def recorded(ckpt: Any, runs: Any) -> None:
        order.append("image")
        persist(ckpt, runs)

    monkeypatch.setattr(rig.engine, "persist", recorded)
    rig.apply(sent(1), sent(2))
    assert rig.run().ok
    assert order[-3:] == ["olap", "image", "commit"]
    # the marker: the changelog offset after the entries this checkpoint wrote
    assert _marker(rig) == rig.world.ends[0]
    rig.engine.close()


def test_no_image_before_the_olap_rows_are_in(tmp_path):
    rig = Rig(tmp_path)
    rig.apply(sent(1))
    assert rig.run().ok
    first = _marker(rig)
    rig.apply(sent(2))
    rig.world.fail.add("olap")
    assert not rig.run().ok  # changelog durable, rows not: no image
    assert _marker(rig) == first
    assert rig.run().ok  # the rows first (step 0); the image waits for the next snapshot
    rig.apply(sent(3))
    assert rig.run().ok
    assert _marker(rig) == rig.world.ends[0] > first
    # the image holds the email whose checkpoint failed at first
    rig.engine.close()
    again = _stored_engine_reopened(tmp_path, rig.world.ends)
    assert {k[1] for k in again.partitions[0].email.states} == {"e1", "e2", "e3"}
    again.close()


def test_a_failed_image_write_fails_nothing_and_the_next_one_carries_it(tmp_path, monkeypatch):
    from streams.store import PartitionDB

    rig = Rig(tmp_path)
    rig.apply(sent(1))
    assert rig.run().ok
    first = _marker(rig)
    write = PartitionDB.write

    def full(self: Any, *args: Any) -> Any:
        raise OSError("No space left on device")

    monkeypatch.setattr(PartitionDB, "write", full)
    rig.apply(sent(2))
    outcome = rig.run()
    assert outcome.ok and outcome.committed == {(TOPIC, 0): 2}, "the commit goes on"
    assert _marker(rig) == first
    monkeypatch.setattr(PartitionDB, "write", write)
    rig.apply(sent(3))
    assert rig.run().ok
    rig.engine.close()
    again = _stored_engine_reopened(tmp_path, rig.world.ends)
    assert {k[1] for k in again.partitions[0].email.states} == {"e1", "e2", "e3"}
    again.close()


def _stored_engine_reopened(root: Path, ends: Mapping[int, int]) -> Engine:
    from streams.engine import default_components, state_schema
    from streams.store import Changelog, Identity, StateStore

    identity = Identity("app", 2, state_schema(default_components), "app-changelog")
    engine = Engine(default_components, StateStore.for_app(root, identity, 1000))
    for partition in (0, 1):
        opened = engine.open(partition, Changelog(0, ends.get(partition, 0), 86_400_000))
        assert opened is not None and opened.reused
        engine.restored([partition])
    return engine
