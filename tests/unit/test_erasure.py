"""A lead's erasure through the worker's state and checkpoint, broker-free (tests/_olapsim.py).

A mixed workload is played through the engine the way the worker runs it; one lead of one
tenant is erased in the middle (the same lead id lives in another tenant, which keeps it).
Then every analytics table equals the reference SQL over *all* the facts — but
``lead_analytics``, which lacks exactly the erased lead's row — through crashes, the loss
of every bit of state, redelivery and events of the lead still to arrive; and nothing the
state or the (compacted) changelog holds names the lead any more.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from functools import partial

import pytest

from dev.workload import REFERENCE_SQL, MixedWorkload, mixed_workload
from sluice.olap.audit import audit_row
from sluice.privacy import Erasure, Outcome, Registry, lead_ref, parse
from streams.engine import Engine, default_components
from streams.erasure import ERASING, LeadKeys, erasure_of
from streams.rollups import LEAD
from streams.routing import AUDIT_LOG, route
from tests._olapsim import Harness, reference_tables
from topics.catalog import Catalog
from topics.taxonomy import COMPLIANCE_ACTIONS, LEAD_ERASURE

ANALYTICS = sorted(REFERENCE_SQL)
TENANT, OTHER = "acme", "globex:eu"


def erasure_event(tenant: str, lead: str, at: int, **extra) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": LEAD_ERASURE,
        "occurred_at": at,
        "tenant_id": tenant,
        "source": "sluice-cli",
        "user_id": "ops-1",
        "target_type": "lead",
        "target_id": lead,
        "requested_by": "data_subject",
        "legal_basis": "gdpr_art17",
        **extra,
    }


def pick_lead(wl: MixedWorkload) -> str:
    """The lead of TENANT with the most emails whose id OTHER uses too."""
    mine = Counter(f.lead_id for f in wl.facts if f.tenant_id == TENANT)
    theirs = {f.lead_id for f in wl.facts if f.tenant_id == OTHER}
    return max((n, lead) for lead, n in mine.items() if lead in theirs)[1]


@pytest.fixture(scope="module")
def workload() -> MixedWorkload:
    return mixed_workload(seed=33, emails=600)


@pytest.fixture(scope="module")
def lead(workload) -> str:
    return pick_lead(workload)


@pytest.fixture(scope="module")
def reference(reference_olap, workload):
    return reference_tables(reference_olap, workload)


def nonempty(rows: dict) -> dict:
    return {k: v for k, v in rows.items() if any(x not in (0, None, "") for x in v[len(k) :])}


def assert_tables(h: Harness, reference: dict, erased: set[tuple[str, str]]) -> None:
    """Every analytics table equals the reference; lead_analytics without ``erased``."""
    for table in ANALYTICS:
        want = dict(reference[table])
        if table == "lead_analytics":
            for key in erased:
                assert key in want, key  # the workload gave the lead a row to lose
                del want[key]
        got = nonempty(h.olap.final(table))
        assert got == want, (table, set(got) ^ set(want))


def assert_forgotten(h: Harness, tenant: str, lead: str) -> None:
    """Nothing in the state or the compacted changelog names the lead."""
    assert h.engine.holds(tenant, lead) == {}
    for (_, key), value in h.changelog.items():
        parsed = json.loads(key)
        if parsed[0] == "\x00audit":
            continue  # the erasure's own compliance record (written, then compacted)
        if parsed[0] == tenant or (len(parsed) > 1 and parsed[1] == tenant):
            assert lead not in json.dumps(parsed[1:] + value), (key, value)


def settle(h: Harness) -> None:
    """The checkpoints after the registry record is read back: the purge, then the
    per-lead key's tombstone (the worker's timer runs them even when idle)."""
    h.checkpoint()
    h.checkpoint()


def by_email(event: dict) -> str:
    """Email events keyed by email id (issue 15): a lead's emails on every partition."""
    return event.get("email_id") or event["tenant_id"]


def test_erasure_midstream_through_crashes_and_redelivery(workload, lead, reference):
    h = Harness(partitions=3, every=97)
    h.produce(workload.events)
    n = len(h.log)
    h.run(n // 2, checkpoint=False)
    assert h.checkpoint()
    assert ("acme", lead) in h.olap.final("lead_analytics")  # the row exists before
    at = max(e["occurred_at"] for e in workload.events)
    h.produce([erasure_event(TENANT, lead, at)])
    # the erasure goes to the end of the log: run everything else first, then it
    h.log.insert(n // 2 + 10, h.log.pop())
    h.run(2 * n // 3, checkpoint=False)
    h.crash()  # kill -9 after the erasure was applied, before its checkpoint
    h.run()
    h.produce(random.Random(3).sample(workload.events, len(workload.events) // 4))  # redelivery
    h.run()

    assert len([e for e in h.registry_log if isinstance(e, Erasure)]) >= 1
    assert h.engine.erasures.erased(TENANT, lead)
    assert not h.engine.erasures.erased(OTHER, lead)
    assert_tables(h, reference, {(TENANT, lead)})
    assert (OTHER, lead) in h.olap.final("lead_analytics")  # same id, other tenant: kept
    assert_forgotten(h, TENANT, lead)
    audit = [r for r in h.olap.final("admin_audit_log").values() if LEAD_ERASURE in r]
    assert len(audit) == 1, audit


def test_erasure_holds_after_every_bit_of_state_is_lost(workload, lead, reference):
    h = Harness(partitions=3, every=97)
    h.produce(workload.events)
    h.produce([erasure_event(TENANT, lead, 0)])
    h.run()
    settle(h)
    assert (TENANT, lead) not in h.olap.final("lead_analytics")
    # the changelog gone, the offsets gone: everything is replayed from the log's start;
    # only the registry (its own topic) is left
    h.changelog.clear()
    h.committed = 0
    h.crash()
    h.run()
    assert_tables(h, reference, {(TENANT, lead)})
    assert_forgotten(h, TENANT, lead)


def test_a_lead_whose_events_are_still_to_arrive_is_never_written(workload, lead, reference):
    h = Harness(partitions=3, every=50)
    h.produce([erasure_event(TENANT, lead, 0)])
    h.run()
    written: list[tuple] = []
    insert = h.olap.insert

    def spy(table, columns, rows):
        rows = list(rows)
        if table == "lead_analytics":
            written.extend((r[0], r[1]) for r in rows)
        insert(table, columns, rows)

    h.olap.insert = spy  # type: ignore[method-assign]
    h.produce(workload.events)
    h.run()
    assert (TENANT, lead) not in written
    assert (OTHER, lead) in written
    assert_tables(h, reference, {(TENANT, lead)})
    assert_forgotten(h, TENANT, lead)


def test_the_erasure_reaches_every_partition_when_emails_are_keyed_by_email(
    workload, lead, reference
):
    h = Harness(partitions=4, every=97)
    h.partition_key = by_email
    h.produce(workload.events)
    parts = {r.partition for r in h.log if r.event.get("lead_id") == lead}
    parts &= {r.partition for r in h.log if r.event["tenant_id"] == TENANT}
    assert len(parts) > 1  # the lead's emails really are spread
    h.run(len(h.log) // 2)
    h.produce([erasure_event(TENANT, lead, 0)])
    h.run()
    settle(h)
    # rows are per partition under this keying (combining them is issue 15's): the lead is
    # gone from every partition, and the campaign counts summed over them are the truth
    assert all(k != (TENANT, lead) for k in h.olap.final("lead_analytics"))
    summed: dict[tuple, list[int]] = {}
    for ps in h.engine.partitions.values():
        for key, counters in ps.email.rows["campaign_analytics"].items():
            total = summed.setdefault(key, [0] * len(counters))
            for i, v in enumerate(counters):
                total[i] += v
    want = {k: list(v[3:]) for k, v in reference["campaign_analytics"].items()}
    assert {k: v for k, v in summed.items() if any(v)} == want
    assert_forgotten(h, TENANT, lead)


def test_rows_of_a_failed_checkpoint_written_after_the_erasure_are_scrubbed(
    workload, lead, reference
):
    h = Harness(partitions=3, every=10_000)
    h.produce(workload.events)
    h.run(checkpoint=False)
    assert not h.checkpoint(olap_fails=True)  # the changelog is durable, the rows are left over
    h.produce([erasure_event(TENANT, lead, 0)])
    h.run()
    settle(h)
    assert_tables(h, reference, {(TENANT, lead)})


def test_a_purge_that_fails_is_tried_again(workload, lead, reference):
    h = Harness(partitions=3, every=97)
    h.produce(workload.events)
    h.run()
    h.purge_fails = True
    h.produce([erasure_event(TENANT, lead, 0)])
    h.run()
    settle(h)
    assert h.engine.pending_purge == {TENANT: {lead_ref(TENANT, lead)}}
    h.purge_fails = False
    h.checkpoint()
    assert h.engine.pending_purge == {}
    assert_tables(h, reference, {(TENANT, lead)})


def test_the_erasure_audit_row_names_who_asked_and_why():
    event = erasure_event(TENANT, "lead-7", 1_800_000_000_000)
    row = audit_row(event, 1, "0" * 64)
    assert (row["action"], row["target_type"], row["target_id"]) == (LEAD_ERASURE, "lead", "lead-7")
    assert json.loads(row["after_summary"]) == {
        "legal_basis": "gdpr_art17",
        "requested_by": "data_subject",
    }
    assert LEAD_ERASURE in COMPLIANCE_ACTIONS
    assert route(event) == {AUDIT_LOG}  # never the SIEM: no copy beyond Sluice's reach


# -- the registry ---------------------------------------------------------------------


def test_registry_records_round_trip_and_name_no_lead():
    e = Erasure(TENANT, lead_ref(TENANT, "lead-7"), "ev-1", 5)
    o = Outcome("posthog", TENANT, e.ref, "partition-1", "requested", 6, {"persons_found": 1})
    assert parse(e.key(), e.value()) == e
    assert parse(o.key(), o.value()) == o
    assert b"lead-7" not in e.key() + e.value() + o.key() + o.value()
    assert parse(b'["something-new"]', b"{}") is None
    registry = Registry([e, o])
    assert registry.erased(TENANT, "lead-7")
    assert not registry.erased(OTHER, "lead-7") and not registry.erased(TENANT, "lead-8")
    assert not registry.add(Erasure(TENANT, e.ref, "ev-2", 9))  # a second request: same lead
    assert registry.get(TENANT, e.ref).event_id == "ev-1"  # the first one dates it
    assert registry.outcomes_of(TENANT, e.ref) == [o]
    assert erasure_of(erasure_event(TENANT, "lead-7", 5)).ref == e.ref
    assert erasure_of({**erasure_event(TENANT, "lead-7", 5), "target_type": "user"}) is None


# -- per-lead keys ----------------------------------------------------------------------


def email(tenant: str, lead: str, n: int, event_type: str = "email_sent") -> dict:
    return {
        "event_id": f"{event_type}-{tenant}-{lead}-{n}",
        "event_type": event_type,
        "occurred_at": 1_800_000_000_000 + n,
        "tenant_id": tenant,
        "source": "mailer",
        "email_id": f"em-{lead}-{n}",
        "campaign_id": "c1",
        "mailbox_id": "m1",
        "lead_id": lead,
    }


def keyed_harness() -> Harness:
    def components(registry: Registry):
        return partial(default_components, registry=registry, lead_keys=True)

    registry = Registry()
    h = Harness(partitions=2, every=10_000, engine=Engine(components(registry), registry=registry))
    h.components = components
    return h


def home(h: Harness, event: dict) -> int:
    return Catalog(partitions=h.partitions).for_family("email").partition_of(event)


def lead_keys(h: Harness, tenant: str, lead: str = "L") -> LeadKeys:
    """The lead keys of the partition where the lead's first email lives."""
    keys = h.engine.partitions[home(h, email(tenant, lead, 0))].by_tag[LeadKeys.tag]
    assert isinstance(keys, LeadKeys)
    return keys


def emails_on(h: Harness, partition: int, tenant: str, lead: str, count: int) -> list[dict]:
    """``count`` sends of the lead whose emails the catalog's key puts on ``partition``."""
    out, n = [], 0
    while len(out) < count:
        event = email(tenant, lead, n)
        if home(h, event) == partition:
            out.append(event)
        n += 1
    return out


def logged(h: Harness, key: str) -> list[list]:
    """The compacted changelog's values under ``key``, on every partition."""
    return [value for (_, k), value in h.changelog.items() if k == key]


def test_a_lead_key_is_minted_once_and_destroyed_by_the_erasure():
    h = keyed_harness()
    first = home(h, email(TENANT, "L", 0))
    h.produce(emails_on(h, first, TENANT, "L", 3) + [email(OTHER, "L", 0)])
    h.run()
    keys = lead_keys(h, TENANT)
    secret = keys.secret(TENANT, "L")
    assert secret is not None and len(secret) == 64
    assert lead_keys(h, OTHER).secret(OTHER, "L") not in (None, secret)  # one per tenant
    changelog_key = json.dumps([LeadKeys.tag, TENANT, lead_ref(TENANT, "L")])
    assert [v[1:] for v in logged(h, changelog_key)] == [[secret.decode(), 0, "L"]]

    h.produce([erasure_event(TENANT, "L", 0)])
    h.run()
    settle(h)  # the registry names it: erasing (no event uses it), asked, destroyed, tombstoned
    assert keys.secret(TENANT, "L") is None
    assert logged(h, changelog_key) == []  # compaction removes the tombstoned key
    assert lead_keys(h, OTHER).secret(OTHER, "L") is not None
    outcomes = [o for o in h.registry_log if isinstance(o, Outcome)]
    assert [(o.tenant, o.ref) for o in outcomes] == [(TENANT, lead_ref(TENANT, "L"))]

    h.produce([email(TENANT, "L", 90, "email_opened"), *(email(TENANT, "L", n) for n in range(9))])
    h.run()  # later events of the erased lead never mint a new key, on any partition
    for ps in h.engine.partitions.values():
        assert ps.by_tag[LeadKeys.tag].secret(TENANT, "L") is None
    assert logged(h, changelog_key) == []


def test_a_lead_whose_emails_sit_on_several_partitions_has_a_key_on_each_all_destroyed():
    h = keyed_harness()
    h.produce(emails_on(h, 0, TENANT, "L", 2) + emails_on(h, 1, TENANT, "L", 2))
    h.run()
    secrets = {
        p: ps.by_tag[LeadKeys.tag].secret(TENANT, "L") for p, ps in h.engine.partitions.items()
    }
    assert None not in secrets.values() and len(set(secrets.values())) == 2, "one per partition"
    changelog_key = json.dumps([LeadKeys.tag, TENANT, lead_ref(TENANT, "L")])
    assert len(logged(h, changelog_key)) == 2
    h.produce([erasure_event(TENANT, "L", 0)])
    h.run()
    settle(h)
    assert all(
        ps.by_tag[LeadKeys.tag].secret(TENANT, "L") is None for ps in h.engine.partitions.values()
    )
    assert logged(h, changelog_key) == []
    scopes = sorted(o.scope for o in h.registry_log if isinstance(o, Outcome))
    assert scopes == ["partition-0", "partition-1"], "each pseudonym asked about"
    assert h.engine.holds(TENANT, "L") == {}


def test_a_lead_key_erased_before_its_tombstone_was_durable_is_erased_again():
    h = keyed_harness()
    h.produce([email(TENANT, "L", 0)])
    h.run()
    # the registry names the lead, but the worker dies before anything else happened:
    # the changelog still holds the active key
    h.registry_log.append(Erasure(TENANT, lead_ref(TENANT, "L"), "ev", 0))
    h.followed = len(h.registry_log)
    h.crash()
    keys = lead_keys(h, TENANT)
    assert keys.secret(TENANT, "L") is None
    assert keys.keys[(TENANT, "L")][1] == ERASING
    h.checkpoint()
    h.checkpoint()
    assert (TENANT, "L") not in keys.keys
    assert logged(h, json.dumps([LeadKeys.tag, TENANT, lead_ref(TENANT, "L")])) == []


def test_emails_of_an_erased_lead_keep_counting_everywhere_but_lead_analytics():
    engine = Engine()
    engine.apply(0, "events.email", 0, "email", email(TENANT, "L", 0))
    engine.apply(0, "events.email", 1, "email", email(TENANT, "M", 1))
    engine.erase([Erasure(TENANT, lead_ref(TENANT, "L"), "ev", 0)])
    engine.apply(0, "events.email", 2, "email", email(TENANT, "L", 0, "email_opened"))
    engine.apply(0, "events.email", 3, "email", email(TENANT, "L", 5))  # still to arrive
    email_state = engine.state(0).email
    assert {tuple(s)[LEAD] for s in email_state.states.values()} == {None, "M"}
    ckpt = engine.snapshot()
    rows = engine.scrub_rows(ckpt.rows)
    campaign = rows["campaign_analytics"][0]
    sent = engine.columns("campaign_analytics").index("sent")
    assert campaign[sent : sent + 2] == [3, 0]  # sent 3, none delivered: L's emails count
    lead_sent = engine.columns("lead_analytics").index("emails_sent")
    assert [[r[0], r[1], r[lead_sent]] for r in rows["lead_analytics"]] == [[TENANT, "M", 1]]
    assert engine.holds(TENANT, "L") == {} and engine.holds(TENANT, "M")


# -- verification, dead letters, PostHog ------------------------------------------------


def test_changelog_scan_tells_latest_values_from_superseded_copies():
    from sluice.privacy import AWAITING, GONE, HELD, KEPT, OVERDUE, ChangelogScan

    scan = ChangelogScan(TENANT, "L")
    state = [TENANT, "em-1"]
    scan.add("a", state, [0, 5, "ev", "c1", "m1", "L", None, 1], 1_000)
    scan.add("a", state, [0, 5, "ev", "c1", "m1", None, None, 1], 2_000)  # rewritten
    key = [LeadKeys.tag, TENANT, "ref"]
    scan.add("b", key, [0, "secret", 0, "L"], 1_000)
    scan.add("b", key, None, 3_000)  # tombstoned
    scan.add("c", [OTHER, "em-9"], [0, 5, "ev", "c1", "m1", "L", None, 1], 1_000)  # theirs
    scan.add("d", ["\x00audit", TENANT, "ev-e"], [0, 1, "h", "h", 0, {"target_id": "L"}], 1)
    found = {f.status: f for f in scan.findings(now=3_010, compaction_lag_ms=10, tombstone_ms=5)}
    assert set(found) == {KEPT, AWAITING}, found
    assert found[AWAITING].count == 2 and found[AWAITING].until == 3_015
    assert set(f.status for f in scan.findings(10**6, 10, 5)) == {KEPT, OVERDUE}
    scan.add("e", state[:1] + ["em-2"], [0, 6, "ev2", "c1", "m1", "L", None, 0], 5_000)
    assert HELD in {f.status for f in scan.findings(3_010, 10, 5)}
    assert [f.status for f in ChangelogScan(TENANT, "X").findings(0, 1, 1)] == [GONE]


def test_dead_letters_of_an_erased_lead_are_never_replayed():
    from sluice.dlq import ERASED_LEAD, WOULD_REPLAY, DeadLetter, plan_replay

    def letter(offset: int, value: bytes) -> DeadLetter:
        headers = {"source.topic": "events.email", "source.partition": "0"}
        return DeadLetter(0, offset, None, value, {**headers, "source.offset": str(offset)})

    letters = [letter(0, b"erased"), letter(1, b"kept")]
    plan = plan_replay(
        letters,
        lambda value, family: None,
        {"events.email": "email"}.get,
        erased=lambda value, family: value == b"erased",
    )
    assert [outcome for _, outcome in plan] == [ERASED_LEAD, WOULD_REPLAY]


def test_the_private_api_host_of_posthog_cloud():
    from sinks.posthog import private_api_host

    assert private_api_host("https://us.i.posthog.com") == "https://us.posthog.com"
    assert private_api_host("https://eu.i.posthog.com/") == "https://eu.posthog.com"
    assert private_api_host("https://posthog.example.com") == "https://posthog.example.com"


class _Writer:
    def __init__(self) -> None:
        self.written: list = []
        self.fail = False

    def write(self, entries) -> int:
        self.written.extend(entries)
        return len(entries)

    def flush(self) -> None:
        if self.fail:
            raise RuntimeError("broker down")


class _Deletion:
    def __init__(self, answer=None, error=None) -> None:
        self.answer, self.error, self.asked = answer, error, []

    def delete(self, distinct_ids):
        self.asked.append(list(distinct_ids))
        if self.error is not None:
            raise self.error
        return self.answer


def erasure_port(**settings):
    from types import SimpleNamespace

    from sluice.settings import Settings
    from streams.metrics import HealthMetrics
    from streams.worker import _Erasures

    worker = SimpleNamespace(
        settings=Settings(_env_file=None, **settings),
        health=HealthMetrics(),
        registry_writer=_Writer(),
    )
    return _Erasures(worker), worker  # type: ignore[arg-type]


def forget(n: int = 0):
    from streams.erasure import Forget

    return Forget(n, TENANT, "L", lead_ref(TENANT, "L"), b"s" * 64)


def test_deletion_outcomes_are_recorded_before_the_secret_goes():
    from sinks.base import PermanentError, TransientError
    from sinks.posthog import lead_distinct_id

    port, worker = erasure_port()  # no lead persons: nothing PostHog could delete by person
    assert port._forget([forget()]) == [(forget(), True)]
    assert worker.registry_writer.written[0].status == "not_applicable"

    port, worker = erasure_port(posthog_lead_persons=True)
    assert port.deletion is None
    port._forget([forget()])
    assert worker.registry_writer.written[0].status == "not_configured"

    port, worker = erasure_port(
        posthog_lead_persons=True, posthog_personal_api_key="phx", posthog_project_id="7"
    )
    assert port.deletion.url == "https://us.posthog.com/api/projects/7/persons/bulk_delete/"
    port.deletion = _Deletion({"persons_found": 1, "persons_deleted": 1})
    assert port._forget([forget()]) == [(forget(), True)]
    assert port.deletion.asked == [[lead_distinct_id(b"s" * 64, "L")]]
    (outcome,) = worker.registry_writer.written
    assert (outcome.status, outcome.detail["persons_found"]) == ("deleted", 1)
    assert outcome.scope == "partition-0" and b'"L"' not in outcome.key() + outcome.value()

    port.deletion = _Deletion(error=TransientError("http_503"))
    assert port._forget([forget(1)]) == [(forget(1), False)]  # asked again later
    assert port._forget([forget(1)]) == [(forget(1), False)]  # not before RETRY_S
    assert len(port.deletion.asked) == 1
    port.deletion = _Deletion(error=PermanentError("http_400", status=400))
    assert port._forget([forget(2)]) == [(forget(2), True)]
    assert worker.registry_writer.written[-1].status == "refused"

    worker.registry_writer.fail = True  # the outcome is not durable: the secret stays
    port.deletion = _Deletion({"persons_found": 0})
    assert port._forget([forget(3)]) == [(forget(3), False)]
