"""PII scrubbing for PostHog (sinks.pii, sinks.posthog.to_posthog)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re

import pytest

from sinks.pii import (
    HASH,
    KEEP,
    POSTHOG_PROPERTIES,
    SENSITIVE_FIELDS,
    LeadPseudonyms,
    Pseudonymizer,
    allowed_properties,
    compile_allowlist,
    lead_of,
    lead_pseudonym,
    url_host,
)
from sinks.posthog import posthog_uuid, to_posthog

KEY = b"test-secret"
EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+\.[A-Za-z]{2,}")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def email_event(event_type: str = "email_clicked", **fields: object) -> dict[str, object]:
    return {
        "event_id": "6f1c2f1e-3b7a-4f7e-9d55-2f0c1a9b8e70",
        "event_type": event_type,
        "occurred_at": 1_763_500_000_000,
        "tenant_id": "acme",
        "source": "tracker",
        "user_id": None,
        "email_id": "em-1",
        "campaign_id": "c-1",
        "mailbox_id": "mb-1",
        "lead_id": "ld-1",
        "recipient_email": "Ann.Lee@Example.com",
        "ip_address": "203.0.113.9",
        "user_agent": "Mozilla/5.0 (X11)",
        "link_url": "https://shop.example.com/p?email=ann.lee@example.com&t=abc",
        "bounce_reason": "550 5.1.1 <ann.lee@example.com>: user unknown",
        "message_id": "<x1@mail.example.com>",
        **fields,
    }


def test_pseudonym_is_hmac_sha256_keyed_and_stable():
    p = Pseudonymizer(KEY)
    expected = hmac.new(KEY, b"ann.lee@example.com", hashlib.sha256).hexdigest()[:32]
    assert p("Ann.Lee@Example.com") == "h:" + expected  # normalized: case, spaces
    assert p(" ann.lee@example.com ") == p("Ann.Lee@Example.com")
    assert Pseudonymizer(b"other")("ann.lee@example.com") != p("ann.lee@example.com")


LEAD_SECRET = b"0" * 64


def test_without_a_key_hashed_fields_are_removed():
    props = allowed_properties(
        email_event(event_type="admin_filter_changed", filter_value="ann"),
        POSTHOG_PROPERTIES["admin_filter_changed"],
        Pseudonymizer(None),
    )
    assert "filter_value" not in props


def test_a_leads_identifiers_leave_only_as_pseudonyms_under_its_own_secret():
    allow = POSTHOG_PROPERTIES["email_clicked"]
    props = allowed_properties(email_event(), allow, Pseudonymizer(KEY), LEAD_SECRET)
    for name in ("lead_id", "email_id", "recipient_email"):
        assert props[name].startswith("l:") and len(props[name]) == 34, name
    assert len({props["lead_id"], props["email_id"], props["recipient_email"]}) == 3
    assert props["recipient_email"] == lead_pseudonym(
        LEAD_SECRET, "recipient_email", "ann.lee@example.COM "
    )
    again = allowed_properties(email_event(), allow, Pseudonymizer(b"other"), LEAD_SECRET)
    assert again["lead_id"] == props["lead_id"]  # the shared key plays no part
    other = allowed_properties(email_event(), allow, Pseudonymizer(KEY), b"1" * 64)
    assert other["lead_id"] != props["lead_id"]  # another secret: unlinkable
    # without the lead's secret (none given, or destroyed by the erasure): left out
    bare = allowed_properties(email_event(), allow, Pseudonymizer(KEY))
    assert not {"lead_id", "email_id", "recipient_email"} & set(bare)
    assert bare["campaign_id"] == "c-1"


def test_an_admin_action_on_a_lead_names_it_by_its_pseudonym():
    event = {**email_event("admin_record_viewed"), "target_type": "lead", "target_id": "ld-1"}
    del event["lead_id"]
    allow = POSTHOG_PROPERTIES["admin_record_viewed"]
    msg = to_posthog(event, allow, Pseudonymizer(KEY), lead_secret=LEAD_SECRET)
    assert msg["properties"]["target_id"] == lead_pseudonym(LEAD_SECRET, "lead_id", "ld-1")
    assert "target_id" not in to_posthog(event, allow, Pseudonymizer(KEY))["properties"]
    assert lead_of(event) == "ld-1" and lead_of(email_event()) == "ld-1"
    assert lead_of({**event, "event_type": "admin_lead_erasure_requested"}) is None


def test_lead_persons_make_the_leads_pseudonym_the_distinct_id():
    allow = POSTHOG_PROPERTIES["email_opened"]
    msg = to_posthog(
        email_event(), allow, Pseudonymizer(KEY), lead_secret=LEAD_SECRET, lead_persons=True
    )
    assert msg["distinct_id"] == lead_pseudonym(LEAD_SECRET, "lead_id", "ld-1")
    assert msg["distinct_id"] == msg["properties"]["lead_id"]
    assert "$process_person_profile" not in msg["properties"]


def test_allowlist_keeps_ids_hashes_emails_and_drops_the_rest():
    props = allowed_properties(
        email_event(), POSTHOG_PROPERTIES["email_clicked"], Pseudonymizer(KEY), LEAD_SECRET
    )
    assert props["recipient_email"].startswith("l:")
    assert props["campaign_id"] == "c-1"
    assert props["link_url"] == "shop.example.com"
    for dropped in ("ip_address", "user_agent", "bounce_reason", "message_id"):
        assert dropped not in props


@pytest.mark.parametrize("event_type", sorted(POSTHOG_PROPERTIES))
def test_no_allowlist_keeps_a_sensitive_field_in_clear(event_type):
    for name, treatment in POSTHOG_PROPERTIES[event_type].items():
        if name in SENSITIVE_FIELDS:
            assert treatment is not KEEP, (event_type, name)


@pytest.mark.parametrize(
    "text",
    [
        "/leads/ann.lee@example.com/edit",
        "from 203.0.113.9 via proxy",
        "client 2001:db8::1 connected",
        "user bob+x@sub.example.co.uk",
    ],
)
def test_last_scan_replaces_emails_and_ips_anywhere(text):
    out = Pseudonymizer(KEY).scrub(text)
    assert not EMAIL.search(out) and not IPV4.search(out) and "2001:db8::1" not in out
    assert "h:" in out


@pytest.mark.parametrize(
    "text", ["c-12", "v1.2.3", "12:30:45", "6f1c2f1e-3b7a-4f7e-9d55-2f0c1a9b8e70"]
)
def test_last_scan_leaves_ordinary_values_alone(text):
    assert Pseudonymizer(KEY).scrub(text) == text


def test_url_host():
    assert url_host("https://user:pw@Shop.Example.com:8443/a?b=c#d") == "shop.example.com"
    assert url_host("not a url") is None


def test_posthog_message_has_uuid_groups_distinct_id_and_no_pii():
    msg = to_posthog(
        email_event(user_id="ann.lee@example.com"),
        POSTHOG_PROPERTIES["email_clicked"],
        Pseudonymizer(KEY),
        sample_rate=0.25,
    )
    assert msg["uuid"] == "6f1c2f1e-3b7a-4f7e-9d55-2f0c1a9b8e70"
    assert msg["event"] == "email_clicked"
    assert msg["distinct_id"].startswith("h:")  # a user id that is an email is pseudonymized
    assert msg["properties"]["$groups"] == {"tenant": "acme"}
    assert msg["properties"]["sample_rate"] == 0.25
    assert msg["timestamp"].startswith("2025-11-18T")
    body = json.dumps(msg)
    assert not EMAIL.search(body) and not IPV4.search(body)


def test_posthog_fallback_distinct_id_is_tenant_scoped_and_personless():
    msg = to_posthog(email_event(), POSTHOG_PROPERTIES["email_opened"], Pseudonymizer(KEY))
    assert msg["distinct_id"] == "tenant:acme"
    assert msg["properties"]["$process_person_profile"] is False


def test_posthog_uuid_is_stable_for_non_uuid_ids():
    assert posthog_uuid("evt-42") == posthog_uuid("evt-42") != posthog_uuid("evt-43")
    assert len(posthog_uuid("evt-42")) == 36


def test_free_text_filter_value_is_hashed():
    allow = POSTHOG_PROPERTIES["admin_filter_changed"]
    assert allow["filter_value"] is HASH


VALUES = (
    "plain",
    "ann@example.com",
    "https://t.example.com/c?u=ann@example.com",
    "10.1.2.3",
    "",
    7,
    2.5,
    True,
    None,
)


@pytest.mark.parametrize("event_type", sorted(POSTHOG_PROPERTIES))
@pytest.mark.parametrize("key", [KEY, None])
@pytest.mark.parametrize("with_lead", [True, False])
def test_a_compiled_allowlist_gives_what_the_generic_one_gives(event_type, key, with_lead):
    allow = POSTHOG_PROPERTIES[event_type]
    build = compile_allowlist(allow)
    pseudo = Pseudonymizer(key)
    lead = LeadPseudonyms(b"lead-secret") if with_lead else None
    names = sorted(allow)
    for shift in range(len(VALUES)):
        event = {name: VALUES[(i + shift) % len(VALUES)] for i, name in enumerate(names)}
        event["unlisted"] = "ann@example.com"
        got = build(event, pseudo, lead)
        want = allowed_properties(event, allow, pseudo, lead)
        assert list(got.items()) == list(want.items())  # the same order: the same JSON


def test_a_compiled_allowlist_takes_only_field_names_and_treatments():
    with pytest.raises(TypeError):
        compile_allowlist({"x": "keep"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        compile_allowlist({1: KEEP})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "start", [-86_400_123, -1, 0, 999, 1_763_500_000_000, 1_763_500_059_999, 4_102_444_800_000]
)
def test_iso_ms_is_datetimes_isoformat_in_utc(start):
    from datetime import UTC, datetime, timedelta

    from sinks import posthog

    for ms in range(start, start + 3_000, 7):
        want = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat(
            timespec="milliseconds"
        )
        assert posthog.iso_ms(ms) == want
    posthog._SECOND_ISO.clear()  # the memo is only a memo
    assert posthog.iso_ms(start) == (
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=start)
    ).isoformat(timespec="milliseconds")
