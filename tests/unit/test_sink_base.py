"""The retry policy and the batching sink (sinks.base), without any network."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import ValidationError

from sinks.base import (
    RELEASED,
    BatchingSink,
    BatchLimits,
    Envelope,
    PermanentError,
    RetryPolicy,
    SinkUnavailable,
    TransientError,
    parse_retry_after,
)
from sinks.http import raise_for_status
from sluice.settings import Settings


def test_backoff_is_exponential_and_capped():
    p = RetryPolicy(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.0)
    assert [p.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert p.delay(10_000) == 1.0  # no overflow


def test_jitter_stays_within_bounds():
    p = RetryPolicy(initial_s=1.0, max_s=1.0, jitter=0.2)
    assert p.delay(0, rand=lambda: 0.0) == pytest.approx(0.8)
    assert p.delay(0, rand=lambda: 1.0) == pytest.approx(1.2)


def test_retry_after_is_a_floor_and_is_capped():
    p = RetryPolicy(initial_s=0.1, max_s=1.0, jitter=0.0, max_retry_after_s=60)
    assert p.delay(0, retry_after=3.0) == 3.0
    assert p.delay(5, retry_after=0.01) == 1.0
    assert p.delay(0, retry_after=86_400) == 60


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(
        10.0
    )


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429, 401, 403])
def test_retryable_statuses(status):
    with pytest.raises(TransientError):
        raise_for_status(status)


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_permanent_statuses(status):
    with pytest.raises(PermanentError):
        raise_for_status(status)


# -- a sink with a scripted destination ------------------------------------------------------
class Scripted(BatchingSink):
    def __init__(
        self, script: list[Any] | None = None, poison: set[int] | None = None, **limits: Any
    ):
        super().__init__(
            "scripted",
            BatchLimits(**{"max_events": 10, "flush_deadline_s": 5, **limits}),
            RetryPolicy(initial_s=0.01, max_s=0.05, jitter=0),
        )
        self.script = list(script or [])
        self.poison = poison or set()
        self.received: list[int] = []
        self.calls: list[tuple[float, int]] = []

    def prepare(self, envelope: Envelope) -> int | None:
        n = envelope.record["n"]
        return None if n < 0 else n

    async def send(self, items: list[Any]) -> None:
        self.calls.append((time.monotonic(), len(items)))
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            await asyncio.sleep(step)
        if self.poison & set(items):
            raise PermanentError("http_400", "bad")
        self.received.extend(items)


def envs(n: int, start: int = 0, partition: int = 0) -> list[Envelope]:
    return [Envelope({"n": i}, "events.email", partition, i) for i in range(start, start + n)]


def test_flush_delivers_everything_in_bounded_batches():
    async def main() -> Scripted:
        sink = Scripted(max_events=10)
        sink.write(envs(95))
        assert await sink.flush() == []
        return sink

    sink = asyncio.run(main())
    assert sorted(sink.received) == list(range(95))
    assert max(n for _, n in sink.calls) <= 10
    assert sink.buffered() == 0


def test_prepare_returning_none_sends_nothing():
    async def main() -> Scripted:
        sink = Scripted()
        sink.write([Envelope({"n": -1}, "t", 0, 0)])
        await sink.flush()
        return sink

    assert asyncio.run(main()).calls == []


def test_transient_errors_are_retried_without_loss_or_duplicates():
    async def main() -> Scripted:
        sink = Scripted(
            [TransientError("http_500"), TransientError("timeout"), 0.0], max_events=100
        )
        sink.write(envs(30))
        assert await sink.flush() == []
        return sink

    sink = asyncio.run(main())
    assert sorted(sink.received) == list(range(30))
    assert len(sink.calls) == 3


def test_retry_after_is_honoured():
    async def main() -> Scripted:
        sink = Scripted([TransientError("http_429", retry_after=0.3)], max_events=100)
        sink.write(envs(5))
        await sink.flush()
        return sink

    sink = asyncio.run(main())
    (t0, _), (t1, _) = sink.calls
    assert t1 - t0 >= 0.29


def test_a_sink_down_past_the_deadline_fails_the_flush_and_keeps_the_events():
    async def main() -> Scripted:
        sink = Scripted([TransientError("http_503")] * 1000, max_events=10, flush_deadline_s=0.2)
        sink.write(envs(25))
        with pytest.raises(SinkUnavailable):
            await sink.flush()
        assert sink.buffered() == 25 and sink.received == []
        sink.script.clear()  # the destination is back
        assert await sink.flush() == []
        return sink

    sink = asyncio.run(main())
    assert sorted(sink.received) == list(range(25))


def test_a_permanent_refusal_is_bisected_down_to_the_bad_events():
    async def main() -> tuple[Scripted, list]:
        sink = Scripted(poison={7, 33}, max_events=64)
        sink.write(envs(64))
        return sink, await sink.flush()

    sink, rejected = asyncio.run(main())
    assert sorted(r.envelope.offset for r in rejected) == [7, 33]
    assert {r.sink for r in rejected} == {"scripted"} and rejected[0].reason == "http_400"
    assert sorted(sink.received) == [i for i in range(64) if i not in (7, 33)]


def test_a_sink_holds_what_it_prepared_not_the_decoded_records():
    async def main() -> tuple[Scripted, list]:
        sink = Scripted(poison={3}, max_events=64)
        batch = [e._replace(key=b"k", value=b"raw-%d" % e.offset) for e in envs(8)]
        sink.write(batch)
        # what the buffer pins: its open batch and its sealed ones
        held = [env for env, _ in sink._open]  # noqa: SLF001
        held += [env for b in sink._queue for env, _ in b.entries]  # noqa: SLF001
        assert len(held) == 8 and {env.record is RELEASED for env in held} == {True}
        return sink, await sink.flush()

    sink, rejected = asyncio.run(main())
    # a dead letter needs only the position and the raw bytes, which stay
    assert [(r.envelope.offset, r.envelope.key, r.envelope.value) for r in rejected] == [
        (3, b"k", b"raw-3")
    ]
    assert rejected[0].envelope.record is RELEASED
    assert sorted(sink.received) == [0, 1, 2, 4, 5, 6, 7]


def test_full_batches_are_sent_in_the_background_before_flush():
    async def main() -> Scripted:
        sink = Scripted(max_events=10)
        sink.write(envs(50))
        await asyncio.sleep(0.05)
        assert len(sink.received) == 50  # no flush yet
        await sink.flush()
        return sink

    asyncio.run(main())


def test_a_partial_batch_goes_out_after_linger_without_another_write():
    async def main() -> tuple[list[int], list[int], int]:
        sink = Scripted(max_events=1000, linger_s=0.1)
        sink.write(envs(3))
        await asyncio.sleep(0.02)
        early = list(sink.received)  # younger than linger_s: still open
        await asyncio.sleep(0.3)  # nothing more written, no flush
        late = list(sink.received)
        sink.write(envs(2, start=3))  # a batch opened after the first was sealed
        await asyncio.sleep(0.3)
        await sink.close()
        return early, late, len(sink.received)

    early, late, total = asyncio.run(main())
    assert early == []
    assert late == [0, 1, 2]
    assert total == 5


def test_a_closed_sink_arms_no_linger_timer():
    async def main() -> Scripted:
        sink = Scripted(max_events=1000, linger_s=0.05)
        sink.write(envs(1))
        await sink.close()
        await asyncio.sleep(0.15)
        return sink

    sink = asyncio.run(main())
    assert sink.received == [] and sink.buffered() == 1  # kept for the flush that owns it


def test_a_batch_sealed_during_a_flush_is_sent_during_it():
    async def main() -> tuple[Scripted, float, float, list[int]]:
        sink = Scripted([0.3, 0.3], max_events=10, max_in_flight=4)
        sink.write(envs(10))  # sealed and sent in the background: 0.3 s
        flushing = asyncio.create_task(sink.flush())
        await asyncio.sleep(0.05)
        sink.write(envs(10, start=10))  # sealed after the flush began
        await flushing
        returned = time.monotonic()
        at_return = sorted(sink.received)
        await asyncio.sleep(0.3)  # the later batch, still in flight, is the pump's now
        return sink, sink.calls[1][0], returned, at_return

    sink, second_sent, returned, at_return = asyncio.run(main())
    assert second_sent < returned  # not left waiting for the end of the flush
    assert at_return[:10] == list(range(10))  # what the flush was for: delivered
    assert sorted(sink.received) == list(range(20))
    assert sink.buffered() == 0


def test_a_later_batch_failing_does_not_fail_the_flush_it_rode_along():
    async def main() -> tuple[Scripted, list[int]]:
        # the first batch takes 0.2 s; the one sealed during the flush fails past the
        # flush's deadline (every retry refused 503, 0.4 s deadline)
        sink = Scripted([0.2] + [TransientError("http_503")] * 50, max_events=10)
        sink.limits = BatchLimits(max_events=10, flush_deadline_s=0.4)
        sink.write(envs(10))
        flushing = asyncio.create_task(sink.flush())
        await asyncio.sleep(0.05)
        sink.write(envs(10, start=10))
        assert await flushing == []
        delivered = sorted(sink.received)
        sink.script = []  # the destination is back
        assert await sink.flush() == []
        return sink, delivered

    sink, delivered = asyncio.run(main())
    assert delivered == list(range(10))  # the flush's own batch
    assert sorted(sink.received) == list(range(20))  # the other one, queued again, later
    assert sink.buffered() == 0


def test_a_flush_waits_for_later_batches_an_earlier_flush_left_in_flight():
    async def main() -> tuple[Scripted, int]:
        sink = Scripted([0.1, 0.4], max_events=10)
        sink.write(envs(10))
        flushing = asyncio.create_task(sink.flush())
        await asyncio.sleep(0.02)
        sink.write(envs(10, start=10))  # sent during the flush, still in flight after it
        sink._may_send = lambda: False  # type: ignore[method-assign]  # as if refused: no
        await flushing  # background sender is started to take that batch over
        del sink._may_send
        in_flight = sink._delivering  # noqa: SLF001
        await sink.flush()  # nothing new to send: it still waits for that batch
        return sink, in_flight

    sink, in_flight = asyncio.run(main())
    assert in_flight == 1
    assert sorted(sink.received) == list(range(20))
    assert sink._delivering == 0  # noqa: SLF001


def test_forget_drops_buffered_events_of_revoked_partitions():
    async def main() -> Scripted:
        sink = Scripted(max_events=1000)
        sink.write(envs(10, partition=0) + envs(10, start=100, partition=1))
        sink.forget({("events.email", 1)})
        await sink.flush()
        return sink

    assert sorted(asyncio.run(main()).received) == list(range(10))


def test_in_flight_is_bounded():
    async def main() -> int:
        sink = Scripted([0.05] * 20, max_events=1, max_in_flight=3)
        active = peak = 0
        original = sink.send

        async def counting(items: list[Any]) -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await original(items)
            finally:
                active -= 1

        sink.send = counting  # type: ignore[method-assign]
        sink.write(envs(12))
        await sink.flush()
        return peak

    assert asyncio.run(main()) == 3


def test_a_sink_linger_is_finite():
    assert Settings(sink_linger_s=300).sink_linger_s == 300
    for bad in (0, float("inf"), float("nan"), 301):
        with pytest.raises(ValidationError):
            Settings(sink_linger_s=bad)


def test_a_send_that_fails_as_the_flush_wakes_frees_its_slot_for_the_next_flush():
    # A task is done before its done-callbacks run. Here a batch sealed meanwhile wakes
    # the flush in the very turn of the loop in which its send fails: the flush sees the
    # send done, fails, and the next flush starts in that same turn. A slot count kept by
    # a done-callback still held the slot then: that flush sent nothing and returned
    # success with every batch unsent (seen as a refused sink's flush that did not raise).
    class FailsOnce(Scripted):
        async def send(self, items: list[Any]) -> None:
            if not self.calls:
                self.calls.append((time.monotonic(), len(items)))
                # a full batch, sealed in the next turn, in which this send fails too
                asyncio.get_running_loop().call_soon(self.write, envs(10, start=10))
                await asyncio.sleep(0)
                raise RuntimeError("boom")
            await super().send(items)

    async def main() -> FailsOnce:
        sink = FailsOnce(max_events=10, max_in_flight=1)
        sink.write(envs(10))
        # as if refused: no background sender is started, the next flush alone sends
        sink._may_send = lambda: False  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="boom"):
            await sink.flush()
        assert await sink.flush() == []
        assert sink.buffered() == 0
        await sink.close()
        return sink

    sink = asyncio.run(main())
    assert sorted(sink.received) == list(range(20))
