"""PostHog, HEC and OTLP sinks against a local receiver answering 401 or 403 (no broker):
refused after the grace, no request between probes, every event handed over or delivered,
delivery resumes without a restart once the receiver accepts again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from sinks.base import (
    DESTINATION_REFUSED,
    OK,
    REFUSED,
    BatchingSink,
    RetryPolicy,
    SinkRefused,
    SinkUnavailable,
)
from sinks.observability import ObservabilitySink
from sinks.siem import HecSink
from streams.metrics import HealthMetrics
from streams.routing import Router
from tests._receivers import Fault, HttpReceiver
from tests.integration.test_sinks import (
    email_events,
    envelope,
    infra_events,
    limits,
    posthog_sink,
    security_events,
)

GRACE, PROBE = 0.3, 1.5  # a probe interval a loaded CI machine does not reach by chance
POLICY = RetryPolicy(
    initial_s=0.05, max_s=0.2, jitter=0.0, refused_after_s=GRACE, refused_probe_s=PROBE
)


def _posthog(rx: HttpReceiver, observer: Any) -> BatchingSink:
    sink = posthog_sink(rx, observer=observer)
    sink.policy = POLICY
    return sink


def _hec(rx: HttpReceiver, observer: Any) -> BatchingSink:
    return HecSink(
        f"{rx.url}/services/collector/event",
        "tok",
        timeout_s=1.0,
        limits=limits(100),
        policy=POLICY,
        observer=observer,
    )


def _otlp(rx: HttpReceiver, observer: Any) -> BatchingSink:
    return ObservabilitySink(
        f"{rx.url}/v1/metrics",
        timeout_s=1.0,
        limits=limits(10_000),
        policy=POLICY,
        observer=observer,
    )


SINKS: dict[str, tuple[Callable[[HttpReceiver, Any], BatchingSink], Callable[[], list]]] = {
    "posthog": (_posthog, lambda: email_events(450)),
    "siem.hec": (_hec, lambda: security_events(450)),
    "observability": (_otlp, infra_events),
}


def delivered(rx: HttpReceiver, name: str) -> set[str]:
    if name == "posthog":
        return set(rx.posthog_uuids())
    if name == "siem.hec":
        return set(rx.hec_ids())
    return {"export"} if rx.accepted["/v1/metrics"] else set()


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("name", sorted(SINKS))
def test_a_refusing_destination_is_probed_then_resumes(name, status):
    build, workload = SINKS[name]
    records = workload()
    health = HealthMetrics()

    async def main(rx: HttpReceiver) -> None:
        sink = build(rx, health.observer())
        rx.faults = [Fault(status)] * 10_000
        half = len(records) // 2
        sink.write([envelope(r, i) for i, r in enumerate(records[:half])])
        started = time.monotonic()
        with pytest.raises(SinkRefused):
            await sink.flush()
        assert time.monotonic() - started < 5  # the grace, not the 20 s flush deadline
        state = sink.state()
        assert (state.state, state.status, state.reason) == (REFUSED, status, f"http_{status}")
        text = health.exposition().decode()
        assert f'sluice_sink_refused{{sink="{name}"}} 1.0' in text
        assert f'sluice_sink_refused_requests_total{{reason="http_{status}",sink="{name}"}}' in text

        # refused: flushes fail at once and send nothing until a probe is due
        asked = sum(rx.requests.values())
        for _ in range(5):
            with pytest.raises(SinkRefused):
                await sink.flush()
        assert sum(rx.requests.values()) == asked

        # the route dead-letters: everything buffered is handed over, once
        parked = sink.park()
        assert {r.reason for r in parked} == {DESTINATION_REFUSED} and sink.buffered() == 0
        if name != "observability":  # an aggregate sink's events are in its export anyway
            assert len(parked) == half

        # the key is fixed at the destination: the next probe is accepted, no restart
        rx.faults = []
        sink.write([envelope(r, half + i) for i, r in enumerate(records[half:])])
        await asyncio.sleep(PROBE)
        assert await sink.flush() == []
        assert sink.state().state == OK and sink.buffered() == 0
        assert f'sluice_sink_refused{{sink="{name}"}} 0.0' in health.exposition().decode()
        await sink.close()

    with HttpReceiver() as rx:
        asyncio.run(main(rx))
        got = delivered(rx, name)
        refused = rx.statuses[status]
    if name == "observability":
        assert got == {"export"}
    else:  # the second half went through; the first half is on the DLQ for a replay
        ids = [r["event_id"] for r in records]
        assert got == set(ids[len(ids) // 2 :])
    assert 2 <= refused <= 12  # a few retries in the grace and one probe: never a hot loop


def test_pause_keeps_every_event_for_the_probe_that_gets_through():
    records = email_events(300)

    async def main(rx: HttpReceiver) -> None:
        sink = _posthog(rx, None)
        router = Router({"posthog": [sink]}, on_refused="pause")
        rx.faults = [Fault(401)] * 10_000
        router.write([envelope(r, i) for i, r in enumerate(records)])
        with pytest.raises(SinkUnavailable):  # nothing may be acknowledged
            await router.flush()
        assert router.held() == ["posthog"] and sink.buffered() == 300
        rx.faults = []
        await asyncio.sleep(PROBE)
        assert router.held() == []
        assert await router.flush() == []
        await router.close()

    with HttpReceiver() as rx:
        asyncio.run(main(rx))
        got = rx.posthog_uuids()
    assert sorted(got) == sorted(r["event_id"] for r in records)
