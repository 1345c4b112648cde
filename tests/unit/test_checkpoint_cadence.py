"""Checkpoints start once per interval: the hot loop's and Faust's timer's never queue
one behind the other (streams.worker.Worker.on_timer)."""

from __future__ import annotations

import asyncio
import time

from sluice.settings import Settings


def test_the_timer_starts_a_checkpoint_only_when_none_started_within_the_interval():
    from streams.worker import Worker

    worker = Worker(Settings(sluice_flush_interval_s=5.0))
    started: list[float] = []
    release = asyncio.Event()

    async def checkpoint() -> bool:  # as the real one: the interval counts from its start
        worker.last_checkpoint = time.monotonic()
        started.append(worker.last_checkpoint)
        await release.wait()
        return True

    async def main() -> None:
        worker.checkpoint = checkpoint  # type: ignore[method-assign]
        worker.last_checkpoint = time.monotonic() - 1.0  # the hot loop started one 1 s ago
        await worker.on_timer()
        await asyncio.sleep(0)
        assert started == []  # nothing queued behind it

        worker.last_checkpoint = time.monotonic() - 5.5  # none for longer than the interval
        await worker.on_timer()
        await asyncio.sleep(0)
        assert len(started) == 1

        worker.last_checkpoint -= 10.0  # it runs past the interval: still no second one
        await worker.on_timer()
        await asyncio.sleep(0)
        assert len(started) == 1

        release.set()
        await worker._ckpt_task  # noqa: SLF001
        worker.last_checkpoint -= 10.0  # done, and the interval is over: the next one
        await worker.on_timer()
        await asyncio.sleep(0)
        assert len(started) == 2
        await worker._ckpt_task  # noqa: SLF001

    asyncio.run(main())
