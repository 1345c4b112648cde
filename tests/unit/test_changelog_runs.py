"""The changelog writer's runs of consecutive acknowledged offsets (what a store image's
marker may cover: streams.engine.Engine.persist)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from streams.fetch import ChangelogWriter


class Acked:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


def _writer() -> ChangelogWriter:
    writer = ChangelogWriter.__new__(ChangelogWriter)  # no producer: only the callbacks
    writer._errors, writer._runs = [], {}
    return writer


def test_a_run_grows_with_consecutive_offsets_and_restarts_after_a_gap() -> None:
    writer = _writer()
    for offset in (10, 11, 12):
        writer._delivered(None, Acked(0, offset))
    writer._delivered(None, Acked(1, 5))
    assert writer.runs() == {0: (10, 13), 1: (5, 6)}
    for offset in (13, 14):  # the next checkpoint's entries, right after
        writer._delivered(None, Acked(0, offset))
    assert writer.runs()[0] == (10, 15)
    for offset in (20, 21):  # another writer's entries 15..19 came between
        writer._delivered(None, Acked(0, offset))
    assert writer.runs()[0] == (20, 22)
    assert writer.ends() == {0: 22, 1: 6}
    writer._delivered("broker down", Acked(0, 22))  # a failure acknowledges nothing
    assert writer.runs()[0] == (20, 22) and writer._errors == ["broker down"]


class ReportingProducer:
    """librdkafka's side as a checkpoint sees it: records in flight, whose delivery
    reports arrive in bursts and are served (their callbacks run) by ``poll``."""

    def __init__(self, writer: ChangelogWriter, bursts: list[list[tuple]]) -> None:
        self.writer, self.bursts = writer, bursts
        self.served_in: set[int] = set()
        self.polls = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self.bursts)

    def poll(self, timeout: float) -> int:
        assert timeout == 0, "the event loop never blocks on the producer"
        self.polls += 1
        self.served_in.add(threading.get_ident())
        burst = self.bursts.pop(0) if self.bursts else []
        for err, partition, offset in burst:
            self.writer._delivered(err, Acked(partition, offset))
        return len(burst)


def test_acknowledged_serves_the_reports_on_the_event_loop_until_none_is_left() -> None:
    writer = _writer()
    bursts = [[(None, 0, 1), (None, 0, 2)], [], [(None, 1, 7)], [(None, 0, 3)]]
    producer = writer.producer = ReportingProducer(writer, bursts)  # type: ignore[assignment]
    asyncio.run(writer.acknowledged(timeout=5.0))
    assert producer.polls == 4 and not producer.bursts
    assert producer.served_in == {threading.get_ident()}  # the loop's thread, no other
    assert writer.runs() == {0: (1, 4), 1: (7, 8)}


def test_acknowledged_raises_when_a_record_failed_or_is_still_unacknowledged() -> None:
    writer = _writer()
    writer.producer = ReportingProducer(writer, [[(None, 0, 1), ("timed out", 0, 2)]])  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match=r"changelog: 0 record\(s\) unacknowledged, 1 failed"):
        asyncio.run(writer.acknowledged(timeout=5.0))
    assert writer._errors == []  # reported once

    stuck = ReportingProducer(writer, [[]] * 1_000 + [[(None, 0, 3)]])
    writer.producer = stuck  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match=r"changelog: 1 record\(s\) unacknowledged, 0 failed"):
        asyncio.run(writer.acknowledged(timeout=0.05))
    assert len(stuck) == 1  # it gave up at the deadline, the record still in flight
