"""The changelog writer's runs of consecutive acknowledged offsets (what a store image's
marker may cover: streams.engine.Engine.persist)."""

from __future__ import annotations

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
