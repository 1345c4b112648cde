"""The worker's garbage-collection schedule (streams/gcpolicy.py)."""

from __future__ import annotations

import gc

import pytest

from streams.gcpolicy import NEVER, YOUNG, GcPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policy():
    clock = Clock()
    p = GcPolicy(full_every_s=60.0, clock=clock)
    p.clock_ = clock  # type: ignore[attr-defined]
    defaults = gc.get_threshold()
    yield p
    p.stop()
    assert gc.get_threshold() == defaults  # stop() restores Python's defaults
    assert gc.get_freeze_count() == 0


def test_first_tick_freezes_start_up_and_stops_automatic_full_collections(policy):
    policy.tick()
    assert policy.started
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG, 10, NEVER)
    assert policy.full_collections == 0


def test_prepare_collects_before_events_so_the_first_tick_only_freezes(policy, monkeypatch):
    collections = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or collect(*a))
    policy.prepare()
    assert len(collections) == 1 and gc.get_freeze_count() > 0
    policy.prepare()  # once
    assert len(collections) == 1
    later = [object() for _ in range(3)], {"restored": ["state"]}  # made after prepare()
    frozen = gc.get_freeze_count()
    policy.tick()
    assert policy.started and len(collections) == 1  # no second full collection
    assert gc.get_freeze_count() > frozen, "what came since is frozen too"
    assert gc.get_threshold() == (YOUNG, 10, NEVER)
    del later


def test_full_collection_once_per_interval(policy):
    policy.tick()
    policy.clock_.now += 59.0
    policy.tick()
    assert policy.full_collections == 0
    policy.clock_.now += 1.0
    policy.tick()
    assert policy.full_collections == 1
    policy.tick()  # the interval starts again from the collection
    assert policy.full_collections == 1
    assert policy.stats()["full_collections"] == 1


def test_a_full_collection_frees_cycles_made_after_the_freeze(policy):
    policy.tick()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
    alive = len([o for o in gc.get_objects() if isinstance(o, Node)])
    del a, b
    policy.collect()
    assert len([o for o in gc.get_objects() if isinstance(o, Node)]) == alive - 2
