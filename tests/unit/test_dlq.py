"""Dead-letter summaries and replay decisions (pure, no broker)."""

from __future__ import annotations

import pytest

from sluice.dlq import DeadLetter, parse_time, plan_replay, summarize


def letter(
    offset, reason="bad_magic", stage="decode", topic="events.email", src=None, at=1000, value=b"x"
):
    headers = {"reason": reason, "stage": stage, "failed_at": str(at)}
    if topic is not None:
        headers.update(
            {"source.topic": topic, "source.partition": "0", "source.offset": str(src or offset)}
        )
    return DeadLetter(0, offset, b"acme", value, headers)


def test_summarize_groups_and_orders():
    groups = summarize(
        [letter(1), letter(2, at=500), letter(3, reason="http_400", stage="posthog", at=2000)]
    )
    assert groups[0] == {
        "reason": "bad_magic",
        "stage": "decode",
        "source_topic": "events.email",
        "count": 2,
        "first_failed_at": 500,
        "last_failed_at": 1000,
    }
    assert groups[1]["stage"] == "posthog" and groups[1]["count"] == 1


def test_plan_replay_outcomes():
    letters = [
        letter(1, value=b"good"),
        letter(2, src=1, value=b"good"),  # same source coordinates: once per run
        letter(3, value=b"bad"),
        letter(4, topic=None),
        letter(5, topic="other.topic"),
        letter(6, reason="http_400", value=b"good"),
        letter(7, at=10, value=b"good"),
    ]
    decodes = lambda value, family: None if value == b"good" else "bad_magic"  # noqa: E731
    families = {"events.email": "email"}.get
    plan = dict(
        (lt.offset, outcome)
        for lt, outcome in plan_replay(letters, decodes, families, reason="bad_magic", since_ms=100)
    )
    assert plan == {
        1: "would_replay",
        2: "duplicate",
        3: "still_failing:bad_magic",
        4: "no_source_topic",
        5: "no_source_topic",
        6: "filtered_out",
        7: "filtered_out",
    }


def test_parse_time():
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2026-11-01T00:00:00Z") == parse_time("2026-11-01T00:00:00")
    assert parse_time("2h", now_ms=10_000_000) == 10_000_000 - 7_200_000
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish")
