"""A changelog held in memory, read the way :class:`streams.restore.ChangelogSource` reads
Kafka: records with ``key()``/``value()`` like confluent-kafka's messages, decoded a batch
at a time by :func:`streams.restore.decode_batch`. For rebuilds without a broker (the
rebuild bench, the rebuild tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Record = tuple[bytes, bytes | None]


class _Message:
    __slots__ = ("_k", "_v")

    def __init__(self, k: bytes, v: bytes | None) -> None:
        self._k, self._v = k, v

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes | None:
        return self._v


class MemoryChangelog:
    """One partition's changelog records ``(key, value)`` (value None: a tombstone)."""

    def __init__(self, records: list[Record], batch: int) -> None:
        self.messages = [_Message(k, v) for k, v in records]
        self.batch = batch

    def read(self, partition: int, low: int, high: int) -> Iterator[list[Any]]:
        from streams.restore import decode_batch

        for at in range(low, high, self.batch):
            yield decode_batch(self.messages[at : min(at + self.batch, high)])
