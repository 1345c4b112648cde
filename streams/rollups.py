"""Email attribution state and the rollups derived from it: pure logic, no I/O.

Why the state looks like this
-----------------------------
The OLAP contract (DESIGN §3) is the spec's SQL over an ``emails`` table: for the emails
of campaign C *sent* on day D, each metric counts the distinct emails that have at least
one event of that kind, whenever it arrived. So the worker keeps, per (tenant, email),
one small record — the winning ``email_sent`` and a bit per event kind — and every rollup
row is a pure function of those records.

That record is a join-semilattice: merging an event is commutative, associative and
idempotent (bits are OR-ed; the winning send is the smallest ``(occurred_at, event_id)``).
Redelivery, replay after a crash, duplicates at new offsets and any arrival order all
converge to the same state, so exactness does not depend on exactly-once delivery.
Rollup rows are maintained incrementally by retracting an email's old contribution and
adding its new one, and can always be rebuilt from the records alone (after a restore).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

DAY_MS = 86_400_000

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
        state[CAMPAIGN] = event["campaign_id"]
        state[MAILBOX] = event["mailbox_id"]
        state[LEAD] = event["lead_id"]
        state[STEP] = event.get("sequence_step_id")
        return True
    bits = FLAG_BITS.get(event_type, 0)
    if event_type == "email_bounced":
        kind = event.get("bounce_type")
        if kind == "hard":
            bits |= FLAG_BITS["bounce_hard"]
        elif kind == "soft":
            bits |= FLAG_BITS["bounce_soft"]
    if not bits or state[FLAGS] & bits == bits:
        return False
    state[FLAGS] |= bits
    return True


def merge_states(into: EmailState, other: EmailState) -> bool:
    """Join two states of the same email (used when restoring). Return True if changed."""
    changed = False
    if other[SENT_AT] is not None and (
        into[SENT_AT] is None or (other[SENT_AT], other[SENT_EVENT_ID]) < (into[SENT_AT], into[SENT_EVENT_ID])
    ):
        into[:FLAGS] = other[:FLAGS]
        changed = True
    if other[FLAGS] | into[FLAGS] != into[FLAGS]:
        into[FLAGS] |= other[FLAGS]
        changed = True
    return changed


def send_day(state: EmailState) -> date:
    """The UTC calendar day of the winning send."""
    return datetime.fromtimestamp(state[SENT_AT] // 1000, tz=UTC).date()


# --------------------------------------------------------------------------------------
# Rollup definitions: a rollup maps an email's state to (row key, metric vector).
# --------------------------------------------------------------------------------------

RowKey = tuple


@dataclass(frozen=True)
class Rollup:
    """One OLAP table fed from email attribution state.

    ``key_columns`` name the row key (``company_id`` first: every row is one tenant's);
    ``metrics`` map each counter column to the flag bits whose presence it counts
    (``None`` = counts every sent email).
    """

    table: str
    key_columns: tuple[str, ...]
    key: Callable[[str, EmailState], RowKey | None]
    metrics: tuple[tuple[str, int | None], ...]

    def contribution(self, tenant: str, state: EmailState) -> tuple[RowKey, tuple[int, ...]] | None:
        """This email's contribution to one row, or None if it counts nowhere yet."""
        if state[SENT_AT] is None:
            return None
        key = self.key(tenant, state)
        if key is None:
            return None
        flags = state[FLAGS]
        return key, tuple(1 if bits is None or flags & bits else 0 for _, bits in self.metrics)


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

CAMPAIGN_ANALYTICS = Rollup(
    table="campaign_analytics",
    key_columns=("company_id", "campaign_id", "day"),
    key=lambda tenant, s: (tenant, s[CAMPAIGN], send_day(s)),
    metrics=CAMPAIGN_METRICS,
)

EMAIL_ROLLUPS: tuple[Rollup, ...] = (CAMPAIGN_ANALYTICS,)


class EmailRollups:
    """Attribution state and rollup rows of one Kafka partition (so: of a set of tenants).

    Not thread-safe; owned by the worker's event loop.
    """

    def __init__(self, rollups: Iterable[Rollup] = EMAIL_ROLLUPS) -> None:
        self.rollups = tuple(rollups)
        self.emails: dict[tuple[str, str], EmailState] = {}
        self.rows: dict[str, dict[RowKey, list[int]]] = {r.table: {} for r in self.rollups}
        self.dirty_rows: dict[str, set[RowKey]] = {r.table: set() for r in self.rollups}
        self.dirty_emails: set[tuple[str, str]] = set()

    def apply(self, event: Mapping) -> bool:
        """Apply one decoded, validated email event. Return True if any state changed."""
        key = (event["tenant_id"], event["email_id"])
        state = self.emails.get(key)
        if state is None:
            state = self.emails[key] = new_state()
            before = None
        else:
            before = state.copy()
        if not merge_event(state, event):
            return False
        self._account(key[0], before, state)
        self.dirty_emails.add(key)
        return True

    def restore(self, tenant: str, email_id: str, restored: EmailState) -> None:
        """Join a state read back from the changelog into this partition's state."""
        key = (tenant, email_id)
        state = self.emails.get(key)
        if state is None:
            self.emails[key] = list(restored)
            self._account(tenant, None, self.emails[key])
            return
        before = state.copy()
        if merge_states(state, restored):
            self._account(tenant, before, state)

    def _account(self, tenant: str, before: EmailState | None, after: EmailState) -> None:
        for rollup in self.rollups:
            old = rollup.contribution(tenant, before) if before is not None else None
            new = rollup.contribution(tenant, after)
            if old == new:
                continue
            rows = self.rows[rollup.table]
            dirty = self.dirty_rows[rollup.table]
            if old is not None:
                row = rows[old[0]]
                for i, v in enumerate(old[1]):
                    row[i] -= v
                dirty.add(old[0])
            if new is not None:
                row = rows.get(new[0])
                if row is None:
                    row = rows[new[0]] = [0] * len(rollup.metrics)
                for i, v in enumerate(new[1]):
                    row[i] += v
                dirty.add(new[0])

    def mark_all_dirty(self) -> None:
        """Mark every row dirty (after a restore: the OLAP may lag the changelog)."""
        for table, rows in self.rows.items():
            self.dirty_rows[table].update(rows)

    def take_dirty_rows(self) -> dict[str, list[tuple[RowKey, tuple[int, ...]]]]:
        """Snapshot and clear the dirty rows: table -> [(key, metric values)]."""
        out: dict[str, list[tuple[RowKey, tuple[int, ...]]]] = {}
        for table, dirty in self.dirty_rows.items():
            if dirty:
                rows = self.rows[table]
                out[table] = [(k, tuple(rows[k])) for k in sorted(dirty, key=_sort_key)]
                dirty.clear()
        return out

    def take_dirty_emails(self) -> list[tuple[tuple[str, str], EmailState]]:
        """Snapshot and clear the emails changed since the last snapshot."""
        out = [(k, list(self.emails[k])) for k in self.dirty_emails]
        self.dirty_emails.clear()
        return out

    def requeue(self, rows: Mapping[str, Iterable[tuple[RowKey, object]]]) -> None:
        """Put rows whose write failed back into the dirty set (their current values win)."""
        for table, items in rows.items():
            self.dirty_rows[table].update(k for k, _ in items)


def _sort_key(key: RowKey) -> tuple:
    return tuple(str(part) for part in key)
