"""The seam between Sluice and Faust: every private attribute of faust-streaming and
aiokafka that Sluice touches is named here, and nowhere else.

XXX These are debts, not techniques. Faust offers no public way to (a) act before it
waits for in-flight events at a revoke, (b) keep its fetcher off partitions another
reader owns, (c) stop aiokafka prefetching those partitions, (d) commit offsets Sluice
chose under the group's current generation, (e) tell aiokafka that the member still
consumes although Faust never polls it. Each use is one function below, with the
reason; :func:`check` verifies at start-up that the installed versions are the tested
ones and that every attribute is where this module expects it, so an upgrade fails with
one clear line instead of an AttributeError in the middle of a rebalance.
``tests/contract/test_seam.py`` runs the same check, and exercises each hook.

Tested with: faust-streaming 0.15.x, aiokafka 0.14.x (pinned in ``pyproject.toml``).
To upgrade: raise the bounds there and in :data:`TESTED`, run the contract test and
the fault suite.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

import faust
from aiokafka.consumer.subscription_state import SubscriptionState
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

log = logging.getLogger("sluice.seam")

#: distribution -> (lowest tested version, first untested version)
TESTED: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "faust-streaming": ((0, 15), (0, 16)),
    "aiokafka": ((0, 14), (0, 15)),
}

#: (owner, attribute, why Sluice needs it)
PRIVATE: tuple[tuple[type, str, str], ...] = (
    (faust.App, "_consumer_wait_empty", "checkpoint before a revoke and at shutdown"),
    (Consumer, "_get_active_partitions", "keep Faust's fetcher off the handed-off partitions"),
    (Consumer, "_commit", "commit the offsets a checkpoint covers, under the generation"),
    (AIOKafkaConsumerThread, "_ensure_consumer", "pause aiokafka's prefetch of them"),
    (SubscriptionState, "fetch_context", "keep the member alive: Sluice consumes, not Faust"),
)


class SeamError(RuntimeError):
    """The installed faust-streaming / aiokafka do not match what this seam was tested with."""


def _version(dist: str) -> tuple[int, ...]:
    text = metadata.version(dist)
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def problems() -> list[str]:
    """What does not match: untested versions, moved attributes (empty when all is well)."""
    found = []
    for dist, (low, high) in TESTED.items():
        try:
            version = _version(dist)
        except metadata.PackageNotFoundError:
            found.append(f"{dist} is not installed")
            continue
        if not low <= version < high:
            tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
            found.append(
                f"{dist} {metadata.version(dist)} is not a tested version ({tested}): "
                "streams/seam.py uses its private attributes"
            )
    for owner, name, why in PRIVATE:
        if not callable(getattr(owner, name, None)):
            found.append(f"{owner.__module__}.{owner.__qualname__}.{name} is gone ({why})")
    return found


def check() -> None:
    """Raise :class:`SeamError` (one line) unless the seam matches the installed Faust."""
    found = problems()
    if found:
        raise SeamError("Faust seam: " + "; ".join(found))


class SeamApp(faust.App):
    """faust.App that lets Sluice checkpoint before Faust waits for in-flight events.

    Faust calls ``_consumer_wait_empty`` before it revokes partitions and at shutdown;
    Sluice's events are acknowledged only by its own checkpoints, so waiting for them
    would never end: :attr:`before_wait_empty` (the worker's drain) checkpoints first.
    """

    before_wait_empty: Callable[[], Awaitable[None]] | None = None
    on_stopping: Callable[[], Awaitable[None]] | None = None

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.before_wait_empty is not None:
            await self.before_wait_empty()
        await super()._consumer_wait_empty(consumer, logger)

    async def on_shutdown(self) -> None:
        # after the consumer stopped (and its last drain flushed every sink)
        if self.on_stopping is not None:
            await self.on_stopping()
        await super().on_shutdown()


def hand_off(consumer: Any, topics: Iterable[str]) -> None:
    """Keep Faust's fetcher off ``topics``: another reader owns their partitions.

    Faust asks ``_get_active_partitions`` which assigned partitions to fetch; the
    replacement leaves the handed-off topics out.
    """
    owned = frozenset(topics)
    active = consumer._get_active_partitions  # noqa: SLF001

    def without_handed_off() -> set:
        tps = active()
        tps.difference_update([tp for tp in tps if tp.topic in owned])
        return tps

    consumer._get_active_partitions = without_handed_off  # noqa: SLF001


def pause_prefetch(consumer: Any, tps: Iterable[Any]) -> None:
    """Stop aiokafka prefetching ``tps`` (memory it would fill and never free)."""
    from aiokafka.structs import TopicPartition as KafkaTP

    try:
        client = consumer._thread._ensure_consumer()  # noqa: SLF001
        client.pause(*(KafkaTP(tp.topic, tp.partition) for tp in tps))
    except Exception as exc:  # not assigned any more (rebalancing): the next one pauses
        log.debug("could not pause prefetching of %s: %s", tps, exc)


async def commit(consumer: Any, offsets: Mapping[Any, int]) -> bool:
    """Commit ``offsets`` (one past the last event covered) under the current generation;
    False when the group refused (a rebalance is under way)."""
    return bool(await consumer._commit(offsets))  # noqa: SLF001


def still_consuming(consumer: Any) -> None:
    """Tell aiokafka this member consumes: call it from the hot loop, often.

    aiokafka leaves the group when its consumer was not polled for ``max_poll_interval``
    (Faust's ``broker_max_poll_interval``, 1000 s) and does not rejoin while it stays idle.
    Every event partition is handed off and Faust has no table, so Faust never polls:
    without this the member would drop out of its group 1000 s after start (measured)
    and its partitions stop. The liveness aiokafka checks is the hot loop's, then: if the
    loop stalls, the member leaves as a stuck consumer should.
    """
    try:
        client = consumer._thread._ensure_consumer()  # noqa: SLF001
        with client._subscription.fetch_context():  # noqa: SLF001 - stamps the last fetch
            pass
    except Exception as exc:  # no consumer yet (starting, rebalancing): the next call
        log.debug("could not mark the member as consuming: %s", exc)
