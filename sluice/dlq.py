"""Reading and replaying the dead-letter topic (``sluice dlq list`` / ``sluice dlq replay``).

Replay re-produces a dead letter's raw bytes, unchanged and with its original key, to
its source topic (header ``sluice.source.topic``) — only for records that decode now
(after a fix: a schema added, a producer bug understood). The worker treats a replayed
event like a redelivery: state merges are idempotent and every sink has an idempotency
key (docs/sinks.md), so replaying the same dead letter twice changes no count. Within one
run, dead letters with the same source coordinates are replayed once.

The decisions (:func:`plan_replay`, :func:`summarize`) are pure functions; Kafka I/O is
in :func:`read_dead_letters` and :func:`replay`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from topics.dead_letters import parse_headers

REPLAYED = "replayed"
WOULD_REPLAY = "would_replay"
STILL_FAILING = "still_failing"
DUPLICATE = "duplicate"
NO_SOURCE = "no_source_topic"
FILTERED = "filtered_out"
ERASED_LEAD = "erased_lead"  # an event of an erased lead: never produced again


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return self.headers.get("reason", "unknown")

    @property
    def stage(self) -> str:
        return self.headers.get("stage", "unknown")

    @property
    def source_topic(self) -> str | None:
        return self.headers.get("source.topic")

    @property
    def source(self) -> tuple[str | None, str | None, str | None]:
        h = self.headers
        return (h.get("source.topic"), h.get("source.partition"), h.get("source.offset"))

    @property
    def failed_at(self) -> int | None:
        value = self.headers.get("failed_at", "")
        return int(value) if value.isdigit() else None


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Epoch ms from ISO-8601 (naive = UTC), epoch ms, or an age like ``30m``/``2h``/``7d``.

    Raises ValueError with a readable message otherwise.
    """
    text = text.strip()
    match = re.fullmatch(r"(\d+)\s*([smhd])", text)
    if match:
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        now = now_ms if now_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
        return now - seconds * 1000
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time (use ISO-8601, epoch ms, or an age like 2h or 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def summarize(letters: Iterable[DeadLetter]) -> list[dict[str, Any]]:
    """Dead letters counted by (reason, stage, source topic), most frequent first."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for letter in letters:
        key = (letter.reason, letter.stage, letter.source_topic or "-")
        g = groups.setdefault(
            key,
            {
                "reason": key[0],
                "stage": key[1],
                "source_topic": key[2],
                "count": 0,
                "first_failed_at": None,
                "last_failed_at": None,
            },
        )
        g["count"] += 1
        at = letter.failed_at
        if at is not None:
            g["first_failed_at"] = (
                at if g["first_failed_at"] is None else min(g["first_failed_at"], at)
            )
            g["last_failed_at"] = (
                at if g["last_failed_at"] is None else max(g["last_failed_at"], at)
            )
    return sorted(groups.values(), key=lambda g: (-g["count"], g["reason"], g["stage"]))


def plan_replay(
    letters: Iterable[DeadLetter],
    decodes: Callable[[bytes, str], str | None],
    family_of_topic: Callable[[str], str | None],
    *,
    reason: str | None = None,
    since_ms: int | None = None,
    erased: Callable[[bytes, str], bool] | None = None,
) -> Iterator[tuple[DeadLetter, str]]:
    """Decide each dead letter's outcome.

    ``decodes(value, family)`` returns None when the bytes decode now, else the reason
    they still fail; ``erased(value, family)`` whether bytes that decode are an event of
    an erased lead (docs/erasure.md). Outcomes: ``would_replay``,
    ``still_failing:<reason>``, ``erased_lead`` (never produced again: the worker would
    not count it, but PostHog must not get it either), ``duplicate`` (same source
    coordinates seen earlier in this run), ``no_source_topic`` (header missing or not an
    event topic of this deployment), ``filtered_out`` (``--reason`` / ``--since``).
    """
    seen: set[tuple[str | None, str | None, str | None]] = set()
    for letter in letters:
        if reason is not None and letter.reason != reason:
            yield letter, FILTERED
            continue
        if since_ms is not None and (letter.failed_at is None or letter.failed_at < since_ms):
            yield letter, FILTERED
            continue
        topic = letter.source_topic
        family = family_of_topic(topic) if topic else None
        if family is None:
            yield letter, NO_SOURCE
            continue
        if None not in letter.source and letter.source in seen:
            yield letter, DUPLICATE
            continue
        problem = decodes(letter.value, family)
        if problem is not None:
            yield letter, f"{STILL_FAILING}:{problem}"
            continue
        if erased is not None and erased(letter.value, family):
            yield letter, ERASED_LEAD
            continue
        seen.add(letter.source)
        yield letter, WOULD_REPLAY


def read_dead_letters(conf: dict[str, Any], topic: str, timeout: float = 15.0) -> list[DeadLetter]:
    """Every record of ``topic`` up to its current end (no consumer group, nothing committed).

    ``conf`` is a confluent-kafka client configuration (:func:`sluice.kafka.kafka_config`).
    Raises RuntimeError when the topic is missing or Kafka does not answer.
    """
    from sluice.kafka import ranges, read_ranges

    letters: list[DeadLetter] = []
    wanted = ranges(conf, [topic], timeout=timeout, missing_ok=False)
    for batch in read_ranges(conf, wanted, idle_timeout=timeout):
        for msg in batch:
            letters.append(
                DeadLetter(
                    int(msg.partition() or 0),
                    int(msg.offset() or 0),
                    msg.key(),
                    msg.value() or b"",
                    parse_headers(msg.headers()),  # type: ignore[arg-type]
                )
            )
    return letters


def replay(conf: dict[str, Any], letters: Iterable[DeadLetter], timeout: float = 60.0) -> int:
    """Produce each dead letter's raw bytes and key to its source topic; return how many."""
    from confluent_kafka import Producer

    failures: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    producer = Producer(
        {**conf, "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"}
    )
    count = 0
    for letter in letters:
        partition = letter.headers.get("source.partition", "")
        # the partition it came from: the worker state that owns it (-1: partitioner)
        producer.produce(
            str(letter.source_topic),
            partition=int(partition) if partition.isdigit() else -1,
            key=letter.key,
            value=letter.value,
            headers=[("sluice.replayed_from", f"{letter.partition}:{letter.offset}".encode())],
            on_delivery=on_delivery,
        )
        count += 1
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise RuntimeError(
            f"{remaining + len(failures)} of {count} replayed record(s) not acknowledged"
            + (f": {failures[0]}" if failures else "")
        )
    return count
