"""A lead's right to be forgotten, against the real worker (docs/erasure.md).

Each scenario erases one lead of ``acme`` with ``sluice privacy erase`` while a mixed
workload runs; ``globex:eu`` has a lead with the same id, which nobody erases. Then every
table equals the reference SQL over *all* the facts — except ``lead_analytics``, which
lacks exactly the erased lead's row — and ``sluice privacy verify`` finds nothing that
names the lead in the OLAP, the worker's state or the changelog's latest values (and
fails for the other tenant's lead, which is still there). The scenarios: erasure in the
middle of a live workload (PostHog: pseudonyms only, nothing of the lead after the
erasure, its person deleted); erasure then kill -9; erasure then a full backfill; erasure
of a lead whose events are still to arrive (and a dead letter of it, which ``sluice dlq
replay`` refuses to bring back).
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from dev.workload import MixedWorkload
from sinks.posthog import posthog_uuid
from tests._receivers import HttpReceiver
from tests.faults._faults import (
    SPILL,
    RawProducer,
    duplicates,
    produce_paced,
    report,
    verify,
    wait_for,
    workload,
)
from topics.catalog import Catalog
from topics.taxonomy import LEAD_ERASURE

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.faults]

TENANT, OTHER = "acme", "globex:eu"
EVENTS = 4000  # small: each scenario well under a minute


def pick_lead(wl: MixedWorkload) -> str:
    """The lead of TENANT with the most emails whose id OTHER uses too."""
    mine = Counter(f.lead_id for f in wl.facts if f.tenant_id == TENANT)
    theirs = {f.lead_id for f in wl.facts if f.tenant_id == OTHER}
    return max((n, lead) for lead, n in mine.items() if lead in theirs)[1]


def erase(dep, wl: MixedWorkload, tenant: str, lead: str) -> str:
    """``sluice privacy erase`` until a worker registered it; the request joins the
    workload's compliance actions (it lands once in the audit log)."""
    proc = dep.run(
        "privacy",
        "erase",
        "--tenant",
        tenant,
        "--lead",
        lead,
        "--actor",
        "ops-1",
        "--legal-basis",
        "gdpr_art17",
        "--wait",
        "60",
    )
    event_id = re.search(r"event (\S+)", proc.stdout)[1]
    # a new list: a paced producer may still be walking the old one
    wl.events = [
        *wl.events,
        {"event_id": event_id, "event_type": LEAD_ERASURE, "tenant_id": tenant},
    ]
    return event_id


def privacy_verify(dep, tenant: str, lead: str, *extra: str):
    proc = dep.run(
        "privacy",
        "verify",
        "--tenant",
        tenant,
        "--lead",
        lead,
        "--format",
        "json",
        *extra,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else proc.stderr


def verified(dep, tenant: str, lead: str, timeout: float = 60) -> dict:
    """Wait until ``sluice privacy verify`` passes (the purge and the key's tombstone come
    at the checkpoints after the registry names the lead); its report."""
    found: list = []

    def passes() -> bool:
        code, body = privacy_verify(dep, tenant, lead)
        found[:] = [body]
        return code == 0

    try:
        wait_for(passes, timeout, "sluice privacy verify to pass", dep)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast report: {found}") from None
    return found[0]


def statuses(body: dict) -> dict[str, str]:
    return {f["store"]: f["status"] for f in body["findings"]}


def the_other_tenants_lead_is_untouched(dep, lead: str) -> None:
    code, body = privacy_verify(dep, OTHER, lead)
    assert code == 1, body
    found = statuses(body)
    assert found["registry"] == "held" and found["olap lead_analytics"] == "held", found


def posthog_env(ph: HttpReceiver) -> dict[str, str]:
    return {
        "POSTHOG_API_KEY": "phc-test",
        "POSTHOG_HOST": ph.url,
        "POSTHOG_LEAD_PERSONS": "true",
        "POSTHOG_PERSONAL_API_KEY": "phx-test-personal",
        "POSTHOG_PROJECT_ID": "42",
        "POSTHOG_API_HOST": ph.url,
        "SINK_LINGER_S": "0.2",
    }


def test_erasure_in_the_middle_of_a_live_workload(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1501, events=EVENTS)
    lead = pick_lead(wl)
    total = len(wl.events)
    dep.prepare()
    with HttpReceiver() as ph:
        producer = produce_paced(dep, wl.events, seconds=12)
        dep.start_worker(posthog_env(ph))
        wait_for(lambda: dep.committed() >= 0.4 * total, 120, "40%", dep)
        started = time.monotonic()
        erase(dep, wl, TENANT, lead)
        producer.join(120)
        dep.wait_drained()
        body = verified(dep, TENANT, lead)
        erased_in = time.monotonic() - started
        figures = verify(dep, wl, reference_olap, erased=frozenset({(TENANT, lead)}))
        the_other_tenants_lead_is_untouched(dep, lead)

        # the worker's verify endpoint reveals state: it needs the bearer token
        request = urllib.request.Request(
            f"http://127.0.0.1:{dep.web_port}/sluice/privacy/verify/",
            data=json.dumps({"tenant": TENANT, "lead": lead}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401
        assert lead not in (dep.root / "worker.log").read_text()  # never logged

        found = statuses(body)
        assert found["worker state"] == "gone" and found["olap"] == "gone", found
        assert found["olap admin_audit_log"] == "kept", found  # the erasure's own record
        assert found["posthog"] == "unlinkable", found
        # PostHog never got the lead's ids in clear, only pseudonyms
        sent = b"\n".join(ph.bodies)
        assert f'"{lead}"'.encode() not in sent
        emails = {f.email_id for f in wl.facts if f.tenant_id == TENANT and f.lead_id == lead}
        assert not any(f'"{e}"'.encode() in sent for e in emails)
        # one person deletion per partition that had minted the lead a secret (emails are
        # keyed by email: a pseudonym per partition; emails of the lead still to arrive at
        # the erasure mint none), each for a person that existed; nothing of the lead after
        spec = Catalog(partitions=dep.partitions).for_family("email")
        homes = {spec.partition_of({"tenant_id": TENANT, "email_id": e}) for e in emails}
        assert 1 <= len(ph.deletions) <= len(homes), (homes, ph.deletions)
        with ph.lock:
            events = list(ph.posthog)
        pseudonyms = set()
        for auth, request, before in ph.deletions:
            assert auth == "Bearer phx-test-personal" and request["delete_events"] is True
            (pseudonym,) = request["distinct_ids"]
            pseudonyms.add(pseudonym)
            assert [e for e in events[:before] if e["distinct_id"] == pseudonym]  # a person
            assert [e for e in events[before:] if e["distinct_id"] == pseudonym] == []
        assert len(pseudonyms) == len(ph.deletions), "one secret, one pseudonym, per partition"
        outcome = next(f for f in body["findings"] if f["store"] == "posthog")
        assert "deleted" in outcome["detail"], outcome
        assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report("erasure live workload", produced=total, erased_in_s=round(erased_in, 1), **figures)


def test_erasure_then_kill_9(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1502, events=EVENTS)
    lead = pick_lead(wl)
    events = wl.events  # the stream (erase() adds its request to wl.events, not to this)
    half = len(events) // 2
    dep.prepare()
    producer = RawProducer(dep)
    producer.send_all(events[:half])
    dep.start_worker(SPILL)  # most of the state on disk: the erasure must reach it there
    dep.wait_drained()
    erase(dep, wl, TENANT, lead)
    # killed as soon as the registry names the lead: before its state, its changelog
    # values and its OLAP row could be dealt with (or in the middle of it)
    assert dep.stop_worker(signal.SIGKILL) == -signal.SIGKILL
    producer.send_all(events[half:] + duplicates(events[:half], 0.2, seed=3))
    dep.start_worker(SPILL)
    dep.wait_drained()
    verified(dep, TENANT, lead)
    figures = verify(dep, wl, reference_olap, erased=frozenset({(TENANT, lead)}))
    the_other_tenants_lead_is_untouched(dep, lead)
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report("erasure then kill -9", produced=producer.sent, **figures)


def test_erasure_then_a_full_backfill(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1503, events=EVENTS)
    lead = pick_lead(wl)
    dep.prepare()
    producer = RawProducer(dep)
    producer.send_all(wl.events)
    dep.start_worker()
    dep.wait_drained()
    verify(dep, wl, reference_olap)  # before: every table, the lead's row included
    erase(dep, wl, TENANT, lead)
    verified(dep, TENANT, lead)
    # every retained event recomputed, the erased lead's included: its row stays gone
    proc = dep.run("backfill", "--from", "2026-10-01")
    assert "lead_analytics" in proc.stdout, proc.stdout
    dep.wait_drained()
    body = verified(dep, TENANT, lead, timeout=30)
    figures = verify(dep, wl, reference_olap, erased=frozenset({(TENANT, lead)}))
    the_other_tenants_lead_is_untouched(dep, lead)
    assert statuses(body)["olap"] == "gone"
    assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report("erasure then backfill", produced=producer.sent, **figures)


def test_erasure_of_a_lead_whose_events_are_still_to_arrive(deployment, reference_olap):
    dep = deployment
    wl = workload(seed=1504, events=EVENTS)
    lead = pick_lead(wl)
    mine = [e for e in wl.events if e["tenant_id"] == TENANT and e.get("lead_id") == lead]
    rest = [e for e in wl.events if not (e["tenant_id"] == TENANT and e.get("lead_id") == lead)]
    first, later = mine[0], mine[1:]
    dep.prepare()
    producer = RawProducer(dep)
    with HttpReceiver() as ph:
        ph.poison.add(posthog_uuid(first["event_id"]))  # PostHog refuses it: a dead letter
        dep.start_worker(posthog_env(ph))
        producer.send_all(rest[: len(rest) // 2] + [first])
        dep.wait_drained()
        erase(dep, wl, TENANT, lead)
        # the lead's events, late, and again (redelivered), among the others
        producer.send_all(later + rest[len(rest) // 2 :] + later)
        dep.wait_drained()
        body = verified(dep, TENANT, lead)
        figures = verify(dep, wl, reference_olap, erased=frozenset({(TENANT, lead)}))
        the_other_tenants_lead_is_untouched(dep, lead)
        # the dead letter still holds the raw event: reported until its retention ends
        assert statuses(body)["dead letters"] == "awaiting", body
        assert privacy_verify(dep, TENANT, lead, "--strict")[0] == 1
        proc = dep.run("dlq", "replay", "--format", "json")
        outcomes = json.loads(proc.stdout)["outcomes"]
        assert outcomes.get("erased_lead") == 1 and "replayed" not in outcomes, outcomes
        assert ph.deletions, "PostHog was asked to delete the lead's persons"
        with ph.lock:
            for _, request, _ in ph.deletions:
                (pseudonym,) = request["distinct_ids"]
                assert [e for e in ph.posthog if e["distinct_id"] == pseudonym] == []
        assert dep.stop_worker(signal.SIGTERM) == 0, dep.log_tail()
    report("erasure before the lead's events", produced=producer.sent, **figures)
