"""A destination that refuses Sluice for good (401/403/407): the sink's states, probes,
``park``, the router's policies and reports, the metrics and the settings — with a
scripted fake transport, no network."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from sinks.base import (
    DESTINATION_REFUSED,
    OK,
    REFUSED,
    RETRYING,
    BatchingSink,
    BatchLimits,
    DestinationRefused,
    Envelope,
    PermanentError,
    RetryPolicy,
    SinkRefused,
    SinkUnavailable,
    TransientError,
    redact,
)
from sinks.http import raise_for_status
from streams.metrics import HealthMetrics
from streams.routing import DEAD_LETTER, PAUSE, Router

KEY = "phc_Zx81kQ2mLw9sT4vB7nR3cY6pD0fH5jA1"  # shaped like a PostHog project key
GRACE, PROBE = 0.2, 0.3
POLICY = RetryPolicy(
    initial_s=0.01, max_s=0.05, jitter=0.0, refused_after_s=GRACE, refused_probe_s=PROBE
)


class Observed:
    """A SinkObserver that records the calls refusals make."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.refusals: list[tuple[str, str]] = []

    def delivered(self, sink: str, count: int) -> None: ...
    def retried(self, sink: str, reason: str) -> None: ...
    def rejected(self, sink: str, reason: str, count: int) -> None: ...
    def skipped(self, sink: str, event_type: str, why: str) -> None: ...
    def flushed(self, sink: str, seconds: float) -> None: ...

    def refused(self, sink: str, reason: str) -> None:
        self.refusals.append((sink, reason))

    def state(self, sink: str, state: str) -> None:
        self.states.append((sink, state))


class Scripted(BatchingSink):
    """A sink whose destination answers ``status`` (an HTTP status) to every request; a
    status of 400 refuses only batches holding a ``poison`` event."""

    def __init__(
        self,
        name: str = "posthog",
        status: int = 200,
        policy: RetryPolicy = POLICY,
        max_events: int = 10,
        observer: Any = None,
    ) -> None:
        super().__init__(
            name,
            BatchLimits(max_events=max_events, linger_s=60, max_in_flight=4, flush_deadline_s=5),
            policy,
            observer,
        )
        self.status = status
        self.requests = 0
        self.delivered: list[int] = []
        self.body = f'{{"detail": "invalid api key {KEY}"}}'

    def prepare(self, envelope: Envelope) -> Any:
        return envelope.offset

    async def send(self, items: list[Any]) -> None:
        self.requests += 1
        await asyncio.sleep(0)
        if self.status == 400 and -1 in items:
            raise_for_status(400, text="bad event")
        raise_for_status(200 if self.status == 400 else self.status, text=self.body)
        self.delivered.extend(items)


def events(n: int, start: int = 0, event_type: str = "email_opened") -> list[Envelope]:
    return [
        Envelope({"event_type": event_type, "event_id": f"e{i}"}, "events.email", 0, i)
        for i in range(start, start + n)
    ]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- statuses ---------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403, 407])
def test_refusing_statuses_are_destination_refused(status):
    with pytest.raises(DestinationRefused) as caught:
        raise_for_status(status, text="nope")
    assert caught.value.status == status and caught.value.reason == f"http_{status}"
    assert isinstance(caught.value, TransientError)  # never a per-event rejection


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_other_retryable_statuses_are_not_refusals(status):
    with pytest.raises(TransientError) as caught:
        raise_for_status(status)
    assert not isinstance(caught.value, DestinationRefused) and caught.value.status == status


def test_redact_removes_credential_shaped_words_only():
    text = f"invalid api key {KEY}, token 3f0c2a9e-8d1b-4c57-9a43-5e2f0c7b9d11 authentication_error"
    out = redact(text)
    assert KEY not in out and "3f0c2a9e" not in out
    assert "invalid api key" in out and "authentication_error" in out
    assert len(redact("x" * 500 + " y")) == 200


# -- the sink's states ---------------------------------------------------------------------------
def test_refusals_are_retried_for_the_grace_then_the_sink_is_refused():
    async def main() -> None:
        seen = Observed()
        sink = Scripted(status=401, observer=seen)
        sink.write(events(25))
        started = time.monotonic()
        with pytest.raises(SinkRefused) as caught:
            await sink.flush()
        # the grace, not the 5 s flush deadline
        assert GRACE <= time.monotonic() - started < 2.0
        assert isinstance(caught.value, SinkUnavailable)  # nothing may be acknowledged
        state = sink.state()
        assert (state.state, state.status, state.reason) == (REFUSED, 401, "http_401")
        assert KEY not in state.detail and "invalid api key" in state.detail
        assert state.refused_requests == sink.requests >= 2
        assert 0 < state.next_probe_in_s <= PROBE and not state.probe_due
        assert sink.buffered() == 25  # nothing lost
        assert seen.states == [("posthog", OK), ("posthog", RETRYING), ("posthog", REFUSED)]
        assert set(seen.refusals) == {("posthog", "http_401")}
        assert len(seen.refusals) == sink.requests

    run(main())


def test_a_refused_sink_fails_its_flush_at_once_without_a_request():
    async def main() -> None:
        sink = Scripted(status=403)
        sink.write(events(25))
        with pytest.raises(SinkRefused):
            await sink.flush()
        asked = sink.requests
        for _ in range(20):
            started = time.monotonic()
            with pytest.raises(SinkRefused, match="http_403"):
                await sink.flush()
            assert time.monotonic() - started < 0.05
        assert sink.requests == asked
        sink.write(events(100, start=25))  # full batches: no background send while refused
        await asyncio.sleep(0.05)
        assert sink.requests == asked and sink.buffered() == 125

    run(main())


def test_a_probe_is_one_batch_once_per_interval_never_retried():
    async def main() -> None:
        sink = Scripted(status=401)
        sink.write(events(40))
        with pytest.raises(SinkRefused):
            await sink.flush()
        asked = sink.requests
        await asyncio.sleep(PROBE)
        assert sink.state().probe_due
        with pytest.raises(SinkRefused):
            await sink.flush()
        assert sink.requests == asked + 1  # one probe, one attempt
        assert sink.state().state == REFUSED and not sink.state().probe_due
        sink.status = 503  # down as well: a probe that fails otherwise keeps it refused
        await asyncio.sleep(PROBE)
        with pytest.raises(SinkRefused):
            await sink.flush()
        assert sink.requests == asked + 2 and sink.state().state == REFUSED
        assert sink.state().reason == "http_503" and sink.buffered() == 40

    run(main())


def test_an_accepted_probe_ends_the_refusal_and_delivers_everything():
    async def main() -> None:
        seen = Observed()
        sink = Scripted(status=401, observer=seen)
        sink.write(events(40))
        with pytest.raises(SinkRefused):
            await sink.flush()
        sink.status = 200  # the operator fixed the key at the destination
        await asyncio.sleep(PROBE)
        assert await sink.flush() == []
        assert sorted(sink.delivered) == list(range(40)) and sink.buffered() == 0
        assert sink.state().state == OK and sink.state().next_probe_in_s is None
        assert seen.states[-1] == ("posthog", OK)
        # and the next refusal gets a fresh grace: retried, not refused at once
        sink.status = 401
        sink.write(events(5, start=40))
        with pytest.raises(SinkUnavailable) as caught:
            sink.limits = BatchLimits(10, 60, 4, flush_deadline_s=GRACE / 4)
            await sink.flush()
        assert not isinstance(caught.value, SinkRefused) and sink.state().state == RETRYING

    run(main())


def test_a_short_refusal_within_the_grace_is_only_retried():
    class Blip(Scripted):
        async def send(self, items: list[Any]) -> None:
            self.status = 401 if self.requests < 2 else 200  # a key being rotated
            await super().send(items)

    async def main() -> None:
        sink = Blip(policy=RetryPolicy(initial_s=0.01, jitter=0.0, refused_after_s=5))
        sink.write(events(5))
        assert await sink.flush() == []
        assert sink.delivered == list(range(5)) and sink.state().state == OK
        assert sink.state().refused_requests == 2

    run(main())


def test_no_grace_means_refused_at_the_first_refusal():
    async def main() -> None:
        sink = Scripted(status=401, policy=RetryPolicy(refused_after_s=0, refused_probe_s=60))
        sink.write(events(5))
        with pytest.raises(SinkRefused):
            await sink.flush()
        assert sink.requests == 1 and sink.state().state == REFUSED

    run(main())


def test_park_hands_over_every_buffered_event_once():
    async def main() -> None:
        sink = Scripted(status=401, policy=RetryPolicy(refused_after_s=0, refused_probe_s=60))
        # a bad event rejected by an earlier flush that failed later: kept, handed over too
        bad = events(1, start=-1)
        sink._reject([(bad[0], None)], PermanentError("http_400", "HTTP 400"))
        sink.write(events(30, start=10))
        with pytest.raises(SinkRefused):
            await sink.flush()
        parked = sink.park()
        assert [(r.envelope.offset, r.reason) for r in parked[:1]] == [(-1, "http_400")]
        assert sorted(r.envelope.offset for r in parked[1:]) == list(range(10, 40))
        assert {(r.sink, r.reason) for r in parked[1:]} == {("posthog", DESTINATION_REFUSED)}
        assert all("http_401" in r.detail and KEY not in r.detail for r in parked[1:])
        assert sink.buffered() == 0 and sink.park() == []

    run(main())


def test_a_permanent_error_on_a_probe_does_not_end_the_refusal():
    class Mixed(Scripted):
        async def send(self, items: list[Any]) -> None:
            self.requests += 1
            raise PermanentError("http_400", "HTTP 400", status=400)

    async def main() -> None:
        sink = Mixed(policy=RetryPolicy(refused_after_s=0, refused_probe_s=PROBE))
        sink._request_failed(DestinationRefused("http_401", "HTTP 401", status=401))
        sink.write(events(4))
        await asyncio.sleep(PROBE)
        with pytest.raises(SinkRefused):
            await sink.flush()  # the probe is judged on its content: bisected, refused on
        assert sink.requests == 1 and sink.state().state == REFUSED

    run(main())


# -- the router's policies -----------------------------------------------------------------------
def routed(ph: Scripted, siem: Scripted, **kw: Any) -> Router:
    return Router({"posthog": [ph], "siem": [siem]}, report_every_s=0.25, **kw)


def traffic(router: Router, n: int, start: int = 0) -> None:
    router.write(events(n, start) + events(n, start + 10_000, "security_login_failed"))


def test_dead_letter_stops_the_route_and_lets_the_others_flow():
    async def main() -> None:
        ph, siem = Scripted(status=401), Scripted("siem.hec")
        router = routed(ph, siem)  # dead_letter is the default
        traffic(router, 30)
        rejected = await router.flush()  # does not raise: the checkpoint goes on
        assert sorted(r.envelope.offset for r in rejected) == list(range(30))
        assert {(r.sink, r.reason) for r in rejected} == {("posthog", DESTINATION_REFUSED)}
        assert sorted(siem.delivered) == list(range(10_000, 10_030))
        assert router.held() == [] and router.buffered() == {"posthog": 0, "siem.hec": 0}
        traffic(router, 20, start=30)  # the next checkpoint: no request, dead-lettered again
        asked = ph.requests
        assert len(await router.flush()) == 20 and ph.requests == asked
        state = router.states()["posthog"]
        assert state["state"] == REFUSED and state["status"] == 401
        assert state["on_refused"] == DEAD_LETTER and state["dead_lettered_while_refused"] == 50
        assert router.states()["siem.hec"]["state"] == OK

    run(main())


def test_pause_holds_the_checkpoint_until_a_probe_is_due():
    async def main() -> None:
        ph, siem = Scripted(status=403), Scripted("siem.hec")
        router = routed(ph, siem, on_refused=PAUSE)
        traffic(router, 30)
        with pytest.raises(SinkUnavailable, match="refused") as caught:
            await router.flush()
        assert KEY not in str(caught.value)  # it reaches the checkpoint-failure log line
        assert router.held() == ["posthog"] and ph.buffered() == 30  # held, not lost
        assert router.states()["posthog"]["on_refused"] == PAUSE
        await asyncio.sleep(PROBE)
        assert router.held() == []  # a probe is due: let one checkpoint through
        ph.status = 200
        assert await router.flush() == []
        assert sorted(ph.delivered) == list(range(30)) and router.held() == []
        assert router.states()["posthog"]["state"] == OK

    run(main())


def test_a_paused_route_without_events_holds_nothing():
    async def main() -> None:
        ph, siem = Scripted(status=401), Scripted("siem.hec")
        router = routed(ph, siem, on_refused=PAUSE)
        traffic(router, 3)
        with pytest.raises(SinkUnavailable):
            await router.flush()
        router.forget({("events.email", 0)})  # its partition moved to another worker
        assert router.held() == []
        assert await router.flush() == []

    run(main())


def test_on_refused_per_sink_overrides_the_default():
    async def main() -> None:
        ph, siem = Scripted(status=401), Scripted("siem.hec", status=401)
        router = routed(ph, siem, on_refused=PAUSE, on_refused_by_sink={"posthog": DEAD_LETTER})
        traffic(router, 10)
        with pytest.raises(SinkUnavailable, match="siem.hec"):
            await router.flush()
        assert router.held() == ["siem.hec"]
        with pytest.raises(SinkUnavailable):
            await router.flush()  # siem.hec still holds it
        # posthog's events came back as dead letters, kept for the next good checkpoint
        assert ph.buffered() == 0 and siem.buffered() == 10

    run(main())


def test_a_policy_outside_the_choices_is_refused():
    with pytest.raises(ValueError, match="on_refused"):
        Router({}, on_refused="drop")
    with pytest.raises(ValueError, match="on_refused"):
        Router({}, on_refused_by_sink={"posthog": "retry"})


def test_a_refused_route_logs_one_line_per_interval_and_one_at_its_end(caplog):
    caplog.set_level(logging.INFO, logger="sluice")

    async def main() -> None:
        ph, siem = Scripted(status=401), Scripted("siem.hec")
        router = routed(ph, siem)
        ended = time.monotonic() + 1.0
        checkpoints = 0
        while time.monotonic() < ended:  # a checkpoint every 20 ms, for 1 s
            traffic(router, 5, start=checkpoints * 5)
            await router.flush()
            router.held()
            checkpoints += 1
            await asyncio.sleep(0.02)
        ph.status = 200
        await asyncio.sleep(PROBE)
        traffic(router, 5, start=10_000)
        await router.flush()
        assert checkpoints > 30

    run(main())
    lines = [r for r in caplog.records if "refuses Sluice" in r.getMessage()]
    # the first line, then one per 0.25 s report interval (not one per checkpoint or request)
    assert 2 <= len(lines) <= 6, [r.getMessage() for r in lines]
    assert all(r.levelno == logging.ERROR for r in lines)
    assert "its destination refuses Sluice" in lines[0].getMessage()
    assert "still refuses" in lines[-1].getMessage()
    assert "http_401" in lines[0].getMessage() and DESTINATION_REFUSED in lines[0].getMessage()
    back = [r for r in caplog.records if "accepts again" in r.getMessage()]
    assert len(back) == 1 and back[0].levelno == logging.WARNING
    assert "sluice dlq replay --reason destination_refused" in back[0].getMessage()
    assert all(KEY not in r.getMessage() for r in caplog.records)
    # no line per request or per batch while refused
    assert not [r for r in caplog.records if "background send failed" in r.getMessage()]


# -- metrics ---------------------------------------------------------------------------------
def test_the_refused_gauge_and_the_refused_requests_counter():
    async def main(health: HealthMetrics) -> None:
        sink = Scripted(status=401, observer=health.observer())
        assert 'sluice_sink_refused{sink="posthog"} 0.0' in health.exposition().decode()
        sink.write(events(5))
        with pytest.raises(SinkRefused):
            await sink.flush()
        text = health.exposition().decode()
        assert 'sluice_sink_refused{sink="posthog"} 1.0' in text
        count = f"{float(sink.requests)}"
        assert (
            f'sluice_sink_refused_requests_total{{reason="http_401",sink="posthog"}} {count}'
            in text
        )
        sink.status = 200
        await asyncio.sleep(PROBE)
        await sink.flush()
        assert 'sluice_sink_refused{sink="posthog"} 0.0' in health.exposition().decode()

    run(main(HealthMetrics()))


# -- settings --------------------------------------------------------------------------------
def test_settings_choose_the_policy_and_check_sink_names(monkeypatch):
    from pydantic import ValidationError

    from sluice.settings import Settings

    s = Settings(_env_file=None)
    assert (s.sink_on_refused, s.sink_on_refused_by_sink) == ("dead_letter", {})
    assert (s.sink_refused_after_s, s.sink_refused_probe_s) == (60.0, 30.0)
    monkeypatch.setenv("SINK_ON_REFUSED", "pause")
    monkeypatch.setenv("SINK_ON_REFUSED_BY_SINK", '{"posthog": "dead_letter"}')
    s = Settings(_env_file=None)
    assert (s.sink_on_refused, s.sink_on_refused_by_sink) == ("pause", {"posthog": "dead_letter"})
    monkeypatch.setenv("SINK_ON_REFUSED_BY_SINK", '{"segment": "pause"}')
    with pytest.raises(ValidationError, match="no such sink"):
        Settings(_env_file=None)
    monkeypatch.setenv("SINK_ON_REFUSED_BY_SINK", "{}")
    monkeypatch.setenv("SINK_ON_REFUSED", "drop")
    with pytest.raises(ValidationError, match="sink_on_refused"):
        Settings(_env_file=None)


def test_the_settings_know_every_sink_the_registry_builds():
    from sinks.registry import build_sinks
    from sluice.settings import SINK_NAMES, Settings

    s = Settings(
        _env_file=None,
        posthog_api_key="phc_x",
        otel_exporter_otlp_endpoint="http://127.0.0.1:29999",
        siem_syslog_address="127.0.0.1:29998",
        siem_hec_url="http://127.0.0.1:29997/services/collector/event",
        sink_refused_after_s=7,
        sink_refused_probe_s=11,
    )
    sinks = [sink for group in build_sinks(s).values() for sink in group]
    assert {sink.name for sink in sinks} == SINK_NAMES
    assert {(sink.policy.refused_after_s, sink.policy.refused_probe_s) for sink in sinks} == {
        (7, 11)
    }
