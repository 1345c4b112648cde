"""The reader hands the worker batches of at most ``SLUICE_BATCH_MAX`` events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from sluice.settings import Settings
from streams.fetch import Reader


class FakeConsumer:
    """What ``Reader.fetch`` calls on librdkafka's consumer."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append((num_messages, timeout))
        return []

    def close(self) -> None:
        pass


def test_a_fetch_asks_for_at_most_the_configured_batch():
    reader = Reader({"bootstrap.servers": "127.0.0.1:9"}, "g", batch=700)
    real = reader.consumer
    fake = FakeConsumer()
    reader.consumer = fake  # type: ignore[assignment]
    reader.assigned = {("events.email", 0)}
    try:
        assert asyncio.run(reader.fetch()) == []
    finally:
        reader.consumer = real
        reader.close()
    assert [n for n, _ in fake.calls] == [700]


def test_the_batch_setting_is_bounded():
    assert Settings().sluice_batch_max == 1_000
    assert Settings(sluice_batch_max=1).sluice_batch_max == 1
    for bad in (0, -5, 1_000_000):
        with pytest.raises(ValidationError):
            Settings(sluice_batch_max=bad)
    with pytest.raises(ValueError, match="at least one event"):
        Reader({"bootstrap.servers": "127.0.0.1:9"}, "g", batch=0)
