"""The real worker while PostHog answers 401/403 (a revoked key), under both policies.

``dead_letter`` (the default): the rollups keep flowing and every offset is committed,
PostHog's events land on ``events.dlq`` (reason ``destination_refused``), status and
metrics show the refused sink; once the receiver accepts again the probe resumes the
route without a restart and ``sluice dlq replay`` delivers the parked events, with
nothing lost and no count changed. ``pause``: nothing is committed and no row written
while PostHog refuses, without a busy loop; once it accepts, everything is delivered and
nothing was dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from typing import Any

import pytest

from dev.workload import email_workload
from streams.routing import POSTHOG, sink_targets
from tests._receivers import Fault, HttpReceiver
from tests.integration.test_campaign_analytics import olap_rows, reference_rows
from tests.integration.test_routing_e2e import RoutedDeployment, read_dlq

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

KEY = "phc_Revoked7Key0000000000000000000000000000"


def deployment(kafka_bootstrap: str, root: Any, rx: HttpReceiver, **extra: str) -> RoutedDeployment:
    return RoutedDeployment(
        kafka_bootstrap,
        root,
        sink_env={
            "POSTHOG_API_KEY": KEY,
            "POSTHOG_HOST": rx.url,
            "SINK_TIMEOUT_S": "2",
            "SINK_RETRY_INITIAL_S": "0.05",
            "SINK_RETRY_MAX_S": "0.5",
            "SINK_FLUSH_DEADLINE_S": "5",
            "SINK_REFUSED_AFTER_S": "1",
            "SINK_REFUSED_PROBE_S": "2",
            **extra,
        },
    )


def get(dep: RoutedDeployment, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{dep.web_port}{path}", timeout=10) as r:
        return r.read().decode()


def posthog_state(dep: RoutedDeployment) -> dict[str, Any]:
    return json.loads(get(dep, "/sluice/status/"))["sinks"]["states"][POSTHOG]


def wait_for(what: str, check: Any, dep: RoutedDeployment, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dep.worker is not None and dep.worker.poll() is not None:
            raise AssertionError(f"worker exited {dep.worker.returncode}:\n{dep.log_tail()}")
        try:
            value = check()
        except OSError:  # the worker's web server is not up yet
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{dep.log_tail()}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_dead_letter_keeps_the_rollups_flowing_and_loses_nothing(
    kafka_bootstrap, reference_olap, tmp_path
):
    first = email_workload(emails=300, days=2, seed=3)
    later = email_workload(emails=60, days=2, seed=4, tenants=("initech",))
    for_posthog = [e for e in first.events if POSTHOG in sink_targets(e)]
    all_ids = {e["event_id"] for e in first.events + later.events if POSTHOG in sink_targets(e)}

    with HttpReceiver() as rx:
        rx.faults = [Fault(401)] * 1_000_000  # the project key was revoked
        dep = deployment(kafka_bootstrap, tmp_path, rx)
        dep.prepare()
        dep.produce(first.events)
        dep.start_worker()
        try:
            # every offset committed although PostHog refuses everything: the route is
            # dead-lettered, and the rollups are exact
            dep.wait_drained()
            assert olap_rows(dep) == reference_rows(reference_olap, first.facts)
            state = posthog_state(dep)
            assert (state["state"], state["status"], state["on_refused"]) == (
                "refused",
                401,
                "dead_letter",
            )
            assert state["dead_lettered_while_refused"] == len(for_posthog)
            assert KEY not in json.dumps(state)
            metrics = get(dep, "/metrics")
            assert 'sluice_sink_refused{sink="posthog"} 1.0' in metrics
            assert 'sluice_sink_refused_requests_total{reason="http_401",sink="posthog"}' in metrics
            assert (
                f'sluice_dead_letters_total{{reason="destination_refused",stage="posthog"}} '
                f"{float(len(for_posthog))}" in metrics
            )
            assert rx.posthog_uuids() == []
            letters = read_dlq(kafka_bootstrap, f"{dep.prefix}events.dlq", len(for_posthog))
            assert len(letters) == len(for_posthog)
            assert {(d["stage"], d["reason"]) for d in letters} == {
                ("posthog", "destination_refused")
            }
            coordinates = {
                (d["source.topic"], d["source.partition"], d["source.offset"]) for d in letters
            }
            assert len(coordinates) == len(letters)  # each event once
            refused_requests = rx.statuses[401]

            # the key is fixed at PostHog: the next probe (the oldest batch of new events)
            # ends the refusal, no restart
            rx.faults = []
            # events that come before a probe is due are dead-lettered like the others (a
            # refused sink asks once per SINK_REFUSED_PROBE_S, with a real batch): produce
            # once it is due, or the test would race the probe interval
            wait_for(
                "the next probe to be due",
                lambda: posthog_state(dep)["next_probe_in_s"] == 0,
                dep,
            )
            dep.produce(later.events)
            wait_for("posthog to accept again", lambda: posthog_state(dep)["state"] == "ok", dep)
            dep.wait_drained()
            assert set(rx.posthog_uuids()) == {
                e["event_id"] for e in later.events if POSTHOG in sink_targets(e)
            }

            # and the parked events are replayed: each delivered, no count changed
            out = json.loads(
                dep.run(
                    "dlq", "replay", "--reason", "destination_refused", "--format", "json"
                ).stdout
            )
            assert out["outcomes"]["replayed"] == len(for_posthog)
            dep.wait_drained()
            wait_for(
                "the replayed events at PostHog", lambda: set(rx.posthog_uuids()) >= all_ids, dep
            )
            assert set(rx.posthog_uuids()) == all_ids
            assert olap_rows(dep) == reference_rows(reference_olap, first.facts + later.facts)
            assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
        finally:
            dep.close()

    log = dep.log_tail(100_000)
    assert KEY not in log
    reports = [line for line in log.splitlines() if "refuses Sluice" in line]
    # one line when it began, then one per minute at most: not one per request or batch
    assert 1 <= len(reports) <= 3, reports
    assert "route dead-lettered" in reports[0]
    assert sum("accepts again" in line for line in log.splitlines()) == 1
    assert "dead letter " not in log  # no line per dead-lettered event
    assert refused_requests < 40  # the grace's retries and a probe every 2 s, no hot loop


def test_pause_commits_nothing_until_the_destination_accepts(
    kafka_bootstrap, reference_olap, tmp_path
):
    wl = email_workload(emails=200, days=2, seed=5)
    for_posthog = [e for e in wl.events if POSTHOG in sink_targets(e)]
    ids = {e["event_id"] for e in for_posthog}  # fewer: the workload redelivers some

    with HttpReceiver() as rx:
        rx.faults = [Fault(403)] * 1_000_000
        dep = deployment(kafka_bootstrap, tmp_path, rx, SINK_ON_REFUSED="pause")
        dep.prepare()
        dep.produce(wl.events)
        dep.start_worker()
        try:
            state = wait_for(
                "posthog refused",
                lambda: (s := posthog_state(dep))["state"] == "refused" and s,
                dep,
            )
            assert (state["status"], state["on_refused"]) == (403, "pause")
            status = wait_for(
                "every event taken and held",
                lambda: (
                    (s := json.loads(get(dep, "/sluice/status/")))["unflushed_events"]
                    == len(wl.events)
                    and s
                ),
                dep,
            )
            assert status["sinks"]["buffered"][POSTHOG] == len(for_posthog)
            # held: nothing committed, no row written, and the worker idles (no busy loop)
            cpu, failures = cpu_seconds(dep.worker.pid), status["checkpoint_failures"]
            time.sleep(5)
            busy = cpu_seconds(dep.worker.pid) - cpu
            status = json.loads(get(dep, "/sluice/status/"))
            assert dep.committed() == 0
            assert dep.query("SELECT count() AS n FROM campaign_analytics")[0]["n"] == 0
            assert busy < 2.5, f"{busy:.2f} CPU-seconds in 5 s while paused"
            assert status["checkpoint_failures"] - failures <= 12  # one per tick, fast
            assert 'sluice_sink_refused{sink="posthog"} 1.0' in get(dep, "/metrics")

            rx.faults = []  # accepted again: the next probe resumes everything
            dep.wait_drained()
            assert set(rx.posthog_uuids()) == ids
            assert olap_rows(dep) == reference_rows(reference_olap, wl.facts)
            assert posthog_state(dep)["state"] == "ok"
            assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
        finally:
            dep.close()
    assert read_dlq(kafka_bootstrap, f"{dep.prefix}events.dlq", expect=1, timeout=5) == []
    log = dep.log_tail(100_000)
    assert KEY not in log
    assert any("route paused" in line for line in log.splitlines())
