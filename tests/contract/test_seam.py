"""The Faust seam (streams/seam.py): every private attribute it names is where it expects
it in the installed faust-streaming / aiokafka, and each hook does what the worker relies
on. An upgrade that moves one fails here, by name, before any fault test runs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from streams import seam

REPO = Path(__file__).resolve().parents[2]


def test_installed_versions_and_attributes_match_the_seam():
    assert seam.problems() == []
    seam.check()


def test_an_untested_version_or_a_moved_attribute_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(seam, "_version", lambda dist: (9, 9, 9))
    monkeypatch.setattr(seam, "PRIVATE", (*seam.PRIVATE, (seam.SeamApp, "_gone", "a test")))
    with pytest.raises(seam.SeamError) as info:
        seam.check()
    message = str(info.value)
    assert "\n" not in message
    assert "faust-streaming 9.9.9" not in message  # the installed version string is shown
    assert "is not a tested version" in message and "_gone is gone (a test)" in message


def test_pyproject_pins_the_tested_ranges():
    text = (REPO / "pyproject.toml").read_text()
    for dist, (low, high) in seam.TESTED.items():
        pin = f'"{dist}>={".".join(map(str, low))}'
        assert pin in text and f',<{".".join(map(str, high))}"' in text, dist


def test_no_private_faust_or_aiokafka_attribute_outside_the_seam():
    """Only streams/seam.py reaches into faust / aiokafka internals."""
    pattern = re.compile(r"\b(consumer|app|table|_thread)\._[a-z]\w*")
    offenders = []
    for path in (REPO / "streams").rglob("*.py"):
        if path.name == "seam.py":
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert offenders == []


class _FakeConsumer:
    def __init__(self) -> None:
        self.committed: dict = {}

    def _get_active_partitions(self) -> set:
        from faust.types import TP

        return {TP("events.email", 0), TP("other", 0)}

    async def _commit(self, offsets) -> bool:
        self.committed.update(offsets)
        return True


def test_hand_off_keeps_faust_off_the_handed_off_topics():
    consumer = _FakeConsumer()
    seam.hand_off(consumer, ["events.email"])
    assert {tp.topic for tp in consumer._get_active_partitions()} == {"other"}


def test_still_consuming_stamps_aiokafkas_last_fetch():
    """Faust never polls aiokafka (every partition is handed off): the hot loop's stamp is
    what keeps aiokafka from leaving the group after max_poll_interval."""
    import time

    from aiokafka.consumer.subscription_state import SubscriptionState

    async def check() -> None:
        class Thread:
            def __init__(self) -> None:
                self.client = type("Client", (), {"_subscription": SubscriptionState()})()

            def _ensure_consumer(self):
                return self.client

        consumer = type("Consumer", (), {"_thread": Thread()})()
        subscription = consumer._thread.client._subscription
        subscription._last_fetch_ended = time.monotonic() - 600  # idle for ten minutes
        assert subscription.fetcher_idle_time >= 600
        seam.still_consuming(consumer)
        assert subscription.fetcher_idle_time < 1
        seam.still_consuming(object())  # no consumer yet: nothing to stamp, no error

    asyncio.run(check())


def test_commit_goes_through_the_consumer():
    consumer = _FakeConsumer()
    assert asyncio.run(seam.commit(consumer, {"tp": 5})) is True
    assert consumer.committed == {"tp": 5}


def test_the_real_app_has_the_hooks_the_worker_uses(tmp_path):
    """A real SeamApp: the overridden methods exist and are called."""
    app = seam.SeamApp(
        "seam-contract",
        broker="kafka://127.0.0.1:1",
        datadir=str(tmp_path),
        consumer_group_instance_id="worker-1",
    )
    assert app.conf.consumer_group_instance_id == "worker-1"  # static membership
    drained = []

    async def drain() -> None:
        drained.append(True)

    app.before_wait_empty = drain
    consumer = app.consumer  # faust's real consumer class (not started)
    assert callable(getattr(type(consumer), "_get_active_partitions", None))
    assert callable(getattr(type(consumer), "_commit", None))
    assert callable(getattr(type(consumer._thread), "_ensure_consumer", None))  # noqa: SLF001
