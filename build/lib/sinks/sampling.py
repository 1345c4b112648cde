"""Deterministic per-event-type sampling (the spec's "tunable sampling" for PostHog).

The decision hashes the ``event_id``, never a random draw: a redelivered event is kept or
dropped exactly as the first time, and every worker agrees without coordination.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

_SCALE = float(2**64)


def sample_point(event_id: str) -> float:
    """Where an event falls in [0, 1): the same for the same id, on any machine."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def keep(event_id: str, rate: float) -> bool:
    """True if an event is in a sample of ``rate`` (1 keeps all, 0 keeps none)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return sample_point(event_id) < rate


class Sampler:
    """Rates per event type; types not listed are kept in full."""

    def __init__(self, rates: Mapping[str, float] | None = None) -> None:
        self.rates = dict(rates or {})

    def rate(self, event_type: str) -> float:
        return self.rates.get(event_type, 1.0)
