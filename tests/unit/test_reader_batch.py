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


def test_a_fetch_is_applied_in_steps_with_the_loop_turning_between():
    from streams.worker import Worker

    worker = Worker(Settings(sluice_batch_max=3))
    steps: list[list[int]] = []
    ticks: list[int] = []

    async def process(messages: list[int]) -> None:
        steps.append(list(messages))

    async def other() -> None:  # another task on the loop: a sink send, a timer
        for _ in range(5):
            ticks.append(len(steps))
            await asyncio.sleep(0)

    async def main() -> None:
        worker.process = process  # type: ignore[method-assign]
        beside = asyncio.create_task(other())
        await worker._apply_in_steps(list(range(7)))  # noqa: SLF001
        await beside
        steps.append([])  # marks the end
        await worker._apply_in_steps([7, 8])  # noqa: SLF001 - one step: as it came

    asyncio.run(main())
    assert steps == [[0, 1, 2], [3, 4, 5], [6], [], [7, 8]]
    assert 1 in ticks and 2 in ticks  # it ran between the steps, not only after them
