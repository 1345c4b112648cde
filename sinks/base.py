"""The Sink protocol, and batching with retries, written once for every sink.

A sink buffers what the router writes (``write`` never blocks and never fails), sends
full batches in the background, and makes everything written before ``flush`` durable
when ``flush`` returns. The worker acknowledges events to Kafka only after that.

Errors::

    Exception
    └── SinkError
        ├── TransientError   try again later: 5xx, 408, 425, 429, timeouts, refused or
        │   │                reset connections. ``retry_after``: seconds the destination
        │   │                asked for.
        │   └── DestinationRefused  401/403/407: the destination refuses *Sluice* (a key
        │                    revoked, mistyped or lacking a scope), not the events. Retried
        │                    like a transient error for ``RetryPolicy.refused_after_s`` (a
        │                    key being rotated); after that the sink is *refused* (below).
        ├── PermanentError   this request will never be accepted as is (other 4xx).
        │                    A batch is split in halves until the bad events are alone;
        │                    each is then *rejected* (→ ``events.dlq``, stage = sink name).
        └── SinkUnavailable  raised by ``flush``: a transient failure outlived the flush
            │                deadline. Nothing is lost: the batches stay buffered, the
            │                checkpoint fails (nothing acked), the next one retries.
            └── SinkRefused  raised by ``flush`` at once while the sink is refused.

States (:class:`SinkState`, ``/sluice/status/`` → ``sinks.states``)::

    ok ──transient failure──▶ retrying ──2xx──▶ ok
    ok / retrying ──refused for refused_after_s──▶ refused ──a probe answered 2xx──▶ ok

A *refused* sink sends nothing but one probe (its oldest batch, one attempt, no retry)
every ``refused_probe_s``; its ``flush`` raises :class:`SinkRefused` without waiting, so
no checkpoint waits for a destination that will not take anything. What happens to its
events is the route's decision (:class:`streams.routing.Router`): held (the checkpoint
fails: no commit, backpressure) or handed over by :meth:`BatchingSink.park` to the
dead-letter topic with reason ``destination_refused``, for ``sluice dlq replay``.

Memory stays bounded because the worker stops taking events when too many are
unacknowledged, and a sink only buffers events the worker has not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, runtime_checkable

log = logging.getLogger("sluice.sinks")


# -- what flows through a sink --------------------------------------------------------------
class Envelope(NamedTuple):
    """One decoded event and where it came from (the raw bytes are for dead letters).

    Immutable. A named tuple rather than a frozen dataclass: the worker makes one per
    routed event, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per
    field) cost 1.2 µs against 0.4 µs.

    A :class:`BatchingSink` keeps an event's envelope until its batch is sent, but not
    its decoded record (~1 KB; :meth:`BatchingSink.prepare` made what is sent from it):
    the envelopes it holds, and those of the events it rejects (:class:`Rejected`), carry
    :data:`RELEASED` instead. A dead letter is made of the raw bytes and the position.
    """

    record: Mapping[str, Any]
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None


#: The record of an envelope a sink holds: released, the sink keeps what it prepared.
RELEASED: Mapping[str, Any] = MappingProxyType({})
_new_tuple = tuple.__new__


def released(envelope: Envelope) -> Envelope:
    """``envelope`` without its decoded record (the same position and raw bytes)."""
    return _new_tuple(Envelope, (RELEASED, *envelope[1:]))


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event a sink refused for good: it goes to the dead-letter topic (raw bytes and
    position; the envelope's record is :data:`RELEASED`)."""

    envelope: Envelope
    sink: str
    reason: str
    detail: str


# -- errors ------------------------------------------------------------------------------
class SinkError(Exception):
    """Base of every sink error. ``reason`` is a short stable code (a metric label);
    ``status`` the HTTP status behind it, if any."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status


class TransientError(SinkError):
    """The same request may succeed later."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(reason, detail, status)
        self.retry_after = retry_after


class DestinationRefused(TransientError):
    """The destination refuses Sluice itself (401/403/407): no request of this sink can
    succeed until an operator fixes the credentials or the destination's permissions.

    A subclass of :class:`TransientError` because it is not the events' fault (never a
    per-event rejection) and it may succeed later; the sink retries it only for
    ``RetryPolicy.refused_after_s``, then stops asking (see the module docstring).
    """


class PermanentError(SinkError):
    """The request will never succeed as is."""


class SinkUnavailable(SinkError):
    """``flush`` could not make the buffered events durable before its deadline."""

    def __init__(self, detail: str) -> None:
        super().__init__("unavailable", detail)


class SinkRefused(SinkUnavailable):
    """``flush`` of a refused sink: nothing was sent (or one probe was refused again).

    Its events stay buffered; the router either holds them (the checkpoint fails) or
    takes them with :meth:`BatchingSink.park` for the dead-letter topic.
    """

    def __init__(self, sink: str, refusal: SinkError) -> None:
        # redacted: this message reaches the worker's checkpoint-failure log line
        super().__init__(f"{sink}: refused by its destination: {redact(str(refusal))}")
        self.reason = "refused"
        self.sink = sink
        self.refusal = refusal


#: The dead letters' reason for the events of a refused sink whose route dead-letters.
DESTINATION_REFUSED = "destination_refused"

# -- what a sink reports about itself -----------------------------------------------------
OK, RETRYING, REFUSED = "ok", "retrying", "refused"

# Token-shaped words (API keys, HEC tokens, JWTs: 20+ characters mixing letters and
# digits): a destination's error text may echo a credential back, and that text reaches
# logs, /sluice/status/ and dead-letter headers. Words and codes without digits stay.
_TOKEN_CHAR = r"[\w\-+/=.]"
_SECRETISH = re.compile(
    rf"(?<!{_TOKEN_CHAR})(?={_TOKEN_CHAR}*\d)(?={_TOKEN_CHAR}*[A-Za-z]){_TOKEN_CHAR}{{20,}}"
)


def redact(text: str, limit: int = 200) -> str:
    """``text`` without anything shaped like a credential, at most ``limit`` characters."""
    return _SECRETISH.sub("[redacted]", text)[:limit]


@dataclass(frozen=True, slots=True)
class SinkState:
    """Where a sink stands with its destination (JSON-able with :meth:`as_dict`)."""

    state: str  # ok | retrying | refused
    since: float  # epoch seconds: when this state began (ok: since the sink was built)
    status: int | None = None  # HTTP status of the last failure (None: none, or no HTTP)
    reason: str = ""  # the last failure's reason code
    detail: str = ""  # the last failure's text, credentials redacted
    refused_requests: int = 0  # requests the destination refused (401/403/407) so far
    next_probe_in_s: float | None = None  # refused: seconds until the next probe may go

    @property
    def probe_due(self) -> bool:
        return self.next_probe_in_s is not None and self.next_probe_in_s <= 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the protocol ------------------------------------------------------------------------
@runtime_checkable
class Sink(Protocol):
    """What the router needs from a sink. ``name`` is the dead letters' stage."""

    name: str

    async def start(self) -> None:
        """Open connections (called once before the first write)."""

    def write(self, batch: Sequence[Envelope]) -> None:
        """Buffer events; never blocks and never raises for a delivery problem."""

    async def flush(self) -> list[Rejected]:
        """Make everything written so far durable; return the events refused for good.

        Raises :class:`SinkUnavailable` if that failed; the events stay buffered.
        """

    async def close(self) -> None:
        """Release connections (buffered events are not sent: flush first)."""

    def forget(self, tps: set[tuple[str, int]]) -> None:
        """Drop buffered events of these (topic, partition)s (revoked from this worker)."""

    def buffered(self) -> int:
        """Events buffered and not yet durable."""

    def unsent(self) -> int:
        """Events in sealed batches, queued or being sent (:meth:`buffered` without the
        open batch, which its size or age seals): what background sending works off."""

    def state(self) -> SinkState:
        """Where the sink stands with its destination (ok, retrying, refused)."""

    def park(self) -> list[Rejected]:
        """Hand over every buffered event as refused (reason ``destination_refused``),
        with the events already rejected; called after ``flush`` raised SinkRefused."""


class SinkObserver(Protocol):
    """Where sinks report what they do (the worker's Prometheus metrics)."""

    def delivered(self, sink: str, count: int) -> None: ...
    def retried(self, sink: str, reason: str) -> None: ...
    def rejected(self, sink: str, reason: str, count: int) -> None: ...
    def skipped(self, sink: str, event_type: str, why: str) -> None: ...
    def flushed(self, sink: str, seconds: float) -> None: ...
    def refused(self, sink: str, reason: str) -> None: ...
    def state(self, sink: str, state: str) -> None: ...

    def partial(self, sink: str, rejected: int, message: str) -> None:
        """A destination accepted a request but kept only part of it (OTLP partial success:
        ``rejected`` items refused, or 0 with a warning in ``message``)."""


class NullObserver:
    """An observer that ignores everything (tests, benchmarks of the SDK)."""

    def delivered(self, sink: str, count: int) -> None: ...
    def retried(self, sink: str, reason: str) -> None: ...
    def rejected(self, sink: str, reason: str, count: int) -> None: ...
    def skipped(self, sink: str, event_type: str, why: str) -> None: ...
    def flushed(self, sink: str, seconds: float) -> None: ...
    def refused(self, sink: str, reason: str) -> None: ...
    def state(self, sink: str, state: str) -> None: ...
    def partial(self, sink: str, rejected: int, message: str) -> None: ...


# -- retries -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, never sooner than a Retry-After.

    ``delay(n)`` for the n-th retry (0-based) is ``initial_s * multiplier**n`` capped at
    ``max_s``, times a random factor in ``[1 - jitter, 1 + jitter]`` so that workers
    retrying the same outage do not all come back at the same instant. A destination's
    ``Retry-After`` is a floor (itself capped at ``max_retry_after_s``, so a bogus
    header cannot park a sink for a day).

    A refusal (401/403/407) is retried like that for ``refused_after_s`` (a key being
    rotated, a destination's auth hiccup); past it the sink is *refused* and sends one
    probe every ``refused_probe_s`` instead of retrying.
    """

    initial_s: float = 0.2
    max_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.1
    max_retry_after_s: float = 300.0
    refused_after_s: float = 60.0
    refused_probe_s: float = 30.0

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        backoff = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        backoff *= 1.0 + self.jitter * (2.0 * rand() - 1.0)
        if retry_after is not None and retry_after > 0:
            return max(backoff, min(retry_after, self.max_retry_after_s))
        return backoff


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# -- batching ----------------------------------------------------------------------------
@dataclass
class _Batch:
    seq: int
    entries: list[tuple[Envelope, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class BatchLimits:
    """How a sink batches: by count and by age; how hard it tries."""

    max_events: int = 1000
    linger_s: float = 1.0
    max_in_flight: int = 4
    flush_deadline_s: float = 30.0


class BatchingSink(ABC):
    """A :class:`Sink` that batches, sends in the background, retries and bisects.

    Subclasses write two things: :meth:`prepare` (one event → the item to send, or None
    when it needs no sending, e.g. sampled out; may raise :class:`PermanentError` to
    reject it at once) and :meth:`send` (one batch of items; raise :class:`SinkError`).
    """

    #: False when a request does not carry the events themselves (an aggregate), so
    #: splitting a refused batch cannot isolate a culprit: the whole batch is rejected.
    splittable: bool = True

    def __init__(
        self,
        name: str,
        limits: BatchLimits | None = None,
        policy: RetryPolicy | None = None,
        observer: SinkObserver | None = None,
    ) -> None:
        self.name = name
        self.limits = limits or BatchLimits()
        self.policy = policy or RetryPolicy()
        self.observer: SinkObserver = observer or NullObserver()
        self._open: list[tuple[Envelope, Any]] = []
        self._opened_at = 0.0
        self._seq = 0
        self._queue: deque[_Batch] = deque()
        self._sending = 0  # events in batches being sent right now
        # batches being sent right now (pump and flush together); see _delivering
        self._deliveries: set[asyncio.Future[Any]] = set()
        self._wakers: list[asyncio.Future[None]] = []  # a seal sets them: the drains look again
        self._adopted: set[asyncio.Future[Any]] = set()  # a flush's sends left to the pump
        self._rejected: list[Rejected] = []
        self._pump: asyncio.Task[None] | None = None
        self._pump_paused = False
        self._linger: asyncio.TimerHandle | None = None  # seals the open batch when due
        self._not_before = 0.0  # monotonic: a Retry-After applies to every request
        # where the sink stands with its destination (SinkState)
        self._state = OK
        self._since = time.time()
        # (reason, detail, status) of the last failed request and of the last refusal:
        # facts, not exception objects, whose tracebacks would pin a whole batch
        self._failure: tuple[str, str, int | None] | None = None
        self._refusal: tuple[str, str, int | None] = (DESTINATION_REFUSED, "", None)
        self._refusing_since: float | None = None  # monotonic: first of this run of refusals
        self._next_probe = 0.0  # monotonic: a refused sink sends nothing before this
        self._refused_requests = 0
        self.observer.state(self.name, OK)  # every sink's gauge exists from the start

    # -- what subclasses write -------------------------------------------------------------
    @abstractmethod
    def prepare(self, envelope: Envelope) -> Any | None:
        """Turn one event into what :meth:`send` sends (None: nothing to send)."""

    @abstractmethod
    async def send(self, items: list[Any]) -> None:
        """Send one batch; return only once the destination accepted it."""

    async def start(self) -> None:  # noqa: B027 - optional hook, most sinks connect lazily
        """Open connections; the default has none."""

    async def close(self) -> None:
        """Stop the background sender; subclasses close their connections too."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None

    # -- the Sink protocol -------------------------------------------------------------------
    def write(self, batch: Sequence[Envelope]) -> None:
        now = time.monotonic()
        for env in batch:
            try:
                item = self.prepare(env)
            except PermanentError as exc:
                self._reject([(released(env), None)], exc)
                continue
            if item is None:
                continue
            if not self._open:
                self._opened_at = now
                self._arm_linger()
            self._open.append((released(env), item))
            if len(self._open) >= self.limits.max_events:
                self._seal()
        if self._open and now - self._opened_at >= self.limits.linger_s:
            self._seal()

    async def flush(self) -> list[Rejected]:
        started = time.perf_counter()
        self._seal(kick=False)
        target = self._seq
        deadline = time.monotonic() + self.limits.flush_deadline_s
        # One driver of the queue: the background pump launches nothing more, and the
        # flush waits for what it has in flight (its failures are queued again, for the
        # flush to send) while it drives the queue itself.
        self._pump_paused = True
        # an earlier flush's later batches not yet taken over by a pump (none started:
        # refused): waited for too, so that nothing is in flight when this one returns
        adopted, self._adopted = self._adopted, set()
        try:
            await self._drain(deadline, upto=target, pump=self._pump, adopted=adopted)
            self._pump = None
            if self._queue and self._queue[0].seq <= target:  # never a success with them unsent
                raise SinkUnavailable(f"{self.name}: batches left unsent by the flush")
        finally:
            self._pump_paused = False
            self.observer.flushed(self.name, time.perf_counter() - started)
            if self._queue or self._adopted:
                self._kick()
        rejected, self._rejected = self._rejected, []
        return rejected

    def forget(self, tps: set[tuple[str, int]]) -> None:
        def keep(entry: tuple[Envelope, Any]) -> bool:
            return (entry[0].topic, entry[0].partition) not in tps

        self._open = [e for e in self._open if keep(e)]
        for batch in self._queue:
            batch.entries = [e for e in batch.entries if keep(e)]
        # an emptied batch would still be sent (or, refused, hold a checkpoint for nothing)
        self._queue = deque(b for b in self._queue if b.entries)
        self._rejected = [
            r for r in self._rejected if (r.envelope.topic, r.envelope.partition) not in tps
        ]

    def buffered(self) -> int:
        return len(self._open) + self.unsent()

    def unsent(self) -> int:
        return sum(len(b.entries) for b in self._queue) + self._sending

    def state(self) -> SinkState:
        reason, detail, status = self._failure or ("", "", None)
        return SinkState(
            state=self._state,
            since=self._since,
            status=status,
            reason=reason,
            detail=redact(detail),
            refused_requests=self._refused_requests,
            next_probe_in_s=(
                round(max(0.0, self._next_probe - time.monotonic()), 3)
                if self._state == REFUSED
                else None
            ),
        )

    def park(self) -> list[Rejected]:
        """Hand over every buffered event as refused by the destination, and what was
        rejected already: the route dead-letters them instead of holding them.

        Call it right after :meth:`flush` raised :class:`SinkRefused`: nothing is in flight
        then (a refused sink starts no background send before its next probe), so
        everything buffered is handed over exactly once. An aggregating sink
        (``splittable = False``) keeps the events in its aggregate: its next accepted
        request carries them anyway.
        """
        self._seal(kick=False)
        detail = redact(str(self._refused()), 2000)
        parked = [
            Rejected(env, self.name, DESTINATION_REFUSED, detail)
            for batch in self._queue
            for env, _ in batch.entries
        ]
        self._queue.clear()
        rejected, self._rejected = self._rejected + parked, []
        return rejected

    # -- internals ---------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state, self._since = state, time.time()
            self.observer.state(self.name, state)

    def _refused(self) -> DestinationRefused:
        """A fresh error for the last refusal (raised where no request is sent)."""
        reason, detail, status = self._refusal
        return DestinationRefused(reason, detail, status=status)

    def _request_accepted(self) -> None:
        """A request got a 2xx: whatever was wrong is over."""
        self._refusing_since = None
        self._set_state(OK)

    def _request_failed(self, exc: TransientError) -> None:
        """A request failed in a way that may pass: ok → retrying, or past the grace of a
        run of refusals, → refused (and the first probe waits one probe interval)."""
        self._failure = (exc.reason, exc.detail, exc.status)
        if isinstance(exc, DestinationRefused):
            self._refusal = self._failure
            self._refused_requests += 1
            self.observer.refused(self.name, exc.reason)
            now = time.monotonic()
            if self._refusing_since is None:
                self._refusing_since = now
            if self._state != REFUSED and now - self._refusing_since >= self.policy.refused_after_s:
                self._next_probe = now + self.policy.refused_probe_s
                self._set_state(REFUSED)
                return
        if self._state == OK:
            self._set_state(RETRYING)

    def _may_send(self) -> bool:
        """False while refused and no probe is due (no background send is started)."""
        return self._state != REFUSED or time.monotonic() >= self._next_probe

    def _arm_linger(self) -> None:
        """Seal the batch just opened once it is ``linger_s`` old, even if nothing more is
        written to this sink: a quiet route's last events go out then, not at the next
        checkpoint. One timer per sink; without a running loop (a synchronous test) the
        next write or flush seals it."""
        if self._linger is not None:
            return  # armed for an older batch: when it fires, it re-arms for this one
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._linger = loop.call_later(self.limits.linger_s, self._linger_due)

    def _linger_due(self) -> None:
        self._linger = None
        if not self._open:
            return
        age = time.monotonic() - self._opened_at
        if age >= self.limits.linger_s:
            self._seal()
        else:  # the batch the timer was armed for was sealed; this one opened since
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(self.limits.linger_s - age, self._linger_due)

    def _seal(self, kick: bool = True) -> None:
        if self._open:
            self._seq += 1
            self._queue.append(_Batch(self._seq, self._open))
            self._open = []
            for waker in self._wakers:  # a drain waiting on its sends: one more to send
                if not waker.done():
                    waker.set_result(None)
        if kick:
            self._kick()

    def _kick(self) -> None:
        """Start the background sender for full batches, if a loop runs and none is."""
        if (
            self._pump_paused
            or not (self._queue or self._adopted)
            or (self._pump is not None and not self._pump.done())
            or not self._may_send()  # refused: the next flush (or due probe) decides
        ):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous test): flush() sends
        self._pump = loop.create_task(self._background())

    async def _background(self) -> None:
        try:
            deadline = time.monotonic() + self.limits.flush_deadline_s
            adopted, self._adopted = self._adopted, set()
            await self._drain(deadline, upto=None, adopted=adopted)
        except SinkRefused:
            pass  # reported by the router, once per interval: never a line per batch
        except SinkUnavailable as exc:
            # Not an error yet: the batches are queued again and flush() will retry.
            log.warning(
                "sink %s: background send failed, retrying at the next flush: %s", self.name, exc
            )

    async def _drain(
        self,
        deadline: float,
        upto: int | None,
        pump: asyncio.Task[None] | None = None,
        adopted: set[asyncio.Future[Any]] | None = None,
    ) -> None:
        """Send queued batches (seq <= upto), at most max_in_flight at once.

        With ``upto`` (a flush; ``pump``: the paused background sender, whose batches in
        flight it waits for), batches sealed after ``upto`` are sent too while one of those
        it waits for is still in flight: events that arrive during a checkpoint's flush do
        not wait for its end. Those later batches do not decide the flush: once the ones it
        waits for are delivered, those still in flight are left to the background sender
        (``adopted``: it waits for them as for its own; one that fails goes back to the
        queue, where it would have waited anyway); the events they refused for good before
        are returned with the flush's (their dead letters are written before their
        offsets are committed either way)."""
        running: dict[asyncio.Future[Any], bool] = dict.fromkeys(adopted or (), True)
        if pump is not None and not pump.done():
            running[pump] = True  # -> the flush waits for it
        failure: BaseException | None = None
        while True:
            # A refused sink sends one batch at a time: the first is the probe, and the
            # others only go once it was accepted.
            in_flight = 1 if self._state == REFUSED else self.limits.max_in_flight
            while (
                self._queue
                and failure is None
                and self._delivering < in_flight
                and not (upto is None and self._pump_paused)
            ):
                due = upto is None or self._queue[0].seq <= upto
                if not due and not any(running.values()):
                    break  # everything the flush waits for is delivered
                task = asyncio.ensure_future(self._deliver(self._queue.popleft(), deadline))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)  # cancelled or not
                running[task] = due
            if not running:
                break
            if upto is not None and failure is None and not any(running.values()):
                self._adopted.update(running)  # only later batches are left: the pump's
                break
            # woken by a batch sealed meanwhile too: it is sent now if a slot is free
            wake = asyncio.get_running_loop().create_future()
            self._wakers.append(wake)
            try:
                done, _ = await asyncio.wait([*running, wake], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._wakers.remove(wake)
                wake.cancel()
            for task in done:
                if task is wake:
                    continue
                due = running.pop(task)
                if task is pump:
                    continue  # what it failed to send is queued again: sent from here
                exc = task.exception()
                if exc is None or failure is not None:
                    continue
                if due or not isinstance(exc, SinkError):
                    failure = exc
        if failure is not None:
            if isinstance(failure, SinkError) and self._state == REFUSED:
                raise SinkRefused(self.name, self._refused()) from None
            if isinstance(failure, SinkError):
                raise SinkUnavailable(f"{self.name}: {redact(str(failure), 400)}") from failure
            raise failure

    def _requeue(self, batch: _Batch) -> None:
        """Put a batch whose send did not finish back in sequence order, in front of every
        later one: the queue's head is always its oldest batch, which is what a flush's
        check of what it still owes reads (at the very front, as nearly always, unless a
        later batch's send failed first)."""
        at = next((i for i, b in enumerate(self._queue) if b.seq > batch.seq), len(self._queue))
        self._queue.insert(at, batch)

    @property
    def _delivering(self) -> int:
        """Sends in flight. A task is done before its done-callbacks run (they are only
        scheduled), and a drain can see it done and return in between: a count kept by a
        callback would still hold a slot then, and the next flush, started in the same
        turn of the loop, would launch nothing and return with its batches unsent."""
        return sum(1 for task in self._deliveries if not task.done())

    async def _deliver(self, batch: _Batch, deadline: float) -> None:
        """Deliver one batch; bisect permanent refusals; re-queue it if time runs out."""
        parts = [batch.entries]
        size = len(batch.entries)
        self._sending += size
        try:
            while parts:
                entries = parts.pop()
                try:
                    await self._send_with_retries(entries, deadline)
                except PermanentError as exc:
                    if len(entries) == 1 or not self.splittable:
                        self._reject(entries, exc)
                    else:
                        mid = len(entries) // 2
                        parts += [entries[mid:], entries[:mid]]
                except BaseException:
                    # Out of time (or cancelled): what was not delivered goes back in front.
                    left = [e for part in parts for e in part] + entries
                    self._requeue(_Batch(batch.seq, left))
                    raise
                else:
                    self.observer.delivered(self.name, len(entries))
        finally:
            self._sending -= size

    async def _send_with_retries(
        self, entries: list[tuple[Envelope, Any]], deadline: float
    ) -> None:
        items = [item for _, item in entries]
        attempt = 0
        while True:
            probing = self._state == REFUSED
            if probing:
                # A refused sink asks once per probe interval, with a real batch (which
                # is then delivered if accepted), and never retries the probe.
                now = time.monotonic()
                if now < self._next_probe:
                    raise self._refused()
                self._next_probe = now + self.policy.refused_probe_s
            wait = self._not_before - time.monotonic()
            if wait > 0:
                if time.monotonic() + wait > deadline:
                    raise TransientError("retry_after", f"destination asked to wait {wait:.1f}s")
                await asyncio.sleep(wait)
            try:
                await self.send(items)
            except TransientError as exc:
                self._request_failed(exc)
                if probing or self._state == REFUSED:
                    raise  # refused for good now: stop asking until the next probe
                self.observer.retried(self.name, exc.reason)
                delay = self.policy.delay(attempt, exc.retry_after)
                if exc.retry_after:
                    self._not_before = max(self._not_before, time.monotonic() + delay)
                if time.monotonic() + delay > deadline:
                    raise
                log.info(
                    "sink %s: %s; retry %d in %.2fs", self.name, exc.reason, attempt + 1, delay
                )
                await asyncio.sleep(delay)
                attempt += 1
            else:
                self._request_accepted()
                return

    def _reject(self, entries: Iterable[tuple[Envelope, Any]], exc: SinkError) -> None:
        rejected = [Rejected(env, self.name, exc.reason, exc.detail) for env, _ in entries]
        self._rejected.extend(rejected)
        self.observer.rejected(self.name, exc.reason, len(rejected))
        log.warning(
            "sink %s refused %d event(s) for good: %s", self.name, len(rejected), exc.reason
        )
