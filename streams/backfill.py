"""Recompute rollups from the events Kafka still retains and overwrite their OLAP rows.

Why it is safe while the worker runs
------------------------------------
Backfill feeds each partition's retained events, from the first retained offset up to
the high watermark read when it starts, through the worker's own state components
(:class:`streams.engine.Engine`), so a row it computes is exactly the row the worker
holds at that offset. Rows are absolute values versioned by source offsets
(``_version``), and the tables keep the highest version per key
(ReplacingMergeTree): the worker's later updates (higher offsets) supersede a backfilled
row, and a backfilled row supersedes anything the worker wrote from fewer events.
Nothing is committed to the worker's consumer group.

Rows are written sorted by key, in fixed-size chunks, and ``updated`` is the newest
record time read (not the wall clock): a second run over the same log sends
byte-identical inserts, which ClickHouse deduplicates, and gives the same rows.

What it reads and writes
------------------------
Every event of an email has to be seen to count it (an open arrives days after the
send), so every partition is read from its first retained offset whatever ``--from``
says; ``--from``/``--to`` select which rows are written (by send day, month, or a
lead's send days). When retention has already deleted the start of a partition, rows
older than its first retained record would be recomputed from part of their events:
they are skipped and reported, never written short (after a re-key any partition can
hold events of any other's state, so the latest such start counts for all of them).

Each event is applied to the state of its *home* partition (:mod:`streams.engine`), as
the worker does: after a re-key the topics still hold records of the old key on the
partition that key chose, and their email's state is now elsewhere. So every partition is
read into one engine (its maps spill to disk beyond the memory budget, as the worker's).

``billing_analytics`` months carry their plan from the latest month with plan events at or
before them (its view, :mod:`sluice.olap.catalog`): so for each company the range starts
at that month if it is earlier (every partition's rows of it, so its sums stay whole).

Only the rollup tables are recomputed. The audit log, the sensitive-access record and
the system events are compliance facts written once; backfill never touches them.

Erased leads (docs/erasure.md): the engine is given the erasure registry read before the
run, so an erased lead's events count in every table but ``lead_analytics``, whose rows
it never recreates; a lead erased while the backfill runs is purged after it (the CLI).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sluice.olap.catalog import PLAN_EVENT_COUNTS
from sluice.olap.values import rows_to_json
from streams.engine import SHARD_COLUMN, Engine
from streams.state import sort_key
from topics.catalog import Catalog

#: Tables backfill may rewrite, with the column(s) that place a row in time.
ROLLUP_TABLES: dict[str, tuple[str, ...]] = {
    "campaign_analytics": ("day",),
    "mailbox_analytics": ("day",),
    "sequence_step_analytics": ("day",),
    "warmup_analytics": ("day",),
    "billing_analytics": ("month",),
    "lead_analytics": ("first_sent_day", "last_sent_day"),
}

CHUNK_ROWS = 10_000

Writer = Callable[[str, list[str], list[list]], None]


class BackfillError(Exception):
    """A backfill that cannot run (bad table name, Kafka or ClickHouse unreachable)."""


@dataclass(frozen=True)
class Range:
    """Rows to write: those whose time column falls in ``[start, end]`` (UTC days)."""

    start: date
    end: date | None = None

    @classmethod
    def from_ms(cls, start_ms: int, end_ms: int | None = None) -> Range:
        start = _day(start_ms)
        end = _day(end_ms) if end_ms is not None else None
        if end is not None and end < start:
            raise BackfillError(f"--to ({end}) is before --from ({start})")
        return cls(start, end)

    def holds(self, table: str, row: Mapping[str, Any]) -> bool:
        columns = ROLLUP_TABLES[table]
        if table == "lead_analytics":  # leads with a send in the range
            first, last = (row[c] for c in columns)
            if last is None:
                return False
            return _as_day(last) >= self.start and (self.end is None or _as_day(first) <= self.end)
        value = _as_day(row[columns[0]])
        if table == "billing_analytics":  # the months the range touches
            return value >= self.start.replace(day=1) and (self.end is None or value <= self.end)
        return value >= self.start and (self.end is None or value <= self.end)


@dataclass
class PartitionReport:
    """What backfill did with one partition number (across every event topic)."""

    partition: int
    events: int = 0
    undecodable: int = 0
    #: first day whose rows the retained events fully cover (None: nothing deleted yet)
    complete_from: date | None = None
    written: dict[str, int] = field(default_factory=dict)
    skipped_incomplete: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    partitions: list[PartitionReport] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(p.events for p in self.partitions)

    @property
    def undecodable(self) -> int:
        return sum(p.undecodable for p in self.partitions)

    def written(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.partitions:
            for table, n in p.written.items():
                total[table] = total.get(table, 0) + n
        return total

    def skipped(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.partitions:
            for table, n in p.skipped_incomplete.items():
                total[table] = total.get(table, 0) + n
        return total


def check_tables(names: Iterable[str] | None) -> list[str]:
    """The tables to rewrite (all rollups when none named); unknown names are an error."""
    if not names:
        return list(ROLLUP_TABLES)
    wanted = [n.strip() for name in names for n in name.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ROLLUP_TABLES]
    if unknown:
        raise BackfillError(
            f"cannot backfill {', '.join(unknown)}: choose from {', '.join(ROLLUP_TABLES)}"
            " (the audit log, sensitive access and system events are never recomputed)"
        )
    return list(dict.fromkeys(wanted))


@dataclass(frozen=True)
class Source:
    """One topic-partition to read: ``[low, high)`` at the time backfill started."""

    topic: str
    family: str
    partition: int
    low: int
    high: int


def plan(conf: dict[str, Any], families: Mapping[str, str], timeout: float = 15.0) -> list[Source]:
    """Every non-empty partition of the event topics (``families``: topic -> family)."""
    from sluice.kafka import ranges

    try:
        found = ranges(conf, families, timeout=timeout)
    except Exception as exc:
        raise BackfillError(f"cannot read the event topics: {exc}") from None
    return [Source(r.topic, families[r.topic], r.partition, r.low, r.high) for r in found]


def run(
    conf: dict[str, Any],
    sources: Sequence[Source],
    tables: Sequence[str],
    window: Range,
    write: Writer,
    decode: Callable[[bytes, str], Mapping],
    on_progress: Callable[[int], None] = lambda n: None,
    idle_timeout: float = 30.0,
    engine_factory: Callable[[], Engine] = Engine,
    catalog: Catalog | None = None,
) -> Report:
    """Recompute and write; ``catalog``: apply each event on its home partition (see the
    module docstring; None: where it was read, for topics of one key only)."""
    parts = {p: PartitionReport(p) for p in sorted({s.partition for s in sources})}
    report = Report(list(parts.values()))
    engine = engine_factory()
    try:
        newest_ms, complete_from = _read(
            conf, sources, engine, decode, parts, on_progress, idle_timeout, catalog
        )
        updated = datetime.fromtimestamp(newest_ms / 1000, tz=UTC)
        ckpt = engine.snapshot(now=updated)
        rows = engine.scrub_rows(ckpt.rows)  # never a row of an erased lead
    finally:
        engine.close()  # its disk tier, if any: the rows are in ckpt now
    for part in parts.values():
        part.complete_from = complete_from
    for table in tables:
        columns = engine.columns(table)
        table_rows = rows.get(table, [])
        # a view row combines every shard's row of its key: all of them are written, or
        # none (a lead is in the range if any shard saw a send of it in the range)
        width = len(engine.layouts[table].key_columns)
        since = _carried_from(table, columns, table_rows, window)
        wanted, whole = set(), set()
        for row in table_rows:
            named = dict(zip(columns, row, strict=True))
            if window.holds(table, named) or (
                named["company_id"] in since and since[named["company_id"]] <= named["month"]
            ):
                wanted.add(tuple(row[:width]))
            if _complete(table, named, complete_from):
                whole.add(tuple(row[:width]))
        keep = []
        for row in table_rows:
            key = tuple(row[:width])
            if key not in wanted:
                continue
            shard = row[width] if columns[width] == SHARD_COLUMN else -1
            part = parts.setdefault(shard, PartitionReport(shard))
            if key not in whole:
                part.skipped_incomplete[table] = part.skipped_incomplete.get(table, 0) + 1
                continue
            part.written[table] = part.written.get(table, 0) + 1
            keep.append(row)
        keep.sort(key=lambda r, n=width + 1: sort_key(r[:n]))
        for i in range(0, len(keep), CHUNK_ROWS):
            write(table, columns, keep[i : i + CHUNK_ROWS])
    return report


def _carried_from(
    table: str, columns: list[str], rows: Sequence[list], window: Range
) -> dict[str, date]:
    """Billing: per company, the latest month with plan events before the range, which
    the range's months carry their plan from (see the module docstring)."""
    if table != "billing_analytics":
        return {}
    latest: dict[str, date] = {}
    for row in rows:
        named = dict(zip(columns, row, strict=True))
        month = _as_day(named["month"])
        if month >= window.start.replace(day=1) or not any(named[c] for c in PLAN_EVENT_COUNTS):
            continue
        company = named["company_id"]
        if company not in latest or month > latest[company]:
            latest[company] = month
    if window.end is not None:  # only months up to the end carry into the range
        latest = {c: m for c, m in latest.items() if m <= window.end}
    return latest


def _read(
    conf: dict[str, Any],
    sources: Sequence[Source],
    engine: Engine,
    decode: Callable[[bytes, str], Mapping],
    parts: Mapping[int, PartitionReport],
    on_progress: Callable[[int], None],
    idle_timeout: float,
    catalog: Catalog | None,
) -> tuple[int, date | None]:
    """Apply every record of ``sources`` up to their planned high, each on its home;
    return the newest record timestamp (ms) and the first day whose rows are complete."""
    from avro_schemas.codec import DecodeError
    from sluice.kafka import Range as Offsets
    from sluice.kafka import read_ranges

    families = {s.topic: s.family for s in sources}
    specs = {t: catalog.for_family(f) for t, f in families.items()} if catalog else {}
    deleted = {(s.topic, s.partition) for s in sources if s.low > 0}  # retention removed some
    first_ms: dict[tuple[str, int], int] = {}
    newest = 0
    wanted = [Offsets(s.topic, s.partition, s.low, s.high) for s in sources]
    try:
        for batch in read_ranges(conf, wanted, batch=2000, idle_timeout=idle_timeout):
            for msg in batch:
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                part = parts[partition]
                part.events += 1
                newest = max(newest, msg.timestamp()[1])
                try:
                    event = decode(msg.value() or b"", families[topic])
                except DecodeError:
                    part.undecodable += 1  # a dead letter already; the worker skips it too
                    engine.advance(engine.state(partition), topic, offset)
                    continue
                where = (topic, partition)
                if where in deleted and where not in first_ms:
                    first_ms[where] = int(event["occurred_at"])  # event time, not Kafka's
                spec = specs.get(topic)
                home = spec.home(event, partition, msg.key()) if spec is not None else partition
                engine.apply(partition, topic, offset, families[topic], event, home=home)
            engine.settle()
            on_progress(len(batch))
    except RuntimeError as exc:
        raise BackfillError(str(exc)) from None
    if not first_ms:
        return newest, None
    # rows of the first retained day may miss events deleted that same day
    start = _day(max(first_ms.values()))
    return newest, date.fromordinal(start.toordinal() + 1)


def _complete(table: str, row: Mapping[str, Any], complete_from: date | None) -> bool:
    if complete_from is None:
        return True
    if table == "lead_analytics":  # all-time totals: any deleted event may be the lead's
        return False
    value = _as_day(row[ROLLUP_TABLES[table][0]])
    return value >= complete_from


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def _as_day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def dumps(table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """The body of one POST of recomputed rows to a running worker (:mod:`streams.web`)."""
    return json.dumps(
        {"table": table, "columns": list(columns), "rows": rows_to_json(rows)}
    ).encode()
