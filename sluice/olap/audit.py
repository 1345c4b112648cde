"""The compliance audit log: row format, secret masking, hash chain and its verifier.

Pure functions; the worker builds rows with them (:mod:`streams.compliance`) and
``sluice audit verify`` checks what the warehouse holds with them.

The chain
---------
Each tenant's ``admin_audit_log`` rows are numbered ``seq = 1, 2, 3, ...`` without gaps.
Every row carries ``prev_hash`` (the previous row's ``row_hash``; 64 zeros for seq 1) and
``row_hash = sha256(canonical(row))``, where :func:`canonical` serializes the row's fields
(:data:`HASHED_FIELDS`, timestamps as epoch milliseconds) and ``prev_hash`` as compact JSON.
Altering a row breaks its own hash; recomputing that hash breaks the next row's link;
removing a row leaves a gap; inserting one collides with a sequence number or breaks a link.
What a plain hash chain cannot show alone is a truncated tail (the last rows removed) or a
rewritten suffix: compare the head :func:`verify` reports with a copy kept elsewhere (the
SIEM receives every compliance event) to cover those.

Summaries never hold secrets: :func:`summarize` masks every value whose key looks like a
credential (password, token, secret, key, ...) or whose value looks like one (a JWT, a PEM
block, a bearer token, well-known API key prefixes), and bounds value lengths.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
HASH_SCHEME = "sluice-audit-v1"  # bump (and verify by scheme) if the canonical form changes

#: Row fields covered by ``row_hash``, in canonical order (``occurred_at`` as epoch ms).
HASHED_FIELDS: tuple[str, ...] = (
    "tenant_id",
    "seq",
    "event_id",
    "occurred_at",
    "action",
    "actor_user_id",
    "impersonator_user_id",
    "target_type",
    "target_id",
    "before_summary",
    "after_summary",
    "reason",
    "source",
    "prev_hash",
)

#: admin_audit_log columns, in table order.
AUDIT_COLUMNS: tuple[str, ...] = (*HASHED_FIELDS, "row_hash")

MASK = "[redacted]"
MAX_VALUE_CHARS = 256

# Key words that mark a credential. Matched against the words of a key
# ("newApiKey" -> new, api, key), so "monkey" is not a secret but "api_key" is.
# fmt: off
SECRET_KEY_WORDS: frozenset[str] = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token", "tokens",
        "key", "keys", "apikey", "credential", "credentials", "cookie", "cookies",
        "signature", "otp", "totp", "pin", "private", "privatekey", "authorization",
        "bearer", "jwt", "session", "salt", "seed", "mnemonic",
    }
)
# fmt: on
# Values that are credentials whatever their key.
SECRET_VALUE = re.compile(
    r"eyJ[\w-]{5,}\.[\w-]{5,}\."  # JWT
    r"|-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)"  # PEM
    r"|\bBearer\s+\S+"
    r"|\b(sk|rk|pk)_(live|test)_\w+"  # Stripe-style keys
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_\w{20,}"  # GitHub tokens
    r"|\bxox[abpr]-[\w-]+",  # Slack tokens
    re.IGNORECASE,
)
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def key_words(key: str) -> list[str]:
    """The lower-case words of a key: ``newApiKey`` / ``new-api_key`` -> new, api, key."""
    words = [w.lower() for w in _WORDS.findall(key)]
    # "apikey", "privatekey" also as one word
    return words + ["".join(words[i : i + 2]) for i in range(len(words) - 1)]


def is_secret_key(key: str) -> bool:
    """True if a summary key names a credential (its value must not be stored)."""
    return any(word in SECRET_KEY_WORDS for word in key_words(key))


def mask_value(key: str, value: Any) -> str:
    """The value as stored in a summary: masked if secret, bounded in length."""
    text = "" if value is None else str(value)
    if is_secret_key(key) or SECRET_VALUE.search(text):
        return MASK
    if len(text) > MAX_VALUE_CHARS:
        return text[: MAX_VALUE_CHARS - 1] + "…"
    return text


def summarize(state: Mapping[str, Any] | None) -> str:
    """A before/after summary as canonical JSON (sorted keys), secrets masked."""
    masked = {str(k): mask_value(str(k), v) for k, v in (state or {}).items()}
    return json.dumps(masked, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes ``row_hash`` covers: the scheme and :data:`HASHED_FIELDS` as compact JSON."""
    values = [HASH_SCHEME, *(row[f] for f in HASHED_FIELDS)]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()


def row_hash(row: Mapping[str, Any]) -> str:
    """sha256 hex of :func:`canonical`."""
    return hashlib.sha256(canonical(row)).hexdigest()


#: Fields of an erasure request (admin_action v2) kept in its row's ``after_summary``: who
#: asked and under which law; the lead itself is the row's target (docs/erasure.md).
ERASURE_FIELDS: tuple[str, ...] = ("requested_by", "legal_basis")


def audit_row(event: Mapping[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """The admin_audit_log row of one decoded compliance event (``occurred_at`` in ms).

    The admin's IP address is not kept (PII; the SIEM has it); nor are export sizes and
    scopes, which go to sensitive_access_log. An erasure request's ``requested_by`` and
    ``legal_basis`` join its after summary (the hashed columns stay the same, so the
    chain's scheme does not change).
    """
    after = event.get("after")
    extra = {f: event[f] for f in ERASURE_FIELDS if event.get(f)}
    if extra:
        after = {**(after or {}), **extra}
    row: dict[str, Any] = {
        "tenant_id": event["tenant_id"],
        "seq": seq,
        "event_id": event["event_id"],
        "occurred_at": int(event["occurred_at"]),
        "action": event["event_type"],
        "actor_user_id": event.get("user_id"),
        "impersonator_user_id": event.get("impersonator_user_id"),
        "target_type": event.get("target_type"),
        "target_id": event.get("target_id"),
        "before_summary": summarize(event.get("before")),
        "after_summary": summarize(after),
        "reason": event.get("reason"),
        "source": event["source"],
        "prev_hash": prev_hash,
    }
    row["row_hash"] = row_hash(row)
    return row


def ms_to_datetime(ms: int) -> datetime:
    """Epoch ms as an aware UTC datetime (what DateTime64 columns take)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------

# Reads hash inputs as plain values: occurred_at as epoch ms, no Map/Date objects, so rows
# come back identical through the worker's JSON endpoint and through a direct client.
VERIFY_SQL = (
    "SELECT tenant_id, seq, event_id, toUnixTimestamp64Milli(occurred_at) AS occurred_at, "
    "action, actor_user_id, impersonator_user_id, target_type, target_id, before_summary, "
    "after_summary, reason, source, prev_hash, row_hash "
    "FROM admin_audit_log FINAL {where} ORDER BY tenant_id, seq"
)
# Rows FINAL hides: two different rows claiming one (tenant, seq) mean one was inserted.
CONFLICTS_SQL = (
    "SELECT tenant_id, seq, uniqExact(row_hash) AS versions FROM admin_audit_log {where} "
    "GROUP BY tenant_id, seq HAVING versions > 1 ORDER BY tenant_id, seq"
)


def sql_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def where_tenant(tenant: str | None) -> str:
    return f"WHERE tenant_id = {sql_string(tenant)}" if tenant is not None else ""


@dataclass(frozen=True)
class Break:
    """The first broken link of one tenant's chain."""

    seq: int
    kind: str  # altered | missing | inserted | broken_link | duplicate_event
    detail: str


@dataclass(frozen=True)
class TenantReport:
    """The verdict on one tenant's chain."""

    tenant: str
    rows: int
    head_seq: int
    head_hash: str
    first_break: Break | None

    @property
    def ok(self) -> bool:
        return self.first_break is None


def verify_tenant(
    tenant: str, rows: Iterable[Mapping[str, Any]], conflicting_seqs: Iterable[int] = ()
) -> TenantReport:
    """Walk one tenant's rows (one per seq, as FINAL returns them) and find the first break."""
    ordered = sorted(rows, key=lambda r: int(r["seq"]))
    breaks: list[Break] = [
        Break(int(s), "inserted", f"seq {s} has several different rows (a row was inserted)")
        for s in conflicting_seqs
    ]
    expected, prev = 1, GENESIS_HASH
    seen_events: dict[str, int] = {}
    head_seq, head_hash = 0, GENESIS_HASH
    for row in ordered:
        seq = int(row["seq"])
        if seq > expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            breaks.append(Break(expected, "missing", f"seq {missing} missing (a row was removed)"))
            break
        if seq < expected:  # only without FINAL
            breaks.append(Break(seq, "inserted", f"seq {seq} appears twice"))
            break
        if row_hash({**row, "seq": seq, "occurred_at": int(row["occurred_at"])}) != row["row_hash"]:
            breaks.append(
                Break(seq, "altered", f"seq {seq}: content does not match its row_hash (altered)")
            )
            break
        if row["prev_hash"] != prev:
            breaks.append(
                Break(
                    seq,
                    "broken_link",
                    f"seq {seq}: prev_hash does not match seq {seq - 1}'s row_hash "
                    "(a row before it was altered, replaced or inserted)",
                )
            )
            break
        event_id = row["event_id"]
        if event_id in seen_events:
            breaks.append(
                Break(
                    seq,
                    "duplicate_event",
                    f"seq {seq}: event {event_id} already recorded at seq {seen_events[event_id]} "
                    "(a row was inserted)",
                )
            )
            break
        seen_events[event_id] = seq
        prev = row["row_hash"]
        head_seq, head_hash = seq, prev
        expected += 1
    first = min(breaks, key=lambda b: b.seq) if breaks else None
    return TenantReport(tenant, len(ordered), head_seq, head_hash, first)


def verify(
    rows: Iterable[Mapping[str, Any]], conflicts: Iterable[tuple[str, int]] = ()
) -> list[TenantReport]:
    """Verify every tenant's chain; ``conflicts`` are (tenant, seq) with several rows."""
    by_tenant: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_tenant[row["tenant_id"]].append(row)
    conflicting: dict[str, list[int]] = defaultdict(list)
    for tenant, seq in conflicts:
        conflicting[tenant].append(int(seq))
        by_tenant.setdefault(tenant, [])
    return [
        verify_tenant(tenant, by_tenant[tenant], conflicting.get(tenant, ()))
        for tenant in sorted(by_tenant)
    ]
