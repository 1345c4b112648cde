"""The Router: fan-out by the routing table, flush of every sink, rejects kept until durable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sinks.base import OK, Envelope, Rejected, Sink, SinkState, SinkUnavailable
from streams.routing import Router


class Recording:
    """A Sink test double: remembers what it got; can fail or reject on flush."""

    def __init__(self, name: str, fail: bool = False, reject: bool = False) -> None:
        self.name, self.fail, self.reject = name, fail, reject
        self.buffer: list[Envelope] = []
        self.flushed: list[Envelope] = []

    async def start(self) -> None: ...
    def write(self, batch: Any) -> None:
        self.buffer.extend(batch)

    async def flush(self) -> list[Rejected]:
        if self.fail:
            raise SinkUnavailable(f"{self.name} down")
        out = [Rejected(e, self.name, "http_400", "") for e in self.buffer] if self.reject else []
        self.flushed += self.buffer
        self.buffer = []
        return out

    async def close(self) -> None: ...
    def forget(self, tps: set[tuple[str, int]]) -> None:
        self.buffer = [e for e in self.buffer if (e.topic, e.partition) not in tps]

    def buffered(self) -> int:
        return len(self.buffer)

    def unsent(self) -> int:
        return len(self.buffer)  # a double with no open batch

    def state(self) -> SinkState:
        return SinkState(OK, 0.0)

    def park(self) -> list[Rejected]:
        return []


def env(event_type: str, partition: int = 0, **fields: Any) -> Envelope:
    return Envelope({"event_type": event_type, "event_id": event_type, **fields}, "t", partition, 0)


def test_recording_double_satisfies_the_protocol():
    assert isinstance(Recording("x"), Sink)


def test_events_go_to_the_sinks_of_their_route_only():
    ph, obs, siem = Recording("posthog"), Recording("observability"), Recording("siem.hec")
    routed: dict[str, int] = {}
    router = Router(
        {"posthog": [ph], "observability": [obs], "siem": [siem]},
        on_routed=lambda s, n: routed.__setitem__(s, routed.get(s, 0) + n),
    )
    router.write(
        [
            env("email_opened"),
            env("infra_latency"),
            env("security_login_failed"),
            env("warmup_email_sent"),
            env("admin_role_changed"),
        ]
    )
    router.add(env("admin_ui_viewed"))
    assert [e.record["event_type"] for e in ph.buffer] == ["email_opened", "admin_ui_viewed"]
    assert [e.record["event_type"] for e in obs.buffer] == ["infra_latency"]
    assert [e.record["event_type"] for e in siem.buffer] == [
        "security_login_failed",
        "admin_role_changed",
    ]
    assert routed == {"posthog": 2, "observability": 1, "siem.hec": 2}


def test_a_destination_without_a_sink_is_counted_not_failed():
    router = Router({})
    router.write([env("email_opened"), env("security_login_failed")])
    assert router.unconfigured == {"posthog": 1, "siem": 1}
    assert asyncio.run(router.flush()) == []


def test_unrouted_records_count_as_their_envelopes_would():
    """The worker with no sink at all hands records, not envelopes: the same counts."""
    types = ["email_opened", "security_login_failed", "admin_role_changed", "infra_latency"]
    by_envelope, by_record = Router({}), Router({})
    envelopes = [env(t) for t in types * 3]
    by_envelope.write(envelopes)
    by_record.unrouted(e.record for e in envelopes)
    assert by_record.unconfigured == by_envelope.unconfigured
    assert by_record.unconfigured == {"posthog": 3, "siem": 6, "observability": 3}


def test_unknown_destination_names_are_refused():
    with pytest.raises(ValueError):
        Router({"audit_log": [Recording("x")]})


def test_one_failing_sink_fails_the_flush_and_rejects_survive_until_success():
    good, bad = Recording("siem.hec", reject=True), Recording("siem.syslog", fail=True)
    router = Router({"siem": [good, bad]})
    router.write([env("security_login_failed")])

    async def main() -> list[Rejected]:
        with pytest.raises(SinkUnavailable):
            await router.flush()
        bad.fail = False
        return await router.flush()

    rejected = asyncio.run(main())
    assert [(r.sink, r.envelope.record["event_type"]) for r in rejected] == [
        ("siem.hec", "security_login_failed")
    ]


def test_restore_rejected_and_forget():
    ph = Recording("posthog")
    router = Router({"posthog": [ph]})
    router.write([env("email_opened", partition=0), env("email_opened", partition=1)])
    router.restore_rejected([Rejected(env("email_opened", partition=1), "posthog", "http_400", "")])
    router.forget({("t", 1)})
    assert [e.partition for e in ph.buffer] == [0]
    assert asyncio.run(router.flush()) == []


class _Refused(Recording):
    def state(self) -> SinkState:
        from sinks.base import REFUSED

        return SinkState(REFUSED, 0.0)


def test_backlogged_names_a_sending_sink_over_the_limit_never_a_refused_one():
    ph, hec = Recording("posthog"), _Refused("siem.hec")
    router = Router({"posthog": [ph], "siem": [hec]})
    ph.buffer = [env("email_sent")] * 5
    hec.buffer = [env("admin_login")] * 50
    assert router.backlogged(5) is None  # at the limit is not over it
    assert router.backlogged(4) == "posthog"
    ph.buffer = []
    assert router.backlogged(4) is None  # refused: its events wait for the checkpoint


def test_the_reader_waits_for_a_sink_over_its_limit_and_checkpoints_meanwhile(monkeypatch):
    """Worker._sinks_catch_up: no return while the sink is behind; checkpoints on time."""
    import types

    from streams import worker as worker_mod

    monkeypatch.setattr(worker_mod.seam, "still_consuming", lambda consumer: None)
    ph = Recording("posthog")
    ph.buffer = [env("email_sent")] * 10
    started: list[float] = []
    fake = types.SimpleNamespace(
        settings=types.SimpleNamespace(sink_max_buffered=3),
        router=Router({"posthog": [ph]}),
        draining=False,
        last_checkpoint=0.0,
        stats={"sink_waits": 0},
        app=types.SimpleNamespace(consumer=None),
        _next_wait_log=0.0,
    )

    def start_checkpoint() -> None:
        started.append(1.0)
        fake.last_checkpoint = float("inf")  # one per interval

    fake._start_checkpoint = start_checkpoint

    async def scenario() -> tuple[bool, bool]:
        waiting = asyncio.ensure_future(worker_mod.Worker._sinks_catch_up(fake, 0.0))
        await asyncio.sleep(0.1)
        still_waiting = not waiting.done()
        ph.buffer = ph.buffer[:3]  # the background sends caught up
        await asyncio.wait_for(waiting, 5)
        return still_waiting, waiting.done()

    still_waiting, returned = asyncio.run(scenario())
    assert still_waiting and returned
    assert fake.stats["sink_waits"] == 1
    assert started, "a checkpoint must start while the reader waits"

    # a drain (shutdown, rebalance) ends the wait at once
    ph.buffer = [env("email_sent")] * 10
    fake.draining = True
    asyncio.run(asyncio.wait_for(worker_mod.Worker._sinks_catch_up(fake, 60.0), 5))
