"""Which rows `sluice backfill` rewrites, and the JSON round trip of rows sent to a worker."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from sluice.olap.values import rows_from_json, rows_to_json
from streams.backfill import (
    ROLLUP_TABLES,
    BackfillError,
    Range,
    _complete,
    check_tables,
)

MS = int(datetime(2026, 11, 10, 15, tzinfo=UTC).timestamp() * 1000)


def test_range_selects_rows_by_their_time_column():
    window = Range.from_ms(MS, MS + 2 * 86_400_000)  # Nov 10 .. Nov 12
    assert window.start == date(2026, 11, 10) and window.end == date(2026, 11, 12)
    assert window.holds("campaign_analytics", {"day": date(2026, 11, 10)})
    assert window.holds("mailbox_analytics", {"day": date(2026, 11, 12)})
    assert not window.holds("warmup_analytics", {"day": date(2026, 11, 9)})
    assert not window.holds("sequence_step_analytics", {"day": date(2026, 11, 13)})
    # a month row is rewritten when the range touches the month
    assert window.holds("billing_analytics", {"month": date(2026, 11, 1)})
    assert not window.holds("billing_analytics", {"month": date(2026, 10, 1)})
    # a lead is rewritten when one of its sends falls in the range
    lead = {"first_sent_day": date(2026, 11, 1), "last_sent_day": date(2026, 11, 11)}
    assert window.holds("lead_analytics", lead)
    assert not window.holds("lead_analytics", {**lead, "last_sent_day": date(2026, 11, 5)})
    assert not window.holds("lead_analytics", {"first_sent_day": None, "last_sent_day": None})
    open_ended = Range.from_ms(MS)
    assert open_ended.holds("campaign_analytics", {"day": date(2099, 1, 1)})


def test_range_refuses_an_end_before_its_start():
    with pytest.raises(BackfillError, match="before"):
        Range.from_ms(MS, MS - 2 * 86_400_000)


def test_rows_older_than_the_retained_history_are_never_written_short():
    cut = date(2026, 11, 10)
    assert _complete("campaign_analytics", {"day": date(2026, 11, 10)}, cut)
    assert not _complete("campaign_analytics", {"day": date(2026, 11, 9)}, cut)
    assert not _complete("lead_analytics", {"last_sent_day": date(2026, 11, 20)}, cut)
    assert _complete("lead_analytics", {"last_sent_day": date(2026, 11, 20)}, None)


def test_table_names_are_checked():
    assert check_tables(None) == list(ROLLUP_TABLES)
    assert check_tables(["campaign_analytics,lead_analytics", "campaign_analytics"]) == [
        "campaign_analytics",
        "lead_analytics",
    ]
    with pytest.raises(BackfillError, match="admin_audit_log"):
        check_tables(["admin_audit_log"])


def test_rows_survive_the_json_trip_to_a_worker():
    rows = [
        [
            "acme",
            date(2026, 11, 10),
            None,
            3,
            ["cmp-1", "cmp-2"],  # a shard's set behind a distinct count
            datetime(2026, 11, 11, 1, 2, 3, tzinfo=UTC),
        ]
    ]
    types = ["String", "Date", "Nullable(Date)", "UInt64", "Array(String)", "DateTime64(3, 'UTC')"]
    assert rows_from_json(types, rows_to_json(rows)) == rows
    assert rows_to_json([[("a", "b")]]) == [[["a", "b"]]]  # chDB returns arrays as tuples
    with pytest.raises(ValueError, match="values"):
        rows_from_json(types, [["acme"]])
