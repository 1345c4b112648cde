"""Attribution state and the rollups derived from it: pure logic, no I/O.

Why the state looks like this
-----------------------------
The OLAP contract (DESIGN §3) is the spec's SQL over an ``emails`` table: for the emails
of campaign C *sent* on day D, each metric counts the distinct emails that have at least
one event of that kind, whenever it arrived. So the worker keeps, per (tenant, email),
one small record — the winning ``email_sent`` and a bit per event kind — and every rollup
row is a pure function of those records. Warm-up emails get the same treatment with their
own record (the winning ``warmup_email_sent``, the first landing and a reply bit).

That record is a join-semilattice: merging an event is commutative, associative and
idempotent (bits are OR-ed; the winning send is the smallest ``(occurred_at, event_id)``).
Redelivery, replay after a crash, duplicates at new offsets and any arrival order all
converge to the same state, so exactness does not depend on exactly-once delivery.
Rollup rows are maintained incrementally by retracting an email's old contribution and
adding its new one, and can always be rebuilt from the records alone (after a restore).

A rollup row holds counters (sums of 0/1 per email) and, where a column is not a sum
(first/last send day, distinct mailboxes), a *tally*: a multiset of one value per email,
which supports retraction just as well; derived columns are pure functions of both.

Plan changes (``billing_analytics``) are not attributed to emails: :class:`BillingPlans`
keeps the set of business events per tenant, keyed by event id, so redelivery is a no-op.

Rows per partition
------------------
Email and warm-up events are keyed by email (``topics.catalog.FAMILY_KEYS``), so every
row here counts the emails of one partition: the tables are *sharded*
(:attr:`streams.state.TablePart.sharded`) and the OLAP views combine the partitions. So a
row must hold what combining needs: counters (summed), the per-partition sets behind
distinct counts that can span partitions (a lead's campaigns, a month's mailboxes: the
``*_ids`` columns, sorted tallies), first/last days (min/max). The columns computed from
them per partition (``campaigns``, ``status``, ``active_mailboxes``, the placement rate)
are still written, for one shard's row; the view recomputes them over all shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import (
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
    Set,
)
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from operator import itemgetter
from sys import intern
from typing import Any, cast

from sluice.olap.catalog import LEAD_STATUS_ORDER
from sluice.privacy import lead_ref
from streams.state import (
    Component,
    DirtyRows,
    MapFactory,
    RowKey,
    TablePart,
    Taken,
    get_many,
    insert_new,
    memory_map,
    peek,
)

DAY_MS = 86_400_000
#: Flag changes whose effect on the rows is memoized per component (far more than occur:
#: flags only gain bits, but for a warm-up landing's folder).
MAX_FLAG_PLANS = 4_096
#: Most states one component's deferred accounting holds before it settles them
#: (:meth:`AttributionRollups.settle`; a batch's worth is 5,000 events at most).
MAX_PENDING = 20_000

# --------------------------------------------------------------------------------------
# Email attribution state
# --------------------------------------------------------------------------------------

# One bit per kind of email event; ``email_sent`` is not a bit, it sets the attribution.
FLAG_BITS: Mapping[str, int] = {
    "email_delivered": 1 << 0,
    "email_opened": 1 << 1,
    "email_clicked": 1 << 2,
    "email_replied": 1 << 3,
    "email_bounced": 1 << 4,
    "email_unsubscribed": 1 << 5,
    "email_spam_complaint": 1 << 6,
    # bounce kinds, kept for mailbox health rollups
    "bounce_hard": 1 << 7,
    "bounce_soft": 1 << 8,
}

# EmailState slots (a list, not a dataclass: millions of these live in memory).
# SENT_AT, SENT_EVENT_ID and FLAGS sit at the same slots in every attribution state, so one
# Rollup class serves emails and warm-up emails.
SENT_AT, SENT_EVENT_ID, CAMPAIGN, MAILBOX, LEAD, STEP, FLAGS = range(7)
EmailState = list  # [sent_at_ms | None, sent_event_id | None, campaign, mailbox, lead, step, flags]


def new_state() -> EmailState:
    """An email we have heard of but whose ``email_sent`` has not arrived yet."""
    return [None, None, None, None, None, None, 0]


def merge_event(state: EmailState, event: Mapping) -> bool:
    """Merge one decoded email event into ``state`` in place. Return True if it changed.

    Commutative and idempotent: the order and number of deliveries do not matter.
    """
    event_type = event["event_type"]
    if event_type == "email_sent":
        candidate = (event["occurred_at"], event["event_id"])
        if state[SENT_AT] is not None and candidate >= (state[SENT_AT], state[SENT_EVENT_ID]):
            return False
        state[SENT_AT], state[SENT_EVENT_ID] = candidate
        # interned: millions of states share a few campaigns, mailboxes, steps and leads
        state[CAMPAIGN] = intern(event["campaign_id"])
        state[MAILBOX] = intern(event["mailbox_id"])
        lead = event["lead_id"]  # None: the lead is erased (EmailRollups.apply)
        state[LEAD] = intern(lead) if lead is not None else None
        step = event.get("sequence_step_id")
        state[STEP] = intern(step) if step is not None else None
        return True
    bits = event_bits(event)
    if not bits or state[FLAGS] & bits == bits:
        return False
    state[FLAGS] |= bits
    return True


def event_bits(event: Mapping) -> int:
    """The flag bits one (non-send) email event sets."""
    event_type = event["event_type"]
    bits = FLAG_BITS.get(event_type, 0)
    if event_type == "email_bounced":
        kind = event.get("bounce_type")
        if kind == "hard":
            bits |= FLAG_BITS["bounce_hard"]
        elif kind == "soft":
            bits |= FLAG_BITS["bounce_soft"]
    return bits


def merge_states(into: EmailState, other: EmailState) -> bool:
    """Join two states of the same email (used when restoring). Return True if changed."""
    changed = False
    if other[SENT_AT] is not None and (
        into[SENT_AT] is None
        or (other[SENT_AT], other[SENT_EVENT_ID]) < (into[SENT_AT], into[SENT_EVENT_ID])
    ):
        into[:FLAGS] = other[:FLAGS]
        changed = True
    if other[FLAGS] | into[FLAGS] != into[FLAGS]:
        into[FLAGS] |= other[FLAGS]
        changed = True
    return changed


# --------------------------------------------------------------------------------------
# The attribution window (optional): engagement counts only within W of the send
# --------------------------------------------------------------------------------------

# With a window, an email state has one more slot: the earliest time each flag was seen
# (a list indexed by bit number), and FLAGS holds only the flags seen within the window.
# Keeping the earliest times (not "was it late when it arrived") keeps the state a
# semilattice: the verdict depends on event times alone, never on arrival order, so an
# out-of-order event, a replay or an earlier send that replaces the winning one all give
# the same rows.
TIMES = 7
_FLAG_COUNT = max(FLAG_BITS.values()).bit_length()
# bit number -> the event type that sets it (bounce kinds ride on email_bounced)
_EVENT_OF_BIT = tuple(
    (bits.bit_length() - 1, kind) for kind, bits in FLAG_BITS.items() if kind.startswith("email_")
)


def windowed_email(window_ms: int) -> Attribution:
    """Email attribution where an event more than ``window_ms`` after its email's send
    does not count (it is *late*)."""

    def new() -> EmailState:
        return [None, None, None, None, None, None, 0, [None] * _FLAG_COUNT]

    def effective(state: EmailState) -> int:
        times = state[TIMES]
        sent = state[SENT_AT]
        flags = 0
        for i, t in enumerate(times):
            if t is not None and (sent is None or t <= sent + window_ms):
                flags |= 1 << i
        return flags

    def merge(state: EmailState, event: Mapping) -> bool:
        if event["event_type"] == "email_sent":
            if not merge_event(state, event):
                return False
            state[FLAGS] = effective(state)
            return True
        bits = event_bits(event)
        at = event["occurred_at"]
        times = state[TIMES]
        changed = False
        for i in range(_FLAG_COUNT):
            if bits >> i & 1 and (times[i] is None or at < times[i]):
                times[i] = at
                changed = True
        if changed:
            state[FLAGS] = effective(state)
        return changed

    def join(into: EmailState, other: EmailState) -> bool:
        other = adopt(other)
        before = (into[:FLAGS], list(into[TIMES]))
        if other[SENT_AT] is not None and (
            into[SENT_AT] is None
            or (other[SENT_AT], other[SENT_EVENT_ID]) < (into[SENT_AT], into[SENT_EVENT_ID])
        ):
            into[:FLAGS] = other[:FLAGS]
        times = into[TIMES]
        for i, t in enumerate(other[TIMES]):
            if t is not None and (times[i] is None or t < times[i]):
                times[i] = t
        into[FLAGS] = effective(into)
        return (into[:FLAGS], into[TIMES]) != before

    def adopt(state: list) -> EmailState:
        """A state written without a window (7 slots): its flags count as in-window."""
        if len(state) > TIMES:
            return state
        at = state[SENT_AT] or 0
        times = [at if state[FLAGS] >> i & 1 else None for i in range(_FLAG_COUNT)]
        return [*state[:TIMES], times]

    def late(state: EmailState, event: Mapping) -> list[str]:
        """Event types this event makes late: itself, or (a first send) what came before."""
        sent = state[SENT_AT]
        if event["event_type"] != "email_sent":
            beyond = sent is not None and event["occurred_at"] > sent + window_ms
            return [event["event_type"]] if beyond else []
        if sent is not None:
            return []
        end = event["occurred_at"] + window_ms
        times = state[TIMES]
        return [kind for i, kind in _EVENT_OF_BIT if times[i] is not None and times[i] > end]

    return Attribution("email_id", new, merge, join, adopt=adopt, late=late)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


_DAYS: dict[int, date] = {}


def utc_day(ms: int) -> date:
    """The UTC calendar day of an epoch-ms timestamp (memoized: this is the hot path)."""
    n = ms // DAY_MS
    day = _DAYS.get(n)
    if day is None:
        day = _DAYS[n] = date.fromordinal(_EPOCH_ORDINAL + n)
    return day


def month_start(day: date) -> date:
    """First day of ``day``'s month (the billing grain)."""
    return day.replace(day=1)


def send_day(state: EmailState) -> date:
    """The UTC calendar day of the winning send."""
    return utc_day(state[SENT_AT])


# --------------------------------------------------------------------------------------
# Warm-up attribution state
# --------------------------------------------------------------------------------------

# Warm-up flags. The folder bits are not OR-ed: they always describe the *first* landing
# (smallest (occurred_at, event_id)), which is where a placement test says the email went;
# a later move from spam to inbox does not make it count twice.
WU_REPLIED = 1 << 0
WU_LANDED = 1 << 1
WU_INBOX = 1 << 2
WU_SPAM = 1 << 3
WU_OTHER = 1 << 4
FOLDER_BITS: Mapping[str, int] = {"inbox": WU_INBOX, "spam": WU_SPAM, "other": WU_OTHER}
_FOLDER_MASK = WU_LANDED | WU_INBOX | WU_SPAM | WU_OTHER

# WarmupState slots: [sent_at, sent_event_id, mailbox, landed_at, landed_event_id, folder, flags]
W_MAILBOX, W_LANDED_AT, W_LANDED_EVENT_ID, W_FOLDER = 2, 3, 4, 5
WarmupState = list


def new_warmup_state() -> WarmupState:
    """A warm-up email we have heard of, not yet sent nor landed."""
    return [None, None, None, None, None, None, 0]


def _landing_bits(folder: str | None) -> int:
    # A landing without a folder counts as landed but in no folder bucket.
    return WU_LANDED | FOLDER_BITS.get(folder or "", 0)


def merge_warmup_event(state: WarmupState, event: Mapping) -> bool:
    """Merge one decoded warm-up event into ``state`` in place. Return True if changed."""
    event_type = event["event_type"]
    candidate = (event["occurred_at"], event["event_id"])
    if event_type == "warmup_email_sent":
        if state[SENT_AT] is not None and candidate >= (state[SENT_AT], state[SENT_EVENT_ID]):
            return False
        state[SENT_AT], state[SENT_EVENT_ID] = candidate
        state[W_MAILBOX] = intern(event["mailbox_id"])
        return True
    if event_type == "warmup_email_landed":
        if state[W_LANDED_AT] is not None and candidate >= (
            state[W_LANDED_AT],
            state[W_LANDED_EVENT_ID],
        ):
            return False
        state[W_LANDED_AT], state[W_LANDED_EVENT_ID] = candidate
        state[W_FOLDER] = event.get("folder")
        state[FLAGS] = (state[FLAGS] & ~_FOLDER_MASK) | _landing_bits(state[W_FOLDER])
        return True
    if event_type == "warmup_email_replied":
        if state[FLAGS] & WU_REPLIED:
            return False
        state[FLAGS] |= WU_REPLIED
        return True
    return False


def merge_warmup_states(into: WarmupState, other: WarmupState) -> bool:
    """Join two states of the same warm-up email. Return True if changed."""
    changed = False
    if other[SENT_AT] is not None and (
        into[SENT_AT] is None
        or (other[SENT_AT], other[SENT_EVENT_ID]) < (into[SENT_AT], into[SENT_EVENT_ID])
    ):
        into[SENT_AT : W_MAILBOX + 1] = other[SENT_AT : W_MAILBOX + 1]
        changed = True
    if other[W_LANDED_AT] is not None and (
        into[W_LANDED_AT] is None
        or (other[W_LANDED_AT], other[W_LANDED_EVENT_ID])
        < (into[W_LANDED_AT], into[W_LANDED_EVENT_ID])
    ):
        into[W_LANDED_AT : W_FOLDER + 1] = other[W_LANDED_AT : W_FOLDER + 1]
        into[FLAGS] = (into[FLAGS] & ~_FOLDER_MASK) | _landing_bits(into[W_FOLDER])
        changed = True
    extra = other[FLAGS] & ~_FOLDER_MASK
    if extra | into[FLAGS] != into[FLAGS]:
        into[FLAGS] |= extra
        changed = True
    return changed


@dataclass(frozen=True)
class Attribution:
    """How one kind of message is tracked: its id field and its semilattice."""

    id_field: str
    new_state: Callable[[], list]
    merge_event: Callable[[list, Mapping], bool]
    merge_states: Callable[[list, list], bool]
    #: a state read back from the changelog, in this attribution's shape
    adopt: Callable[[list], list] = list
    #: event types an event puts outside the attribution window (counted, not applied)
    late: Callable[[list, Mapping], list[str]] | None = None


EMAIL = Attribution("email_id", new_state, merge_event, merge_states)
WARMUP = Attribution("email_id", new_warmup_state, merge_warmup_event, merge_warmup_states)

# --------------------------------------------------------------------------------------
# Rollup definitions: a rollup maps a message's state to (row key, counters, tallies).
# --------------------------------------------------------------------------------------

#: A multiset: value -> how many messages have it (never 0). A plain dict, not a Counter:
#: a lead's tallies are written for every lead a rebuild makes, and a Counter costs 6x to
#: pickle (measured 3.6 vs 0.6 µs for a lead's two).
Tally = dict[Any, int]
Derive = Callable[[Mapping[str, int], Mapping[str, Tally]], Any]

#: What a row key column or a tally value is made of, for computing them over many states
#: at once (a rebuild): a state slot (an int), or one of these.
TENANT = "tenant"
DAY = "day"  # the send's UTC day (a date)
DAY_NUMBER = "day_number"  # the same as days since the epoch (an int: cheaper to store)
MONTH = "month"  # the first day of the send's month
Field = int | str


@dataclass(frozen=True)
class Rollup:
    """One OLAP table (or the part of one) fed from attribution state.

    ``key_columns`` name the row key (``company_id`` first: every row is one tenant's);
    ``metrics`` map each counter column to the flag bits whose presence it counts
    (``None`` = counts every sent message); ``tallies`` collect one value per message
    into a multiset (not written); ``derived`` columns are computed from counters and
    tallies when a row is written. Value columns: metrics, then derived. In the state a
    row is one list: its counters, then its tallies (one map entry, one store entry).

    ``key`` and ``tallies`` must depend on the attribution (the winning send) only, never
    on flags: a flag-only change then touches counters alone (the hot path relies on it).

    ``fields`` say what ``key`` computes, column by column (:data:`Field`), and ``needs``
    the slot without which a state counts nowhere here: a rebuild computes the keys of
    many states at once from them (:meth:`AttributionRollups._account_many`); ``key``,
    one state at a time, is the hot path's (tests check the two agree). A tally is
    ``(name, field)``.
    """

    table: str
    key_columns: tuple[str, ...]
    key: Callable[[str, list], RowKey | None]
    metrics: tuple[tuple[str, int | None], ...]
    fields: tuple[Field, ...]
    needs: int | None = None
    tallies: tuple[tuple[str, Field], ...] = ()
    derived: tuple[tuple[str, Derive], ...] = ()

    @cached_property
    def tally_fns(self) -> tuple[Callable[[list], Hashable], ...]:
        """One function of a state per tally."""
        return tuple(_state_field(f) for _, f in self.tallies)

    @cached_property
    def all_bits(self) -> int:
        """Every flag bit some metric looks at."""
        bits = 0
        for _, b in self.metrics:
            bits |= b or 0
        return bits

    @cached_property
    def width(self) -> int:
        """How many counters a row has (its tallies follow them in the row's list)."""
        return len(self.metrics)

    @property
    def value_columns(self) -> tuple[str, ...]:
        return (*(m for m, _ in self.metrics), *(d for d, _ in self.derived))

    def contribution(
        self, tenant: str, state: list
    ) -> tuple[RowKey, tuple[int, ...], tuple[Hashable, ...]] | None:
        """This message's contribution to one row, or None if it counts nowhere yet."""
        if state[SENT_AT] is None:
            return None
        key = self.key(tenant, state)
        if key is None:
            return None
        masked = state[FLAGS] & self.all_bits
        counts = self._counts.get(masked)
        if counts is None:
            counts = self._counts[masked] = self.counts(masked)
        if not self.tallies:
            return key, counts, ()
        return key, counts, tuple([value(state) for value in self.tally_fns])

    def counts(self, flags: int) -> tuple[int, ...]:
        """One message's counters, from its flags."""
        return tuple([1 if bits is None or flags & bits else 0 for bits in self._metric_bits])

    @cached_property
    def _counts(self) -> dict[int, tuple[int, ...]]:
        """:meth:`counts` by the flags it looks at (at most 2 ** metrics entries; the hot
        path's, measured: a tuple built per rollup per event was a fifth of the update)."""
        return {}

    @cached_property
    def _metric_bits(self) -> tuple[int | None, ...]:
        return tuple(bits for _, bits in self.metrics)

    def values(self, counters: Sequence[int], tallies: Sequence[Tally] | None) -> tuple:
        """The value columns of one row (once per dirty row at every checkpoint: the
        names are looked up once per rollup, not per row)."""
        if not self.derived:
            return tuple(counters)
        metric_names, tally_names, derive = self._value_parts
        named = dict(zip(metric_names, counters, strict=True))
        tallied = dict(zip(tally_names, tallies or [{}] * len(tally_names), strict=True))
        return (*counters, *[fn(named, tallied) for fn in derive])

    @cached_property
    def _value_parts(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Derive, ...]]:
        return (
            tuple(m for m, _ in self.metrics),
            tuple(t for t, _ in self.tallies),
            tuple(fn for _, fn in self.derived),
        )


CAMPAIGN_METRICS: tuple[tuple[str, int | None], ...] = (
    ("sent", None),
    ("delivered", FLAG_BITS["email_delivered"]),
    ("opened_tracked", FLAG_BITS["email_opened"]),
    ("clicked_tracked", FLAG_BITS["email_clicked"]),
    ("replied", FLAG_BITS["email_replied"]),
    ("bounced", FLAG_BITS["email_bounced"]),
    ("unsubscribed", FLAG_BITS["email_unsubscribed"]),
    ("spam_complaints", FLAG_BITS["email_spam_complaint"]),
)

MAILBOX_METRICS: tuple[tuple[str, int | None], ...] = (
    *CAMPAIGN_METRICS[:6],
    ("bounced_hard", FLAG_BITS["bounce_hard"]),
    ("bounced_soft", FLAG_BITS["bounce_soft"]),
    *CAMPAIGN_METRICS[6:],
)

LEAD_METRICS: tuple[tuple[str, int | None], ...] = (
    ("emails_sent", None),
    *CAMPAIGN_METRICS[1:6],
    ("bounced_hard", FLAG_BITS["bounce_hard"]),
    *CAMPAIGN_METRICS[6:],
)


def lead_status(metrics: Mapping[str, int], _: Mapping[str, Tally] | None = None) -> str:
    """The lead's latest state (see :data:`LEAD_STATUS_ORDER`); ``''`` with no sent email."""
    for column, status in LEAD_STATUS_ORDER:
        if metrics[column] > 0:
            return status
    return ""


def _state_field(f: Field) -> Callable[[list], Hashable]:
    """A tally's value of one state (a :data:`Field` other than the tenant)."""
    if f == DAY:
        return send_day
    if f == DAY_NUMBER:
        return lambda s: s[SENT_AT] // DAY_MS
    if f == MONTH:
        return lambda s: month_start(send_day(s))
    assert isinstance(f, int), f
    return lambda s: s[f]


def _first_day(tally: Tally) -> date | None:
    """The first day of a tally of day numbers (:data:`DAY_NUMBER`)."""
    n = min(tally, default=None)
    return None if n is None else utc_day(n * DAY_MS)


def _last_day(tally: Tally) -> date | None:
    n = max(tally, default=None)
    return None if n is None else utc_day(n * DAY_MS)


CAMPAIGN_ANALYTICS = Rollup(
    table="campaign_analytics",
    key_columns=("company_id", "campaign_id", "day"),
    key=lambda tenant, s: (tenant, s[CAMPAIGN], send_day(s)),
    fields=(TENANT, CAMPAIGN, DAY),
    metrics=CAMPAIGN_METRICS,
)

MAILBOX_ANALYTICS = Rollup(
    table="mailbox_analytics",
    key_columns=("company_id", "mailbox_id", "day"),
    key=lambda tenant, s: (tenant, s[MAILBOX], send_day(s)),
    fields=(TENANT, MAILBOX, DAY),
    metrics=MAILBOX_METRICS,
)

SEQUENCE_STEP_ANALYTICS = Rollup(
    table="sequence_step_analytics",
    key_columns=("company_id", "campaign_id", "sequence_step_id", "day"),
    # emails sent outside a sequence have no step: they count in campaign_analytics only
    key=lambda tenant, s: None if s[STEP] is None else (tenant, s[CAMPAIGN], s[STEP], send_day(s)),
    fields=(TENANT, CAMPAIGN, STEP, DAY),
    needs=STEP,
    metrics=CAMPAIGN_METRICS,
)

LEAD_ANALYTICS = Rollup(
    table="lead_analytics",
    key_columns=("company_id", "lead_id"),
    # an erased lead's emails (LEAD None) count in every table but this one
    key=lambda tenant, s: None if s[LEAD] is None else (tenant, s[LEAD]),
    fields=(TENANT, LEAD),
    needs=LEAD,
    metrics=LEAD_METRICS,
    # day numbers, not dates: a date costs ~2 µs to pickle (a global looked up per
    # entry written), and a lead's tally is written for every lead a rebuild makes
    tallies=(("send_day", DAY_NUMBER), ("campaign", CAMPAIGN)),
    derived=(
        ("campaigns", lambda m, t: len(t["campaign"])),
        ("first_sent_day", lambda m, t: _first_day(t["send_day"])),
        ("last_sent_day", lambda m, t: _last_day(t["send_day"])),
        ("status", lead_status),
        ("campaign_ids", lambda m, t: sorted(t["campaign"])),
    ),
)

# The email half of billing_analytics; BillingPlans fills the plan-change half.
BILLING_SENDS = Rollup(
    table="billing_analytics",
    key_columns=("company_id", "month"),
    key=lambda tenant, s: (tenant, month_start(send_day(s))),
    fields=(TENANT, MONTH),
    metrics=(("billable_sends", None),),
    tallies=(("mailbox", MAILBOX),),
    derived=(
        ("active_mailboxes", lambda m, t: len(t["mailbox"])),
        ("mailbox_ids", lambda m, t: sorted(t["mailbox"])),
    ),
)

#: Tables whose rows are keyed by the lead: an erasure removes the lead's row.
ERASABLE_TABLES: tuple[str, ...] = (LEAD_ANALYTICS.table,)

EMAIL_ROLLUPS: tuple[Rollup, ...] = (
    CAMPAIGN_ANALYTICS,
    MAILBOX_ANALYTICS,
    SEQUENCE_STEP_ANALYTICS,
    LEAD_ANALYTICS,
    BILLING_SENDS,
)

WARMUP_ANALYTICS = Rollup(
    table="warmup_analytics",
    key_columns=("company_id", "mailbox_id", "day"),
    key=lambda tenant, s: (tenant, s[W_MAILBOX], send_day(s)),
    fields=(TENANT, W_MAILBOX, DAY),
    metrics=(
        ("warmup_sent", None),
        ("landed", WU_LANDED),
        ("landed_inbox", WU_INBOX),
        ("landed_spam", WU_SPAM),
        ("landed_other", WU_OTHER),
        ("replied", WU_REPLIED),
    ),
    derived=(
        (
            "inbox_placement_rate",
            lambda m, t: m["landed_inbox"] / m["landed"] if m["landed"] else None,
        ),
    ),
)

WARMUP_ROLLUPS: tuple[Rollup, ...] = (WARMUP_ANALYTICS,)


# --------------------------------------------------------------------------------------
# The component: attribution states of one partition and their rollup rows
# --------------------------------------------------------------------------------------


#: A message's counters -> its non-zero ones, ``((index, count), ...)``: a send counts in
#: one or two of a row's 8-10 counters, and adding the zeros too was most of moving it.
_NONZERO: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}


def _nonzero(counts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The non-zero counters of ``counts``, memoized in :data:`_NONZERO` (an all-zero
    message's ``()`` is falsy there, so it is made again each time: none exists, every
    rollup counts its sent messages)."""
    pairs = tuple((i, v) for i, v in enumerate(counts) if v)
    if len(_NONZERO) < 65_536:  # at most 2 ** metrics combinations per rollup
        _NONZERO[counts] = pairs
    return pairs


def _untally(tally: Tally, value: Hashable) -> None:
    """One ``value`` out of ``tally``."""
    left = tally[value] - 1
    if left:
        tally[value] = left
    else:
        del tally[value]


# slots that may hold strings shared by many states: campaign, mailbox, lead, step;
# warm-up: mailbox, landing time (an int), its event id, folder
assert (SENT_EVENT_ID, FLAGS) == (1, 6) and (W_MAILBOX, W_FOLDER) == (2, 5)


class _Columns:
    """Columns of many states (:data:`Field` -> one value per state), each made once."""

    def __init__(self, tenants: list[str], states: list[list]) -> None:
        self.states = states
        self.made: dict[Field, list] = {TENANT: tenants}

    def get(self, f: Field) -> list:
        column = self.made.get(f)
        if column is None:
            if f == DAY_NUMBER:
                column = [t // DAY_MS for t in self.get(SENT_AT)]
            elif f == DAY:
                numbers = self.get(DAY_NUMBER)
                days = {n: utc_day(n * DAY_MS) for n in set(numbers)}
                column = [days[n] for n in numbers]
            elif f == MONTH:
                day_column = self.get(DAY)
                months = {d: month_start(d) for d in set(day_column)}
                column = [months[d] for d in day_column]
            else:
                assert isinstance(f, int), f
                column = list(map(itemgetter(f), self.states))
            self.made[f] = column
        return column

    def keys(self, fields: tuple[Field, ...], needs: int | None) -> list[RowKey | None]:
        """Each state's row key (None where slot ``needs`` is None)."""
        keys: list[RowKey | None] = list(zip(*[self.get(f) for f in fields], strict=True))
        if needs is not None:
            keys = [
                k if v is not None else None for k, v in zip(keys, self.get(needs), strict=True)
            ]
        return keys


class AttributionRollups(Component):
    """Attribution states and rollup rows of one Kafka partition (so: of a set of tenants).

    Not thread-safe; owned by the worker's event loop.
    """

    def __init__(
        self,
        attribution: Attribution,
        rollups: Iterable[Rollup],
        tag: str,
        new_map: MapFactory = memory_map,
    ) -> None:
        """``new_map`` makes the maps that grow with the emails and leads in flight (plain
        dicts, or maps of the partition's local store: :meth:`streams.store.PartitionDB.map`),
        each under a name stable across processes."""
        self.attribution = attribution
        self.tag = tag
        self.rollups = tuple(rollups)
        self._by_table = {r.table: r for r in self.rollups}
        name = tag.lstrip("\x00") or "email"
        # JSON on disk: a state is what the changelog's JSON gave (or will give) back
        self.states: MutableMapping[tuple[str, str], list] = new_map(f"{name}/states", json=True)
        # table -> row key -> its counters, then its tallies (rollups that have some): one
        # entry per row (a rebuild writes one per lead, not two)
        self._rows: dict[str, MutableMapping[RowKey, list]] = {
            r.table: new_map(f"{name}/rows/{r.table}") for r in self.rollups
        }
        self._maps = [self.states, *self._rows.values()]
        self.dirty = DirtyRows(self._by_table)
        # (old flags << 32 | new flags) -> what the change does to the rows (_flag_plan)
        self._flag_plans: dict[int, tuple] = {}
        # states changed since the last settle(), each with its value before the first
        # change (None: new): what they contribute to the rows is moved once per batch
        self._pending: dict[tuple[str, str], list | None] = {}
        self.dirty_states: set[tuple[str, str]] = set()
        # events outside the attribution window, by type (a metric: replays count again)
        self.late: Counter[str] = Counter()
        # after a restore: the row keys still to rewrite (see restored())
        self._rewrite: Iterator[tuple[str, RowKey]] | None = None
        # after reopened(): restores mark the rows they change (the rest are in the OLAP)
        self._incremental = False

    def parts(self) -> tuple[TablePart, ...]:
        return tuple(
            TablePart(r.table, r.key_columns, r.value_columns, sharded=True) for r in self.rollups
        )

    @property
    def rows(self) -> dict[str, MutableMapping[RowKey, list]]:
        """table -> row key -> its counters, then its tallies (settled first)."""
        self.settle()
        return self._rows

    # -- state ---------------------------------------------------------------------------
    def apply(self, event: Mapping) -> bool:
        """Apply one decoded, validated event. Return True if any state changed.

        The state changes now; the rows it counts in change at :meth:`settle` (the worker
        calls it after each batch, every other method here first), once per state
        changed, however many of the batch's events changed it: a contribution is a
        function of the state alone, so moving it from the state before the batch to
        the state after is the sum of the moves event by event (measured on the bench's
        workload: 1.9 email events per email in a batch of 5,000).
        """
        key = (event["tenant_id"], event[self.attribution.id_field])
        state = self.states.get(key)
        pending = self._pending
        if state is None:
            key = (intern(key[0]), key[1])
            state = self.states[key] = self.attribution.new_state()
            before = None
            first = True
        else:
            first = key not in pending
            before = state.copy() if first else None
        late = self.attribution.late
        if late is not None:
            self.late.update(late(state, event))
        if not self.attribution.merge_event(state, event):
            return False
        if first:
            pending[key] = before
            if len(pending) >= MAX_PENDING:
                self.settle()
        self.dirty_states.add(key)
        return True

    def settle(self) -> None:
        """Move what the states changed since the last call contribute to the rows."""
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        states = self.states
        account = self._account
        for key, before in pending.items():
            after = states.get(key)
            if after is not None:  # a pending state is never removed unsettled
                account(key[0], before, after)

    def restore(self, key: list, value: list) -> None:
        """Join a state read back from the changelog into this partition's state."""
        self.settle()
        tenant, message_id = intern(key[0]), key[1]
        state = self.states.get((tenant, message_id))
        mark = self._incremental
        if state is None:
            value = [
                intern(v) if type(v) is str and i > SENT_EVENT_ID else v
                for i, v in enumerate(value)
            ]
            state = self.states[(tenant, message_id)] = self.attribution.adopt(value)
            self._account(tenant, None, state, mark=mark)
            return
        before = state.copy()
        if self.attribution.merge_states(state, value):
            self._account(tenant, before, state, mark=mark)

    def restore_many(self, entries: Sequence[tuple[list, list]]) -> None:
        """Join many changelog states at once: a rebuild's hot path.

        States of emails this partition does not hold yet (all of them in a rebuild from
        an empty store) are added together: their contributions are counted per row key
        and combination of flags first, so each row and tally is touched once per batch
        instead of once per email. Known emails go through :meth:`restore`. Takes the
        value lists (the engine's copies) as the states: they must not be used after.
        """
        self.settle()
        merge = self.attribution.merge_states
        adopt = self.attribution.adopt
        keys = [(key[0], key[1]) for key, _ in entries]
        values = [v for _, v in entries] if adopt is list else [adopt(v) for _, v in entries]
        batch = dict(zip(keys, values, strict=True))
        if len(batch) < len(keys):  # an email twice in the batch: joined, in order
            batch = {}
            for k, value in zip(keys, values, strict=True):
                prev = batch.get(k)
                if prev is None:
                    batch[k] = value
                else:
                    merge(prev, value)
        states = self.states
        fresh: list[list] = []
        tenants: list[str] = []
        new: list[tuple[tuple[str, str], list]] = []
        known = get_many(states, list(batch))
        for ((tenant, message_id), state), held in zip(batch.items(), known, strict=True):
            if held is not None:
                self.restore([tenant, message_id], state)
                continue
            tenant = intern(tenant)
            # interned: millions of states share a few campaigns, mailboxes and steps (the
            # slots between SENT_EVENT_ID and FLAGS, unrolled: a rebuild's hottest loop)
            a, b, c, d = state[2], state[3], state[4], state[5]
            if type(a) is str:
                state[2] = intern(a)
            if type(b) is str:
                state[3] = intern(b)
            if type(c) is str:
                state[4] = intern(c)
            if type(d) is str:
                state[5] = intern(d)
            new.append(((tenant, message_id), state))
            if state[SENT_AT] is not None:
                fresh.append(state)
                tenants.append(tenant)
        insert_new(states, new)
        if fresh:
            self._account_many(tenants, fresh)

    def _account_many(self, tenants: list[str], fresh: list[list]) -> None:
        """Add the contributions of new (sent) states, ``tenants[i]``'s ``fresh[i]``:
        :meth:`_account` for many at once, their row keys and tallies computed column by
        column from the rollups' :attr:`Rollup.fields`."""
        mark = self._incremental
        columns = _Columns(tenants, fresh)
        flags = columns.get(FLAGS)
        by_mask: dict[int, list[int]] = {}  # the flags each rollup looks at, per state
        for rollup in self.rollups:
            mask, bits_list = rollup.all_bits, rollup._metric_bits
            table = rollup.table
            keys = columns.keys(rollup.fields, rollup.needs)
            masked = by_mask.get(mask)
            if masked is None:
                masked = by_mask[mask] = list(map(mask.__and__, flags))
            templates: dict[int, tuple[int, ...]] = {}  # flags -> one state's counters
            for f in set(masked):
                templates[f] = tuple([1 if bits is None or f & bits else 0 for bits in bits_list])
            distinct = set(keys)
            nones = keys.count(None)
            distinct.discard(None)
            if len(distinct) + nones == len(keys):
                # a row per state (lead_analytics: one lead per email, mostly)
                self._account_unique(rollup, columns, keys, masked, templates, nones, mark)
                continue
            rows = self._rows[table]
            counted = Counter(zip(keys, masked, strict=True))
            order = list(distinct)
            found = get_many(rows, order)
            held = dict(zip(order, found, strict=True))
            new_rows: dict[RowKey, list] = {}
            empty_tallies = len(rollup.tallies)
            for (key, f), n in counted.items():
                if key is None:
                    continue
                counts = templates[f]
                row = new_rows.get(key) or held[key]
                if row is None:
                    row = new_rows[key] = list(counts) if n == 1 else [c * n for c in counts]
                    if empty_tallies:
                        row.extend([{} for _ in range(empty_tallies)])  # filled below
                else:
                    for i, c in enumerate(counts):
                        if c:
                            row[i] += n
                if mark:
                    self.dirty.add(table, key)
            if rollup.tallies:
                # before insert_new: it may take the rows fetched out of memory
                width = rollup.width
                values = zip(*[columns.get(f) for _, f in rollup.tallies], strict=True)
                for (key, vals), n in Counter(zip(keys, values, strict=True)).items():
                    if key is None:
                        continue
                    row = new_rows.get(key) or held[key]
                    for tally, v in zip(row[width:], vals, strict=True):
                        tally[v] = tally.get(v, 0) + n
            insert_new(rows, list(new_rows.items()))

    def _account_unique(
        self,
        rollup: Rollup,
        columns: _Columns,
        keys: list[RowKey | None],
        masked: list[int],
        templates: dict[int, tuple[int, ...]],
        nones: int,
        mark: bool,
    ) -> None:
        """:meth:`_account_many` for one rollup where no two states share a row key: no
        counting per key, the rows looked up in the states' order."""
        table = rollup.table
        tally_columns = [columns.get(f) for _, f in rollup.tallies]
        if nones:
            live = [i for i, key in enumerate(keys) if key is not None]
            keys = [keys[i] for i in live]
            masked = [masked[i] for i in live]
            tally_columns = [[column[i] for i in live] for column in tally_columns]
        present = cast(list[RowKey], keys)  # no None left
        rows = self._rows[table]
        found = get_many(rows, present)
        new_rows: list[tuple[RowKey, list]] = []
        append = new_rows.append
        if not tally_columns:
            for key, f, row in zip(present, masked, found, strict=True):
                if row is None:
                    append((key, list(templates[f])))
                else:
                    for i, c in enumerate(templates[f]):
                        if c:
                            row[i] += 1
        else:
            width = rollup.width
            for key, f, row, vals in zip(
                present, masked, found, zip(*tally_columns, strict=True), strict=True
            ):
                if row is None:
                    append((key, [*templates[f], *[{v: 1} for v in vals]]))
                else:
                    for i, c in enumerate(templates[f]):
                        if c:
                            row[i] += 1
                    for tally, v in zip(row[width:], vals, strict=True):
                        tally[v] = tally.get(v, 0) + 1
        if mark:
            for key in present:
                self.dirty.add(table, key)
        insert_new(rows, new_rows)

    def forget(self, key: list) -> None:
        """A changelog tombstone: the message's state goes, and its contribution with it."""
        self.settle()
        tenant, message_id = key[0], key[1]
        state = self.states.get((tenant, message_id))
        if state is None:
            return
        self._retract(tenant, state)
        del self.states[(tenant, message_id)]
        self.dirty_states.discard((tenant, message_id))

    def _retract(self, tenant: str, state: list) -> None:
        """Take one message's contribution out of every row (its rows become dirty)."""
        for rollup in self.rollups:
            old = rollup.contribution(tenant, state)
            if old is None:
                continue
            key, counts, values = old
            row = self._rows[rollup.table][key]
            for i, v in enumerate(counts):
                row[i] -= v
            if values:
                for tally, value in zip(row[rollup.width :], values, strict=True):
                    _untally(tally, value)
            self.dirty.add(rollup.table, key)

    def keeps_state_in_store(self) -> bool:
        return not isinstance(self.states, dict)

    def reopened(self) -> None:
        self.settle()
        self._incremental = True

    def restored(self) -> None:
        self.settle()
        # dirty_states are kept: joins never add to them, so what they hold are events
        # applied before a rebalance that kept the partition here (their offsets are
        # read again, and a replay changes nothing, so only these marks get them into
        # the changelog)
        if self._incremental:
            self._incremental = False  # the rows the restores changed are marked already
            return
        # Every row is rewritten (the OLAP may lag the changelog), a batch per checkpoint
        # (Engine.snapshot: mark_rewrites): a state far beyond memory is never all in one.
        self._rewrite = self._all_row_keys()

    def rewrite_pending(self) -> bool:
        return self._rewrite is not None

    def _all_row_keys(self) -> Iterator[tuple[str, RowKey]]:
        for table, rows in self._rows.items():
            # a dict must not change while it is walked; a SpillMap may (and is not copied)
            for key in list(rows) if isinstance(rows, dict) else rows:
                yield table, key

    def _account(self, tenant: str, before: list | None, after: list, mark: bool = True) -> None:
        """Move one message's contribution from ``before`` to ``after``; ``mark``: mark
        the rows dirty (a restore does not: :meth:`restored` rewrites every row)."""
        if after[SENT_AT] is None:
            return  # never sent (a send only ever replaces a send): counts nowhere yet
        if before is not None and before[:FLAGS] == after[:FLAGS]:
            self._account_flags(tenant, before[FLAGS], after, mark)
            return
        counted = before is not None and before[SENT_AT] is not None  # else counts nowhere
        all_rows, dirty = self._rows, self.dirty.keys
        for rollup in self.rollups:
            old = rollup.contribution(tenant, before) if counted else None  # type: ignore[arg-type]
            new = rollup.contribution(tenant, after)
            if old == new:
                continue
            table = rollup.table
            rows = all_rows[table]
            width = rollup.width
            # each value fetched is changed before the next fetch (rule of SpillMap)
            if old is not None:
                key, counts, values = old
                row = rows[key]
                for i, v in _NONZERO.get(counts) or _nonzero(counts):
                    row[i] -= v
                if values:
                    for tally, value in zip(row[width:], values, strict=True):
                        _untally(tally, value)
                if mark:
                    dirty[table].add(key)
            if new is not None:
                key, counts, values = new
                target = rows.get(key)
                if target is None:
                    rows[key] = [*counts, *[{value: 1} for value in values]]
                else:
                    for i, v in _NONZERO.get(counts) or _nonzero(counts):
                        target[i] += v
                    if values:
                        for tally, value in zip(target[width:], values, strict=True):
                            tally[value] = tally.get(value, 0) + 1
                if mark:
                    dirty[table].add(key)

    def _account_flags(self, tenant: str, old_flags: int, after: list, mark: bool) -> None:
        """Fast path: only flags changed, so every row key and tally stays the same."""
        new_flags = after[FLAGS]
        plan = self._flag_plans.get((old_flags << 32) | new_flags)
        if plan is None:
            plan = self._flag_plan(old_flags, new_flags)
        all_rows, dirty = self._rows, self.dirty.keys
        for table, key_of, deltas in plan:
            key = key_of(tenant, after)
            if key is None:
                continue
            row = all_rows[table][key]
            for i, delta in deltas:
                row[i] += delta
            if mark:
                dirty[table].add(key)

    def _flag_plan(
        self, old_flags: int, new_flags: int
    ) -> tuple[tuple[str, Callable[[str, list], RowKey | None], tuple[tuple[int, int], ...]], ...]:
        """What a change of flags from ``old_flags`` to ``new_flags`` does to each rollup's
        row: ``(table, key, ((counter, +1 | -1), ...))`` for the rollups whose counters
        move (memoized: a handful of flag combinations ever occur, and walking every
        metric of every rollup per event was two fifths of this fast path)."""
        plan = []
        for rollup in self.rollups:
            deltas = tuple(
                (i, delta)
                for i, (_, bits) in enumerate(rollup.metrics)
                if bits is not None
                and (delta := (1 if new_flags & bits else 0) - (1 if old_flags & bits else 0))
            )
            if deltas:
                plan.append((rollup.table, rollup.key, deltas))
        out = tuple(plan)
        if len(self._flag_plans) < MAX_FLAG_PLANS:
            self._flag_plans[(old_flags << 32) | new_flags] = out
        return out

    # -- rows ----------------------------------------------------------------------------
    def value(self, table: str, key: RowKey) -> tuple:
        self.settle()
        rollup = self._by_table[table]
        row = peek(self._rows[table], key)
        if row is None:
            return rollup.values([0] * rollup.width, None)
        width = rollup.width
        return rollup.values(row[:width], row[width:] if rollup.tallies else None)

    def mark_rewrites(self, limit: int) -> int:
        """Mark the next ``limit`` rows of a rewrite after a restore dirty (see
        :meth:`restored`); return how many."""
        self.settle()
        if self._rewrite is None or limit <= 0:
            return 0
        n = 0
        for n, (table, key) in enumerate(self._rewrite, 1):
            self.dirty.add(table, key)
            if n >= limit:
                return n  # the rest at the next checkpoints
        self._rewrite = None
        return n

    def take_dirty_rows(self) -> dict[str, dict[RowKey, tuple]]:
        """Snapshot and clear the dirty rows: table -> {key: value columns}, in the dirty
        set's stable order (:meth:`value` of each, its lookups made once per table: this
        runs under the state lock for every row a checkpoint writes).

        A row erased meanwhile (:meth:`EmailRollups.erase` removed it) is not written: a
        row of zeros would still name the lead."""
        self.settle()
        out: dict[str, dict[RowKey, tuple]] = {}
        for table, keys in self.dirty.take().items():
            rows = self._rows[table]
            if table in ERASABLE_TABLES:
                keys = [k for k in keys if k in rows]
            rollup = self._by_table[table]
            width, values = rollup.width, rollup.values
            tallies = bool(rollup.tallies)
            read = getattr(rows, "peek", None) or rows.get  # peek: see streams.state.peek
            taken: dict[RowKey, tuple] = {}
            for key in keys:
                row = read(key, None)
                taken[key] = (
                    values([0] * width, None)
                    if row is None
                    else values(row[:width], row[width:] if tallies else None)
                )
            out[table] = taken
        return out

    def take(self) -> Taken:
        self.settle()
        states = sorted(self.dirty_states)
        self.dirty_states.clear()
        return Taken(
            changelog=[([tenant, mid], list(self.states[(tenant, mid)])) for tenant, mid in states],
            rows=self.take_dirty_rows(),
            token=states,
        )

    def requeue(self, taken: Taken) -> None:
        for table, rows in taken.rows.items():
            self.dirty.update(table, rows)
        self.dirty_states.update(k for k in taken.token if k in self.states)

    def stats(self) -> dict[str, int]:
        return {"states": len(self.states)}

    def close(self) -> None:
        self._pending = {}  # the partition's state goes: nothing left to count
        # the rewrite's walk holds a RocksDB iterator (and this component: a cycle that
        # would keep the store's files locked until the garbage collector came by)
        self._rewrite = None
        for m in self._maps:
            if not isinstance(m, dict):
                m.store.forget(m)  # type: ignore[attr-defined]


class EmailRollups(AttributionRollups):
    """Campaign email attribution → campaign/mailbox/sequence-step/lead/billing rows.

    Its changelog keys are untagged ``[tenant, email_id]`` (the format of the first
    release, kept so existing changelogs restore).

    Erasure: an erased lead's emails keep their state (campaign, mailbox, step, send
    time, flags: what the campaign, mailbox, step and billing rows count, none of it
    personal) with the lead slot emptied, so they go on counting there — later events
    included — and count nowhere in ``lead_analytics``, whose row of the lead goes. The
    emptied states are written to the changelog again (the new value supersedes the old
    one, which compaction then removes). ``erased`` says which leads are erased; it is
    consulted for every ``email_sent`` and every state restored, so no replay, late
    event or old changelog value brings a lead back.
    """

    families = frozenset({"email"})

    def __init__(
        self,
        rollups: Iterable[Rollup] = EMAIL_ROLLUPS,
        window_ms: int | None = None,
        new_map: MapFactory = memory_map,
        erased: Callable[[str, str | None], bool] | None = None,
        erasing: Callable[[str], bool] | None = None,
    ) -> None:
        """``window_ms``: the attribution window (None: an event counts whenever it came);
        ``erased(tenant, lead)``: whether a lead is erased (None: no erasure registry);
        ``erasing(tenant)``: whether the tenant has an erased lead at all (None: unknown,
        every state restored is checked with ``erased``)."""
        attribution = EMAIL if window_ms is None else windowed_email(window_ms)
        super().__init__(attribution, rollups, "", new_map)
        self.erased = erased
        self.erasing = erasing
        self._scrubbed: set[tuple[str, str]] = set()  # restored states emptied of a lead

    def apply(self, event: Mapping) -> bool:
        erased = self.erased
        if (
            erased is not None
            and event["event_type"] == "email_sent"
            and erased(event["tenant_id"], event["lead_id"])
        ):
            event = {**event, "lead_id": None}  # a copy: the record goes to the sinks too
        return super().apply(event)

    def restore(self, key: list, value: list) -> None:
        erased = self.erased
        if erased is not None and value[LEAD] is not None and erased(key[0], value[LEAD]):
            value = [*value[:LEAD], None, *value[LEAD + 1 :]]
            self._scrubbed.add((key[0], key[1]))
        super().restore(key, value)

    def restore_many(self, entries: Sequence[tuple[list, list]]) -> None:
        erased, erasing = self.erased, self.erasing
        if erased is not None and erasing is not None:
            # a batch holds a few tenants: only those with erased leads are checked
            tenants = {t for t in {key[0] for key, _ in entries} if erasing(t)}
            if tenants:
                self._scrub([e for e in entries if e[0][0] in tenants], erased)
        elif erased is not None:
            self._scrub(entries, erased)
        super().restore_many(entries)

    def _scrub(
        self, entries: Iterable[tuple[list, list]], erased: Callable[[str, str | None], bool]
    ) -> None:
        """Empty the lead slot of the states ``entries`` whose lead is erased."""
        for key, value in entries:  # the values are the engine's copies: in place
            lead = value[LEAD]
            if lead is not None and erased(key[0], lead):
                value[LEAD] = None
                self._scrubbed.add((key[0], key[1]))

    def restored(self) -> None:
        super().restored()
        # states whose changelog value still named an erased lead: write them again
        self.dirty_states.update(k for k in self._scrubbed if k in self.states)
        self._scrubbed.clear()

    def erase(self, tenant: str, refs: Set[str]) -> None:
        self.erase_many({tenant: refs})

    def erase_many(self, by_tenant: Mapping[str, Set[str]]) -> None:
        """Empty the lead slot of every state of the tenants' leads whose reference is in
        ``by_tenant``, and drop those leads' ``lead_analytics`` rows (one walk of this
        partition's states, however many tenants)."""
        self.settle()
        seen: dict[tuple[str, str], bool] = {}

        def matches(tenant: str, lead: str | None) -> bool:
            if lead is None:
                return False
            refs = by_tenant.get(tenant)
            if refs is None:
                return False
            hit = seen.get((tenant, lead))
            if hit is None:
                hit = seen[(tenant, lead)] = lead_ref(tenant, lead) in refs
            return hit

        # collect first, change after: a store map's walk hands out copies
        found = [key for key, state in self.states.items() if matches(key[0], state[LEAD])]
        leads = {key for key, hit in seen.items() if hit}
        for key in found:
            state = self.states[key]
            if state[LEAD] is None:
                continue
            before = state.copy()
            state[LEAD] = None
            self._account(key[0], before, state)
            self.states[key] = state
            self.dirty_states.add(key)
        # rows of a lead whose emails live elsewhere (none here) go too
        for table in ERASABLE_TABLES:
            rows = self._rows[table]
            for key in leads | {k for k in list(rows) if matches(k[0], k[1])}:
                rows.pop(key, None)
                self.dirty.keys[table].discard(key)

    def holds(self, tenant: str, lead: str) -> dict[str, int]:
        self.settle()
        states = sum(
            1 for key, state in self.states.items() if key[0] == tenant and state[LEAD] == lead
        )
        rows = sum(1 for table in ERASABLE_TABLES if (tenant, lead) in self._rows[table])
        return {k: v for k, v in (("email_states", states), ("lead_rows", rows)) if v}

    @property
    def emails(self) -> MutableMapping[tuple[str, str], EmailState]:
        return self.states

    @property
    def dirty_rows(self) -> dict[str, set[RowKey]]:
        self.settle()
        return self.dirty.keys


class WarmupRollups(AttributionRollups):
    """Warm-up email attribution → warmup_analytics rows. Never touches campaign tables."""

    families = frozenset({"warmup"})

    def __init__(
        self,
        rollups: Iterable[Rollup] = WARMUP_ROLLUPS,
        new_map: MapFactory = memory_map,
    ) -> None:
        super().__init__(WARMUP, rollups, "\x00warmup", new_map)


# --------------------------------------------------------------------------------------
# Plan changes: the business half of billing_analytics
# --------------------------------------------------------------------------------------

PLAN_EVENT_COLUMNS: Mapping[str, str] = {
    "business_signup": "signups",
    "business_upgrade": "upgrades",
    "business_downgrade": "downgrades",
    "business_churn": "churns",
}

BILLING_PLAN_COLUMNS: tuple[str, ...] = (
    *PLAN_EVENT_COLUMNS.values(),
    "plan_at_month_end",
    "active_at_month_end",
)

# (occurred_at, event_type, plan_to): one business event as billing needs it
PlanEvent = tuple[int, str, str | None]


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _month_start_ms(month: date) -> int:
    return int(datetime(month.year, month.month, 1, tzinfo=UTC).timestamp() * 1000)


@dataclass
class BillingPlans(Component):
    """Business events per tenant (a set keyed by event id) → plan columns of billing rows.

    Counts are distinct event ids per type and UTC month. ``plan_at_month_end`` is the
    ``plan_to`` of the tenant's last business event before the month ended (any earlier
    month counts), so a late event re-dates every later month that has plan events.

    Business events are keyed by tenant (one partition), sends by email (every partition):
    so the plan columns are written on the rows of months *with* plan events only, and
    are NULL / 0 on every other row; ``billing_analytics_v`` carries them forward to the
    months after (the latest month at or before with plan events), whichever partition
    counted their sends (:mod:`sluice.olap.catalog`, ``Merge("carry")``).
    """

    events: dict[str, dict[str, PlanEvent]] = field(default_factory=dict)
    dirty_events: set[tuple[str, str]] = field(default_factory=set)
    dirty: DirtyRows = field(default_factory=lambda: DirtyRows(["billing_analytics"]))

    tag = "\x00business"
    families = frozenset({"business"})
    TABLE = "billing_analytics"

    def parts(self) -> tuple[TablePart, ...]:
        return (TablePart(self.TABLE, ("company_id", "month"), BILLING_PLAN_COLUMNS, sharded=True),)

    def apply(self, event: Mapping) -> bool:
        if event["event_type"] not in PLAN_EVENT_COLUMNS:
            return False
        record = (event["occurred_at"], event["event_type"], event.get("plan_to"))
        if not self._merge(event["tenant_id"], event["event_id"], record, cascade=True):
            return False
        self.dirty_events.add((event["tenant_id"], event["event_id"]))
        return True

    def _merge(self, tenant: str, event_id: str, record: PlanEvent, cascade: bool) -> bool:
        events = self.events.setdefault(tenant, {})
        old = events.get(event_id)
        # keep the smallest record: the same event redelivered is equal; a producer bug
        # (one id, two payloads) still converges to one answer whatever the order
        if old is not None and _order(old) <= _order(record):
            return False
        events[event_id] = record
        if cascade:
            since = record[0] if old is None else min(old[0], record[0])
            self._cascade(tenant, month_start(utc_day(since)))
        return True

    def _months(self, tenant: str) -> set[date]:
        return {month_start(utc_day(at)) for at, _, _ in self.events.get(tenant, {}).values()}

    def _cascade(self, tenant: str, since: date) -> None:
        self.dirty.update(self.TABLE, {(tenant, m) for m in self._months(tenant) if m >= since})

    def value(self, table: str, key: RowKey) -> tuple:
        tenant, month = key
        start, end = _month_start_ms(month), _month_start_ms(_next_month(month))
        counts = dict.fromkeys(PLAN_EVENT_COLUMNS.values(), 0)
        last: tuple[int, str, PlanEvent] | None = None
        for event_id, record in self.events.get(tenant, {}).items():
            at, event_type, _ = record
            if start <= at < end:
                counts[PLAN_EVENT_COLUMNS[event_type]] += 1
            if at < end and (last is None or (at, event_id) > last[:2]):
                last = (at, event_id, record)
        if last is None or not any(counts.values()):  # the view carries it here (see above)
            plan, active = None, 0
        else:
            _, event_type, plan_to = last[2]
            active = int(event_type != "business_churn")
            plan = plan_to if active else None
        return (*counts.values(), plan, active)

    def take(self) -> Taken:
        events = sorted(self.dirty_events)
        self.dirty_events.clear()
        rows = {
            table: {k: self.value(table, k) for k in keys}
            for table, keys in self.dirty.take().items()
        }
        return Taken(
            changelog=[([t, e], list(self.events[t][e])) for t, e in events],
            rows=rows,
            token=events,
        )

    def requeue(self, taken: Taken) -> None:
        for table, rows in taken.rows.items():
            self.dirty.update(table, rows)
        self.dirty_events.update(taken.token)

    def restore(self, key: list, value: list) -> None:
        tenant, event_id = key
        # no cascade: restored() marks every row dirty once, at the end
        self._merge(tenant, event_id, (value[0], value[1], value[2]), cascade=False)

    def restored(self) -> None:
        for tenant in self.events:
            self.dirty.update(self.TABLE, ((tenant, m) for m in self._months(tenant)))

    def stats(self) -> dict[str, int]:
        return {"plan_events": sum(len(e) for e in self.events.values())}


def _order(record: PlanEvent) -> tuple:
    at, event_type, plan_to = record
    return (at, event_type, plan_to or "")
