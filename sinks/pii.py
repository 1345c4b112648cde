"""PII protection for everything leaving for product analytics.

Three layers, each enough on its own for the fields it knows:

1. **Allowlists per event type** (:data:`POSTHOG_PROPERTIES`): a field not listed never
   leaves. Listed fields say how: ``KEEP`` (identifiers, enums, numbers), ``HASH``
   (emails, IPs, free text: replaced by an HMAC-SHA256 pseudonym), ``URL_HOST`` (a
   clicked link keeps only its host: paths and query strings carry tokens and emails).
2. **Pseudonyms** with a secret key (``PII_HMAC_KEY``): the same input gives the same
   pseudonym, so analysts can count distinct recipients without seeing one. Without a
   key, ``HASH`` fields are removed instead: never a bare, guessable SHA of an email.
3. **A last scan** of every string that does leave: anything shaped like an email address
   or an IPv4/IPv6 address is replaced by its pseudonym, whatever the field (a page path
   like ``/leads/ann@example.com`` or a user id that is an email).

What identifies a *lead* (``LEAD``: its id, its emails' ids, its address) is pseudonymized
under a secret of that lead alone (:func:`lead_pseudonym`), never under the shared key:
the lead's erasure destroys the secret (:mod:`streams.erasure`), after which nobody can
recompute the pseudonyms PostHog holds, nor tie them to the lead (docs/erasure.md). Until
then they are stable, so analysts still count and follow leads.

Each allowlist is also compiled into straight-line Python (:func:`compile_allowlist`,
generated from the field names and four fixed templates; no library does this): the
generic :func:`allowed_properties` stays the reference a test compares it with.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from enum import Enum
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlsplit

from topics.taxonomy import EVENT_TYPES, LEAD_ERASURE


class Treatment(Enum):
    KEEP = "keep"
    HASH = "hash"
    URL_HOST = "url_host"
    LEAD = "lead"  # a pseudonym under the lead's own secret; removed without one


KEEP, HASH, URL_HOST, LEAD = Treatment.KEEP, Treatment.HASH, Treatment.URL_HOST, Treatment.LEAD

# -- allowlists -------------------------------------------------------------------------
_EMAIL_BASE = {
    "email_id": LEAD,  # the tenant's systems could tie an email id to its lead
    "campaign_id": KEEP,
    "mailbox_id": KEEP,
    "lead_id": LEAD,
    "sequence_step_id": KEEP,
    "automated": KEEP,  # machine opens/clicks (security scanners): analysts filter them
    "recipient_email": LEAD,  # distinct recipients, never who
}
_EMAIL_EXTRA: dict[str, dict[str, Treatment]] = {
    "email_clicked": {"link_url": URL_HOST},
    "email_bounced": {"bounce_type": KEEP, "smtp_code": KEEP},  # not bounce_reason: free text
}
_BUSINESS = {
    "plan_from": KEEP,
    "plan_to": KEEP,
    "mrr_cents": KEEP,
    "previous_mrr_cents": KEEP,
    "currency": KEEP,
    "seats": KEEP,
    "billing_period": KEEP,
}
_ADMIN_UI = {"page": KEEP, "element": KEEP, "session_id": KEEP, "duration_ms": KEEP}
_ADMIN_UI_EXTRA: dict[str, dict[str, Treatment]] = {
    "admin_filter_changed": {"filter_name": KEEP, "filter_value": HASH},  # typed by a person
}
# never before/after/reason/ip; a target that is a lead: its pseudonym (posthog.to_posthog)
_ADMIN_LOW_RISK = {"target_type": KEEP, "target_id": KEEP}


def _build() -> Mapping[str, Mapping[str, Treatment]]:
    table: dict[str, Mapping[str, Treatment]] = {}
    for t in EVENT_TYPES["email"]:
        table[t] = MappingProxyType({**_EMAIL_BASE, **_EMAIL_EXTRA.get(t, {})})
    for t in EVENT_TYPES["business"]:
        table[t] = MappingProxyType(dict(_BUSINESS))
    for t in EVENT_TYPES["admin_ui"]:
        table[t] = MappingProxyType({**_ADMIN_UI, **_ADMIN_UI_EXTRA.get(t, {})})
    for t in ("admin_setting_toggled", "admin_record_viewed"):
        table[t] = MappingProxyType(dict(_ADMIN_LOW_RISK))
    return MappingProxyType(table)


#: Event type → the properties allowed to reach PostHog, and how.
POSTHOG_PROPERTIES: Mapping[str, Mapping[str, Treatment]] = _build()

#: Fields that hold PII or free text in some schema: never ``KEEP`` (a contract test).
SENSITIVE_FIELDS: frozenset[str] = frozenset(
    {
        "recipient_email",
        "ip_address",
        "user_agent",
        "link_url",
        "bounce_reason",
        "reason",
        "filter_value",
        "before",
        "after",
        "message",
        "summary",
        "message_id",
    }
)

# -- pseudonyms and the last scan -------------------------------------------------------------
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
# Candidates only; ipaddress decides (a MAC or a time like 12:30:45 is not an IPv6).
_IPV6_RE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")


class Pseudonymizer:
    """HMAC-SHA256 pseudonyms under a secret key; ``None`` means "remove the value"."""

    PREFIX = "h:"

    def __init__(self, key: bytes | None) -> None:
        self._key = key or None
        self._repeated: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def __call__(self, value: str) -> str | None:
        if self._key is None:
            return None
        digest = hmac.new(self._key, value.strip().lower().encode(), hashlib.sha256).hexdigest()
        return self.PREFIX + digest[:32]  # 128 bits: collision-free at any realistic volume

    def scrub(self, text: str) -> str:
        """Replace every email- or IP-shaped substring of ``text`` by its pseudonym."""
        # Cheap guard first: most values (ids, enums) contain none of these characters.
        if "@" not in text and "." not in text and ":" not in text:
            return text
        text = _EMAIL_RE.sub(self._replacement, text)
        text = _IPV4_RE.sub(self._ip_replacement, text)
        if text.count(":") >= 2:
            text = _IPV6_RE.sub(self._ip_replacement, text)
        return text

    def scrub_repeated(self, text: str) -> str:
        """:meth:`scrub`, memoized for low-cardinality values (tenant ids, sources)."""
        found = self._repeated.get(text)
        if found is None:
            found = self.scrub(text)
            if len(self._repeated) < 100_000:
                self._repeated[text] = found
        return found

    def _replacement(self, match: re.Match[str]) -> str:
        return self(match.group(0)) or "[removed]"

    def _ip_replacement(self, match: re.Match[str]) -> str:
        candidate = match.group(0)
        try:
            ipaddress.ip_address(candidate.split("%", 1)[0])
        except ValueError:
            return candidate
        return self(candidate) or "[removed]"


LEAD_PREFIX = "l:"
LEAD_TARGET = "lead"  # an admin action's target_type when it acts on one lead


def lead_of(event: Mapping[str, Any]) -> str | None:
    """The lead an event is about: an email's lead, or the lead an admin action acts on
    (not an erasure request: it never leaves for product analytics)."""
    lead = event.get("lead_id")
    if lead is not None:
        return lead
    if event.get("target_type") == LEAD_TARGET and event["event_type"] != LEAD_ERASURE:
        return event.get("target_id") or None
    return None


def lead_pseudonym(secret: bytes, field: str, value: str) -> str:
    """The pseudonym of one of a lead's identifiers, under the lead's secret.

    Keyed BLAKE2b with a 128-bit output (a PRF like HMAC, RFC 7693; a third of HMAC-SHA256's
    cost on the hot path, three per email event). The field is part of the message, so a
    lead's id and its emails' ids never share a pseudonym; addresses are normalized like
    :class:`Pseudonymizer` does.
    """
    text = value.strip().lower() if field == "recipient_email" else value
    digest = hashlib.blake2b(f"{field}\x00{text}".encode(), key=secret, digest_size=16)
    return LEAD_PREFIX + digest.hexdigest()


class LeadPseudonyms:
    """:func:`lead_pseudonym` for the identifiers of one lead in one event, cheaper.

    Keying BLAKE2b costs a compression of its own (the key block): ~1.4 µs of the ~3 µs a
    pseudonym took, and an email event needs three or four under one secret. The secret
    is keyed in once here and the keyed state copied per identifier: the same pseudonyms,
    bit for bit. Made per event and dropped with it (never a cache of secrets).
    """

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        self._keyed = hashlib.blake2b(key=secret, digest_size=16)

    def __call__(self, field: str, value: str) -> str:
        text = value.strip().lower() if field == "recipient_email" else value
        digest = self._keyed.copy()
        digest.update(f"{field}\x00{text}".encode())
        return LEAD_PREFIX + digest.hexdigest()


def url_host(value: str) -> str | None:
    """Only the host of a URL (no user info, path, query or fragment)."""
    try:
        host = urlsplit(value.strip()).hostname
    except ValueError:
        return None
    return host or None


def allowed_properties(
    event: Mapping[str, Any],
    allow: Mapping[str, Treatment],
    pseudo: Pseudonymizer,
    lead_secret: bytes | LeadPseudonyms | None = None,
) -> dict[str, Any]:
    """The event's properties that may leave, treated; ``None`` values are left out.

    ``lead_secret``: the secret of the lead the event is about, or its
    :class:`LeadPseudonyms` (``LEAD`` fields are removed without one)."""
    out: dict[str, Any] = {}
    lead = lead_secret
    for name, treatment in allow.items():
        value = event.get(name)
        if value is None:
            continue
        if treatment is LEAD:
            if lead is not None:
                if not isinstance(lead, LeadPseudonyms):
                    lead = LeadPseudonyms(lead)
                out[name] = lead(name, str(value))
            continue  # a pseudonym needs no last scan
        if treatment is HASH:
            value = pseudo(str(value))
        elif treatment is URL_HOST:
            value = url_host(str(value))
        if value is None:
            continue
        out[name] = pseudo.scrub(value) if isinstance(value, str) else value
    return out


#: What :func:`compile_allowlist` returns: ``(event, pseudonymizer, lead pseudonyms or
#: None) -> properties``.
Builder = Callable[[Mapping[str, Any], Pseudonymizer, "LeadPseudonyms | None"], dict[str, Any]]

_TEMPLATES: Mapping[Treatment, str] = {
    KEEP: """\
    v = get({name})
    if v is not None:
        out[{name}] = scrub(v) if isinstance(v, str) else v
""",
    LEAD: """\
    v = get({name})
    if v is not None and lead is not None:
        out[{name}] = lead({name}, str(v))
""",
}
# a value made into another first (None: left out), then scanned
_MADE = """\
    v = get({name})
    if v is not None:
        v = {make}(str(v))
        if v is not None:
            out[{name}] = scrub(v)
"""
_MAKERS: Mapping[Treatment, str] = {HASH: "pseudo", URL_HOST: "url_host"}


def compile_allowlist(allow: Mapping[str, Treatment]) -> Builder:
    """:func:`allowed_properties` for one allowlist, as straight-line code: the same
    properties in the same order (a test compares the two on every event type).

    Written by hand because it is the PostHog route's hot path: the generic loop looked
    up and compared a treatment per allowed field of every event, a third of its cost. The
    source is generated from the allowlist's field names (each written as a ``repr``,
    never pasted) and the treatments' templates above; nothing of an event is.
    """
    lines = ["def allowed(event, pseudo, lead):", "    get = event.get", "    scrub = pseudo.scrub"]
    lines.append("    out = {}")
    for name, treatment in allow.items():
        if not isinstance(name, str) or not isinstance(treatment, Treatment):
            raise TypeError(f"an allowlist maps field names to treatments, not {name!r}")
        make = _MAKERS.get(treatment)
        template = _TEMPLATES[treatment] if make is None else _MADE
        lines.append(template.format(name=repr(name), make=make).rstrip("\n"))
    lines.append("    return out")
    namespace: dict[str, Any] = {"url_host": url_host}
    exec(compile("\n".join(lines), "<sluice allowlist>", "exec"), namespace)
    return cast(Builder, namespace["allowed"])
