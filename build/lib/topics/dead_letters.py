"""The dead-letter topic's record format.

Delivery guarantee: a dead letter is produced (acks=all) and the producer flushed before
the source event is acknowledged, so a record is either processed, dead-lettered, or
redelivered — never dropped. Idempotency key: the source coordinates (topic, partition,
offset) in the headers; a replay may dead-letter the same source record twice, and
readers deduplicate on those coordinates. Limits: the value is the raw source bytes,
unchanged (up to the topic's ``max.message.bytes``, 16 MiB).

Headers (all UTF-8 strings):
``sluice.reason`` a stable code (``bad_magic``, ``unknown_schema``, ``malformed_avro``,
``invalid_event``, ``unknown_event_type``, ...), ``sluice.error`` the human detail,
``sluice.stage`` where it failed (``decode``, or a sink name), ``sluice.source.topic``,
``sluice.source.partition``, ``sluice.source.offset``, ``sluice.failed_at`` (epoch ms).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

HEADER_PREFIX = "sluice."


def dead_letter_headers(
    *, reason: str, detail: str, topic: str, partition: int, offset: int, stage: str
) -> list[tuple[str, bytes]]:
    """Build the headers of one dead letter."""
    fields = {
        "reason": reason,
        "error": detail[:2000],
        "stage": stage,
        "source.topic": topic,
        "source.partition": str(partition),
        "source.offset": str(offset),
        "failed_at": str(int(time.time() * 1000)),
    }
    return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]


def parse_headers(
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> dict[str, str]:
    """Read a dead letter's ``sluice.*`` headers back into a dict (prefix removed)."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    return {
        k[len(HEADER_PREFIX) :]: (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in items
        if k.startswith(HEADER_PREFIX)
    }
