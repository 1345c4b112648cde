"""A stalled worker fails its test fast, with the worker's last log lines (not after the
test's whole budget): the harness every integration and fault test waits with."""

from __future__ import annotations

import signal

import pytest

from dev.workload import email_workload

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_a_frozen_worker_is_reported_as_stalled_with_its_log(deployment):
    dep = deployment
    dep.prepare()
    dep.start_worker()
    dep.produce(email_workload(emails=20, days=2, seed=3).events)
    dep.wait_drained()
    dep.worker.send_signal(signal.SIGSTOP)  # frozen: alive, committing nothing
    try:
        dep.produce(email_workload(emails=20, days=2, seed=4).events)
        with pytest.raises(AssertionError) as info:
            dep.wait_drained(timeout=200, stall_s=4)
        message = str(info.value)
        assert message.startswith("worker stalled: nothing committed for 4s")
        assert "checkpoint" in message  # the worker's own log lines follow
    finally:
        dep.worker.send_signal(signal.SIGCONT)
    dep.wait_drained()
