"""Deterministic sampling (sinks.sampling)."""

from __future__ import annotations

import subprocess
import sys
import uuid

from sinks.sampling import Sampler, keep, sample_point


def test_sampling_is_deterministic_per_event_id():
    ids = [str(uuid.UUID(int=i)) for i in range(2000)]
    first = [keep(i, 0.3) for i in ids]
    assert first == [keep(i, 0.3) for i in ids]


def test_sampling_is_the_same_in_another_process():
    ids = [f"evt-{i}" for i in range(50)]
    code = (
        "from sinks.sampling import keep; "
        "print(''.join('1' if keep(f'evt-{i}', 0.5) else '0' for i in range(50)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "".join("1" if keep(i, 0.5) else "0" for i in ids)


def test_sampling_rate_is_respected_and_nested():
    ids = [str(uuid.uuid4()) for _ in range(20_000)]
    kept_10 = {i for i in ids if keep(i, 0.1)}
    kept_50 = {i for i in ids if keep(i, 0.5)}
    assert 0.08 < len(kept_10) / len(ids) < 0.12
    assert 0.47 < len(kept_50) / len(ids) < 0.53
    assert kept_10 <= kept_50  # raising a rate only adds events


def test_bounds_and_defaults():
    assert keep("x", 1.0) and not keep("x", 0.0)
    assert 0.0 <= sample_point("x") < 1.0
    sampler = Sampler({"admin_session_keepalive": 0.1})
    assert sampler.rate("admin_session_keepalive") == 0.1
    assert sampler.rate("email_opened") == 1.0
