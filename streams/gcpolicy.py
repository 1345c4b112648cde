"""When the worker lets Python's cyclic garbage collector look at the whole heap.

Why this exists
---------------
CPython frees almost everything by reference counting; the cyclic collector is only for
reference cycles. Its *full* (generation-2) collections walk every tracked object of the
process, and by default one runs whenever the objects that survived into the old
generation grew by a quarter. A worker's heap grows steadily (Faust, aiokafka,
OpenTelemetry, pandas and pydantic at start-up; then the attribution state, ~1.5 KB per
email), so full collections came about once a second and each took longer than the
last: measured on the bench's 200,000 events (``python -m bench.run --only sluice``, a
``gc.callbacks`` probe in the worker, a busy machine), 13–17 full collections took
6.8–8.1 s of wall time per run, and every collection together 8.2–10 s — more than the
state updates themselves. Each stalls the event loop for its whole length (0.2–1.5 s
here). With this policy: one full collection per run (the first tick's), and the worker's
CPU per event fell 42 % with every sink on, 50 % with none (bench/README.md, 2026-12-02).

The policy
----------
* Once the worker takes events (:meth:`GcPolicy.tick`'s first call), everything alive
  from start-up is moved to the permanent generation (``gc.freeze()``): modules,
  classes and framework objects that live as long as the process are never walked again.
  Reference counting still frees them if they go. The one full collection before that
  freeze (what start-up left behind) runs earlier, when the reader starts and before it
  has events (:meth:`GcPolicy.prepare`, ~0.3 s measured): the first batch then waits for
  a freeze alone, which also takes in the state restored meanwhile (acyclic: nothing
  for a collection to free).
* Young collections stay on, less often (generation 0 every :data:`YOUNG` allocations
  instead of 700): most cycles (asyncio futures and tracebacks, aiohttp requests) die
  young and are collected there.
* Automatic full collections are off (a generation-2 threshold that is never reached);
  instead :meth:`GcPolicy.tick`, called by the hot loop between batches, runs one every
  :data:`FULL_EVERY_S`. Cyclic garbage that outlived the young generations waits at most
  that long; the state, which holds no cycles, is walked once a minute instead of once a
  second.

What it costs: memory held by old cyclic garbage for up to a minute; a full collection's
pause still happens, once a minute (its length is logged when it is long).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("sluice.worker")

#: Allocations (net, of tracked objects) between young collections (CPython's default: 700).
YOUNG = 10_000
#: Young collections between collections of the middle generation (the default: 10).
MIDDLE = 10
#: Never reached: no automatic full collection (they run from :meth:`GcPolicy.tick`).
NEVER = 1_000_000_000
#: Seconds between full collections while the worker runs.
FULL_EVERY_S = 60.0
#: A full collection longer than this is logged (it stalled the event loop).
SLOW_S = 0.5


class GcPolicy:
    """The worker's garbage-collection schedule (see the module docstring).

    ``clock`` is injectable for tests. :meth:`stop` restores Python's defaults (tests and
    in-process tools that build several workers).
    """

    def __init__(
        self, full_every_s: float = FULL_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.full_every_s = full_every_s
        self.clock = clock
        self.started = False
        self.full_collections = 0
        self.full_seconds = 0.0
        self._last_full = 0.0
        self._defaults: tuple[int, int, int] | None = None
        self.prepared = False
        self.frozen = 0  # objects frozen at the start (a live count costs a walk of them)

    def tick(self) -> None:
        """Between batches: start the policy on the first call, then collect when due."""
        now = self.clock()
        if not self.started:
            self._start(now)
        elif now - self._last_full >= self.full_every_s:
            self.collect(now)

    def prepare(self) -> None:
        """Before the first event: collect what start-up left behind and freeze the rest
        (the reader's start, while partitions restore), so the first batch waits for a
        freeze only."""
        if self.started or self.prepared:
            return
        gc.collect()
        gc.freeze()
        self.prepared = True
        self.frozen = gc.get_freeze_count()  # O(objects frozen): counted here, not later

    def _start(self, now: float) -> None:
        self._defaults = gc.get_threshold()
        self.prepare()  # unless the reader's start did: the count walks every frozen object
        gc.freeze()  # what came since (a restore's state)
        gc.set_threshold(YOUNG, MIDDLE, NEVER)
        self.started = True
        self._last_full = now
        log.info(
            "gc: %d start-up objects frozen; full collections every %.0f s",
            self.frozen,
            self.full_every_s,
        )

    def collect(self, now: float | None = None) -> float:
        """One full collection now; its length in seconds."""
        started = time.perf_counter()
        gc.collect()
        seconds = time.perf_counter() - started
        self.full_collections += 1
        self.full_seconds += seconds
        self._last_full = self.clock() if now is None else now
        if seconds >= SLOW_S:
            log.info("gc: a full collection took %.2f s", seconds)
        return seconds

    def stop(self) -> None:
        """Back to Python's defaults: thresholds restored, frozen objects unfrozen."""
        if self.started and self._defaults is not None:
            gc.set_threshold(*self._defaults)
        if self.prepared:  # _start() prepares too
            gc.unfreeze()
        self.started = False
        self.prepared = False

    def stats(self) -> dict[str, float | int]:
        """For ``/sluice/status/``: the full collections so far and their total length."""
        return {
            "frozen_objects": self.frozen,
            "full_collections": self.full_collections,
            "full_seconds": round(self.full_seconds, 3),
        }
