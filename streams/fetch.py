"""The hot path's reader: a confluent-kafka consumer fed by Faust's assignment.

Faust stays the application: its consumer group decides which partitions this worker
owns (rebalancing), its timers checkpoint, its web server answers. What it does not do
is hand events to an agent one by one: measured, Faust's per-event machinery costs
~90 µs of CPU per event, which caps a worker near 11,000 events/s before any work is
done. So the event topics' partitions are *handed off*: Faust's fetcher skips them, and
this reader — librdkafka, in C — fetches them in batches of thousands for
:meth:`streams.worker.Worker.process`.

The reader never joins the group (``assign()``, never ``subscribe()``): it is told what
to read after Faust's rebalance and the state's restore (:mod:`streams.restore`), starts
at the group's committed offsets (the offsets Sluice commits through Faust after each
checkpoint), and drops its partitions when Faust revokes them. Assignment changes and
fetches never overlap (one
lock), so no batch read under an old assignment is ever applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, TopicPartition

from sluice.kafka import PARTITION_EOF
from streams.engine import Forward

log = logging.getLogger("sluice.fetch")

BATCH = 5_000  # most messages one fetch hands to the worker (or SLUICE_BATCH_MAX, if more)
POLL_S = 0.1  # longest one fetch waits for the first message


class Reader:
    """Reads the partitions it is assigned, in batches; thread-safe against the loop."""

    def __init__(self, conf: dict[str, Any], group: str, batch: int = BATCH) -> None:
        if batch < 1:
            raise ValueError(f"a batch holds at least one event, not {batch}")
        self.batch = batch
        self._logger = logging.getLogger("sluice.fetch.librdkafka")
        self.consumer = Consumer(
            {
                **conf,
                "group.id": group,  # only to read the committed offsets; never joins
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
                # prefetch bound (one queue for all partitions): enough to keep a batch
                # ready, not so much that backpressure fills memory with unread events
                "queued.max.messages.kbytes": 64 * 1024,
                "queued.min.messages": 20_000,
                "logger": self._logger,
            }
        )
        self.assigned: set[tuple[str, int]] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sluice-fetch")
        self._lock = asyncio.Lock()
        self.errors: list[str] = []

    async def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Start reading ``partitions`` at the group's committed offsets (else the start)."""
        new = set(partitions) - self.assigned
        if not new:
            return
        async with self._lock:
            # offset -1001 (invalid): librdkafka fetches the group's committed offset
            self.consumer.incremental_assign([TopicPartition(t, p) for t, p in sorted(new)])
            self.assigned |= new
        log.info("reading %s", ", ".join(f"{t}[{p}]" for t, p in sorted(new)))

    async def unassign(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        """Stop reading ``partitions`` (all when None); nothing fetched for them is handed
        out afterwards."""
        gone = self.assigned if partitions is None else set(partitions) & self.assigned
        if not gone:
            return
        async with self._lock:
            self.consumer.incremental_unassign([TopicPartition(t, p) for t, p in sorted(gone)])
            self.assigned -= gone

    async def fetch(self) -> list[Message]:
        """The next batch (maybe empty); errors other than end-of-partition are logged."""
        async with self._lock:
            if not self.assigned:
                return []
            loop = asyncio.get_running_loop()
            consume = self.consumer.consume
            messages = await loop.run_in_executor(self._pool, consume, self.batch, POLL_S)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != PARTITION_EOF:
                log.warning(
                    "fetch error on %s[%s]: %s", message.topic(), message.partition(), error
                )
        return good

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # a fetch in flight returns within POLL_S
        self.consumer.close()


#: How often the event loop serves a producer's delivery reports while a checkpoint waits
#: for them (:meth:`AckedProducer.acknowledged`).
ACK_POLL_S = 0.005


class AckedProducer:
    """An idempotent ``acks=all`` librdkafka producer whose flush raises unless every
    record was acknowledged (the changelog writer and the forwarder).

    A checkpoint waits for the acknowledgements on the event loop
    (:meth:`acknowledged`), not with a blocking :meth:`flushed` in a thread:
    confluent-kafka hands every delivery report to Python by taking the GIL (even for a
    record produced without a callback), so a thread serving them beside the busy hot
    loop waited for the GIL once per record, up to the interpreter's switch interval
    (5 ms) each time. Measured in the bench (200,000 events): 13,000–31,000 changelog
    entries took 1.2–2.8 s to flush from a thread while events were applied and 0.04 s
    with the loop idle; a busy thread beside a flush of 26,000 records made it take
    10–18 s. The loop's thread already holds the GIL between reports (bench/README.md,
    2026-12-04).
    """

    def __init__(self, conf: dict[str, Any], logger: str, extra: dict[str, Any]) -> None:
        from confluent_kafka import Producer

        self._logger = logging.getLogger(logger)
        self.producer = Producer(
            {
                **conf,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "compression.type": "lz4",
                **extra,
                "logger": self._logger,
            }
        )
        self._errors: list[str] = []

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record, waiting for room when librdkafka's queue is full."""
        while True:
            try:
                self.producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    headers=headers,
                    on_delivery=self._delivered,
                )
                return
            except BufferError:
                self.producer.poll(0.05)

    def flushed(self, what: str, timeout: float) -> None:
        """Block until every queued record is acknowledged; raise if any was not."""
        self._settled(what, self.producer.flush(timeout))

    async def acknowledged(self, what: str, timeout: float) -> None:
        """Wait, on the event loop, until every queued record is acknowledged; raise if
        any was not (see the class docstring). Each turn serves the reports waiting
        (``poll(0)``: their callbacks, about a microsecond each) and sleeps
        :data:`ACK_POLL_S`."""
        producer = self.producer
        deadline = time.monotonic() + timeout
        while True:
            producer.poll(0)
            if not len(producer) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(ACK_POLL_S)
        self._settled(what, len(producer))

    def _settled(self, what: str, left: int) -> None:
        errors, self._errors = self._errors, []
        if left or errors:
            raise RuntimeError(
                f"{what}: {left} record(s) unacknowledged, {len(errors)} failed"
                + (f" ({errors[0]})" if errors else "")
            )


class ChangelogWriter(AckedProducer):
    """Writes the state changelog with librdkafka (JSON key and value: the bytes
    :func:`streams.engine.decode_entry` reads back); Faust's producer would add its
    per-message machinery to tens of thousands of entries per checkpoint.

    It remembers, per partition, the offset after the last entry Kafka acknowledged
    (:meth:`ends`): the marker a local store's image gets (:mod:`streams.store`).
    """

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        super().__init__(
            conf,
            "sluice.changelog.librdkafka",
            {"batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000},
        )
        self.topic = topic
        self._runs: dict[int, tuple[int, int]] = {}  # see runs()

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
            return
        partition, offset = msg.partition(), msg.offset()
        if offset is None or offset < 0:
            return
        run = self._runs.get(partition)
        if run is None or offset > run[1]:  # the first, or another writer's came between
            self._runs[partition] = (offset, offset + 1)
        elif offset == run[1]:
            self._runs[partition] = (run[0], offset + 1)

    def ends(self) -> dict[int, int]:
        """Per partition, the offset after the last entry acknowledged so far (a run
        always ends at the latest one)."""
        return {partition: end for partition, (_, end) in self._runs.items()}

    def runs(self) -> dict[int, tuple[int, int]]:
        """Per partition, the last run of consecutive offsets this writer had acknowledged,
        ``(first, end)``: a marker may cover it only from a position inside it (a gap
        before it holds another writer's entries, which the state may not have)."""
        return dict(self._runs)

    def write(self, entries: Iterable[tuple[int, str, list | None]]) -> None:
        """Queue ``(partition, key, value)`` entries (key: the engine's JSON string; value
        None: a tombstone, so compaction removes the key for good)."""
        topic = self.topic
        produce = self.producer.produce
        dumps = orjson.dumps
        delivered = self._delivered
        for partition, key, value in entries:
            k, v = dumps(key), (None if value is None else dumps(value))
            try:
                produce(topic, v, k, partition=partition, on_delivery=delivered)
            except BufferError:
                self.send(topic, v, k, partition)

    def flush(self, timeout: float = 60.0) -> None:
        """Block until every queued entry is acknowledged; raise if any was not."""
        self.flushed("changelog", timeout)

    async def acknowledged(self, timeout: float = 60.0) -> None:
        """:meth:`flush` on the event loop (what a checkpoint waits with)."""
        await super().acknowledged("changelog", timeout)


class Forwarder(AckedProducer):
    """Produces records read at a partition that is not their home to their home partition
    (the checkpoint's forwarder port): raw value unchanged, the catalog's key, header
    ``sluice.forwarded_from`` = ``partition:offset``. Idempotent producer, ``acks=all``."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf, "sluice.forward.librdkafka", {"message.max.bytes": 16 * 1024 * 1024})

    def write(self, records: Iterable[Forward]) -> None:
        for r in records:
            headers = [("sluice.forwarded_from", r.origin.encode())]
            self.send(r.topic, r.value, r.key, r.partition, headers)

    def flush(self, timeout: float = 60.0) -> None:
        self.flushed("forwarding", timeout)

    async def acknowledged(self, timeout: float = 60.0) -> None:
        """:meth:`flush` on the event loop (what a checkpoint waits with)."""
        await super().acknowledged("forwarding", timeout)
