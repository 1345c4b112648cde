"""The checkpoint: what makes at-least-once delivery exact, as explicit ordered steps.

Every ``SLUICE_FLUSH_INTERVAL_S`` (and before a rebalance or shutdown) the worker persists
what it applied since the last checkpoint, then commits the offsets that covers:

0. rows left over: an earlier checkpoint made its changelog durable but could not write
   its OLAP rows; those rows are written first, and no new snapshot is taken until they
   are in (resending the changelog on every retry would flood it while ClickHouse is down);
1. **snapshot**, under the state lock: the changed state (changelog entries and OLAP
   rows), the offsets applied, the count of events since the last checkpoint. Everything
   after runs without the lock, while the hot loop applies the next batches. No snapshot
   while a paused route holds events (a destination refused Sluice, ``pause`` policy):
   nothing could be committed;
2. **sinks flushed**: every routed event durable at its destination; events a
   destination refused for good are dead-lettered (stage = the sink). Before step 3, not
   beside it: a changelog made durable while a flush fails would leave rows to write
   while the destination still refuses (a paused route must hold them too), or be sent
   again at every retry of an outage;
3. **changelog** written and flushed (the state survives a crash from here on), and the
   erasure requests applied since the last checkpoint written to the erasure registry,
   and records read at a partition that is not their home forwarded there
   (:class:`streams.engine.Forward`; produced again at a new offset, a replay of them is
   a redelivery);
4. **dead letters** flushed (decode failures and refused events are durable);
5. **OLAP rows** written (absolute values, idempotent: a replay changes nothing), never a
   row of an erased lead (:meth:`streams.engine.Engine.scrub_rows`);
5b. **erasures settled** (docs/erasure.md): the rows of leads erased since are purged
   from the OLAP, after this checkpoint's rows (so nothing written before the erasure
   reached this worker survives it), and the destinations are asked to delete what they
   hold under an erased lead's pseudonym, their answers recorded in the registry before
   the lead's secret is destroyed. A failure here fails nothing: what is not settled is
   tried again at a later checkpoint (and the purge at every start-up);
6. **local state stored**: each partition's local store gets the snapshot's changes and a
   marker (the changelog offset after the entries step 3 wrote) in one atomic write
   (:meth:`streams.engine.Engine.persist`). Only now: an image must never hold state whose
   changelog entries or rows are not durable, or a restart that reuses it would skip
   them (the replayed events change nothing in it). A failure here fails nothing: the
   store stays at its previous image, which the changelog after its marker completes;
7. **offsets committed**, only if the consumer group's generation is the one of the
   snapshot and only for partitions still assigned (after a rebalance the new owner
   replays from the last commit). A refused or failed commit fails nothing: the state is
   durable, and the next checkpoint commits the same offsets.

A failure at any step commits nothing: the snapshot is handed back to the engine
(:meth:`streams.engine.Engine.requeue`), or, if the changelog was already durable, only
its rows are kept for step 0 (and the local stores wait for the next checkpoint). Every
step talks to the world through one small port (:class:`Ports`), so the whole sequence
and each of its failure paths run in tests with fakes (``tests/unit/test_checkpoint.py``)
— the worker wires the real ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sinks.base import Rejected
from sluice.privacy import Erasure
from streams.engine import Checkpoint, Engine, ErasureWork, Forward
from streams.erasure import Forget

log = logging.getLogger("sluice.checkpoint")

TP = Any  # a (topic, partition) key: faust's TP in the worker, a tuple in tests
T = TypeVar("T")
Rows = dict[str, list[list]]


class Sinks(Protocol):
    """The router: flush every sink; give back what a failed checkpoint had refused."""

    def held(self) -> Sequence[str]:
        """The sinks whose paused route holds events (refused destination, ``pause``)."""

    async def flush(self) -> list[Rejected]: ...

    def restore_rejected(self, rejected: list[Rejected]) -> None: ...


class DeadLetters(Protocol):
    """The dead-letter topic's producer."""

    async def rejected(self, item: Rejected) -> None:
        """Queue the dead letter of an event a sink refused for good."""

    async def flush(self) -> None:
        """Every queued dead letter acknowledged (raises if not)."""


class Changelog(Protocol):
    """The state changelog: ``write`` blocks (run in a thread); the acknowledgements are
    awaited on the event loop (:class:`streams.fetch.AckedProducer`)."""

    def write(self, entries: Sequence[tuple[int, str, list]]) -> None: ...

    async def acknowledged(self) -> None:
        """Every entry written acknowledged; raises if one was not."""

    def runs(self) -> Mapping[int, tuple[int, int]]:
        """Per partition, the last run of consecutive offsets written and acknowledged."""


class Forwarder(Protocol):
    """Produces records read at the wrong partition to their home (``write`` blocks: a
    thread; the acknowledgements are awaited on the loop, as the changelog's)."""

    def write(self, records: Sequence[Forward]) -> None: ...

    async def acknowledged(self) -> None:
        """Every record written acknowledged; raises if one was not."""


class Warehouse(Protocol):
    """The OLAP store (a blocking call: run in a thread)."""

    def write(self, rows: Rows) -> None: ...


class Group(Protocol):
    """The consumer group: its generation, this member's assignment, the commit."""

    def generation(self) -> int: ...

    def assignment(self) -> set[TP]: ...

    async def commit(self, offsets: Mapping[TP, int]) -> bool:
        """Commit under the current generation; False when the group refused (rebalancing)."""


class Erasures(Protocol):
    """The erasure registry and what erasures must reach outside (blocking: in a thread)."""

    def publish(self, entries: Sequence[Erasure]) -> None:
        """Write registry records and wait for their acknowledgement (raises if not)."""

    def settle(self, work: ErasureWork) -> tuple[dict[str, set[str]], list[tuple[Forget, bool]]]:
        """Purge and ask what ``work`` says; return the references purged and, per secret
        asked about, whether its outcome is durable. Never raises."""


@dataclass
class Ports:
    """Everything a checkpoint talks to."""

    sinks: Sinks
    dead_letters: DeadLetters
    changelog: Changelog
    warehouse: Warehouse
    group: Group
    erasures: Erasures | None = None  # None: erasure requests go nowhere (tests)
    #: needed only by a worker that may read records of another partition's state
    forwarder: Forwarder | None = None


@dataclass
class Progress:
    """What the hot loop applied, and what checkpoints committed (this generation)."""

    applied: dict[TP, int] = field(default_factory=dict)  # one past the last offset applied
    committed: dict[TP, int] = field(default_factory=dict)
    unflushed: int = 0  # events applied since the last successful checkpoint

    def to_commit(self) -> dict[TP, int]:
        return {tp: o for tp, o in self.applied.items() if self.committed.get(tp) != o}

    def forget(self, tps: set[TP]) -> None:
        """Partitions revoked: their offsets are the next owner's business."""
        self.applied = {tp: o for tp, o in self.applied.items() if tp not in tps}
        self.committed = {tp: o for tp, o in self.committed.items() if tp not in tps}


@dataclass
class Outcome:
    """One checkpoint's result, for metrics and status."""

    ok: bool
    events: int = 0
    changelog: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    step: str | None = None  # the step that failed
    #: seconds each step took, in order (``snapshot`` includes waiting for the state lock)
    steps: dict[str, float] = field(default_factory=dict)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call without stopping the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Checkpointer:
    """Runs the steps above, one checkpoint at a time."""

    def __init__(
        self,
        engine: Engine,
        progress: Progress,
        ports: Ports,
        state_lock: asyncio.Lock,
        on_late: Callable[[dict[str, int]], None] = lambda late: None,
        run_blocking: Callable[..., Awaitable[Any]] = in_thread,
    ) -> None:
        self.engine = engine
        self.progress = progress
        self.ports = ports
        self.state_lock = state_lock
        self.on_late = on_late
        self.run_blocking = run_blocking
        self.leftover: Rows = {}  # step 0's rows
        self._io = asyncio.Lock()  # one checkpoint's I/O at a time

    @property
    def busy(self) -> bool:
        return self._io.locked()

    async def run(self) -> Outcome:
        """One checkpoint (waits for the one in flight, if any)."""
        async with self._io:
            started = time.perf_counter()
            outcome = await self._steps()
            outcome.seconds = time.perf_counter() - started
            return outcome

    async def _steps(self) -> Outcome:
        ports, progress = self.ports, self.progress
        laps: dict[str, float] = {}
        mark = time.perf_counter()

        def lap(name: str) -> None:  # the time since the step before
            nonlocal mark
            now = time.perf_counter()
            laps[name] = now - mark
            mark = now

        step = "0 leftover rows"
        if self.leftover:
            try:
                # a lead may have been erased since these rows were computed
                rows = self.engine.scrub_rows(self.leftover)
                if rows:
                    await self.run_blocking(ports.warehouse.write, rows)
            except Exception as exc:
                return _failed(step, exc)
            self.leftover = {}
            lap("leftover")

        step = "1 snapshot"
        if ports.sinks.held():
            # a paused route: nothing could be committed, so no snapshot and no busy work
            # (the router reports the refused destination once per interval)
            return Outcome(ok=False, step=step, error="a paused route holds events")
        async with self.state_lock:
            ckpt = self.engine.snapshot()
            late = self.engine.take_late()
            generation = ports.group.generation()
            offsets = progress.to_commit()
            events, progress.unflushed = progress.unflushed, 0
        lap("snapshot")
        if late:
            self.on_late(late)
        if ckpt.empty() and not offsets and not events:
            self.engine.unpersisted(ckpt)  # nothing worth an image yet
            if ports.erasures is not None:  # an erasure may need settling while idle
                await self._settle_erasures(ports.erasures)
            return Outcome(ok=True)

        rejected: list[Rejected] = []
        changelog_durable = False
        try:
            step = "2 sinks"
            rejected = await ports.sinks.flush()
            for item in rejected:
                await ports.dead_letters.rejected(item)
            lap("sinks")
            step = "3 changelog"
            await self._changelog(ckpt)
            lap("changelog")
            step = "4 dead letters"
            await ports.dead_letters.flush()
            lap("dead_letters")
            rejected = []  # their dead letters are durable: never send them twice
            changelog_durable = True
            step = "5 OLAP rows"
            ckpt.rows = self.engine.scrub_rows(ckpt.rows)
            if ckpt.rows:
                await self.run_blocking(ports.warehouse.write, ckpt.rows)
            lap("olap")
        except Exception as exc:  # nothing committed; everything is retried
            await self._hand_back(ckpt, rejected, changelog_durable, events)
            return _failed(step, exc)

        if ports.erasures is not None:
            await self._settle_erasures(ports.erasures)
            lap("erasures")
        if ckpt.cuts:
            await self._store(ckpt)
            lap("store")
        step = "7 commit"
        committed = await self._commit(generation, offsets)
        lap("commit")
        return Outcome(
            ok=True,
            events=events,
            changelog=len(ckpt.changelog),
            rows={t: len(r) for t, r in ckpt.rows.items()},
            committed=committed,
            steps=laps,
        )

    async def _changelog(self, ckpt: Checkpoint) -> None:
        """Step 3: the changelog, the forwarded records and the erasure registry, durable."""
        ports = self.ports
        # written in a thread: encoding and producing tens of thousands of entries on the
        # event loop held up everything else on it (the sinks' sends, the timers); their
        # acknowledgements are served on the loop (streams.fetch.AckedProducer says why)
        if ckpt.changelog:
            await self._produce(ports.changelog, ckpt.changelog)
        if ckpt.forwards:
            if ports.forwarder is None:
                raise RuntimeError("records to forward and no forwarder port")
            await self._produce(ports.forwarder, ckpt.forwards)
        if ckpt.registry and ports.erasures is not None:
            await self.run_blocking(ports.erasures.publish, ckpt.registry)

    async def _produce(self, port: Changelog | Forwarder, items: Sequence[Any]) -> None:
        await self.run_blocking(port.write, items)
        await port.acknowledged()

    async def _settle_erasures(self, port: Erasures) -> None:
        """Step 5b (see the module docstring): never fails the checkpoint."""
        async with self.state_lock:
            work = self.engine.erasure_work()
        if work.empty():
            return
        purged, forgotten = await self.run_blocking(port.settle, work)
        async with self.state_lock:
            self.engine.erasure_settled(purged, forgotten)

    async def _store(self, ckpt: Checkpoint) -> None:
        """Step 6: the local stores' images (a failure only logs: see the module doc)."""
        try:
            await self.run_blocking(self.engine.persist, ckpt, dict(self.ports.changelog.runs()))
        except Exception as exc:
            log.warning("local state store not written (%s); the next checkpoint retries", exc)
            async with self.state_lock:
                self.engine.unpersisted(ckpt)
            return
        async with self.state_lock:
            self.engine.persisted(ckpt)

    async def _hand_back(
        self, ckpt: Checkpoint, rejected: list[Rejected], changelog_durable: bool, events: int
    ) -> None:
        self.ports.sinks.restore_rejected(rejected)
        if changelog_durable:
            self.leftover = ckpt.rows  # only the rows are missing
            async with self.state_lock:
                self.engine.unpersisted(ckpt)  # no image before they are in
        else:
            async with self.state_lock:
                self.engine.requeue(ckpt)
        self.progress.unflushed += events

    async def _commit(self, generation: int, offsets: dict[TP, int]) -> dict[TP, int]:
        group, progress = self.ports.group, self.progress
        if generation != group.generation():
            # a rebalance since the snapshot: the new owners replay from the last commit
            return {}
        assigned = group.assignment()
        offsets = {
            tp: o for tp, o in offsets.items() if tp in assigned and progress.committed.get(tp) != o
        }
        if not offsets:
            return {}
        try:
            accepted = await group.commit(offsets)
        except Exception as exc:  # the state is durable: the next checkpoint commits it
            log.warning("offset commit failed (%s); the next checkpoint retries", exc)
            return {}
        if not accepted:
            log.warning("offset commit refused (rebalancing); the next checkpoint retries")
            return {}
        progress.committed.update(offsets)
        return offsets


def _failed(step: str, exc: Exception) -> Outcome:
    log.error("checkpoint failed at step %s, will retry: %s", step, exc)
    return Outcome(ok=False, error=str(exc), step=step)
