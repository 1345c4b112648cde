"""Erasure in the per-partition state: the requests, and the per-lead keys (pure logic).

:class:`ErasureRequests` turns each ``admin_lead_erasure_requested`` event into one record
for the erasure registry (:mod:`sluice.privacy`), handed to the checkpoint, which makes it
durable before the event's offset is committed (a crash replays the event and writes the
same record again). The registry, followed by every worker, then erases the lead on
every partition (:meth:`streams.engine.Engine.erase`).

:class:`LeadKeys` keeps one random secret per lead that events sent to PostHog carry
(or name, as the target of an admin action): the lead's identifiers leave as HMAC
pseudonyms under that secret (:mod:`sinks.pii`), never in clear. An erasure destroys the
secret, so nobody — Sluice's operators included — can tie what PostHog holds to the lead
any more. The secret lives in the partition's state and the changelog (the durable copy);
erasing it goes in two steps, so a deletion request to PostHog can still name the
pseudonym after a crash:

1. *erasing*: the registry named the lead; no event uses the secret any more (its events
   are not sent), the checkpoint asks PostHog to delete what it holds under the lead's
   pseudonym and records the answer in the registry;
2. *destroyed*: the answer is durable; the secret goes from memory and a tombstone goes
   to the changelog, so compaction removes every copy of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, MutableMapping, Set
from dataclasses import dataclass
from typing import Any

from sinks.pii import LEAD_TARGET, lead_of
from sluice.privacy import Erasure, Registry, lead_ref
from streams.state import Component, MapFactory, TablePart, Taken, memory_map, peek
from topics.taxonomy import LEAD_ERASURE


def erasure_of(event: Mapping[str, Any]) -> Erasure | None:
    """The registry record of an erasure request, or None if the event is not one."""
    if event["event_type"] != LEAD_ERASURE or event.get("target_type") != LEAD_TARGET:
        return None
    lead = event.get("target_id")
    if not lead:
        return None
    tenant = event["tenant_id"]
    return Erasure(tenant, lead_ref(tenant, lead), event["event_id"], int(event["occurred_at"]))


class ErasureRequests(Component):
    """Erasure requests of this partition's tenants → registry records (no state kept:
    the registry is the state, and a replayed request writes the same record)."""

    tag = "\x00erasure"
    families = frozenset({"admin_action"})

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], Erasure] = {}

    def parts(self) -> tuple[TablePart, ...]:
        return ()

    def apply(self, event: Mapping) -> bool:
        erasure = erasure_of(event)
        if erasure is None:
            return False
        self.pending.setdefault((erasure.tenant, erasure.ref), erasure)
        return True

    def take(self) -> Taken:
        pending, self.pending = self.pending, {}
        return Taken(registry=list(pending.values()))

    def requeue(self, taken: Taken) -> None:
        for erasure in taken.registry:
            self.pending.setdefault((erasure.tenant, erasure.ref), erasure)


# LeadKeys entry slots: [secret (hex), state]; its changelog entry is
# [tenant, lead ref] -> [secret, state, lead]: the key (which a tombstone keeps a while
# after compaction) names no lead, the value (compacted away) does
SECRET, STATE, LEAD = 0, 1, 2
ACTIVE, ERASING = 0, 1


class SecretMint:
    """New leads' secrets: 32 random bytes each from the OS's CSPRNG, as hex.

    ``secrets.token_hex(32)`` makes one ``getrandom`` call per lead, measured at ~6 µs
    of the hot loop per new lead (3.5 % of the worker's thread with PostHog on); this
    draws :data:`POOL` secrets' worth in one call and hands them out in order. The same
    source; a pooled secret is in the worker's memory a little earlier than it would be
    otherwise, where every lead's secret lives anyway."""

    POOL = 256

    __slots__ = ("_hex", "_at")

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = secrets.token_hex(32 * self.POOL), 0
        self._at = at + 64
        return self._hex[at : at + 64]


@dataclass(frozen=True)
class Forget:
    """One erased lead's secret, to name its pseudonym in deletion requests."""

    partition: int
    tenant: str
    lead: str
    ref: str
    secret: bytes


class LeadKeys(Component):
    """One random secret per lead this partition sent (or may send) to PostHog."""

    tag = "\x00leadkey"
    families = frozenset({"email", "admin_action"})

    def __init__(
        self,
        registry: Registry | None = None,
        new_map: MapFactory = memory_map,
        mint: Callable[[], str] | None = None,
        minting: bool = True,
    ) -> None:
        """``minting``: give new leads a secret (PostHog on); off, the secrets restored
        from the changelog (PostHog was on once) are still erased with their leads."""
        self.registry = registry
        self.minting = minting
        self.keys: MutableMapping[tuple[str, str], list] = new_map("leadkey/keys")
        # the keys being erased, kept beside the secrets (a reopened store knows them)
        self._erasing_kept: MutableMapping[tuple[str, str], int] = new_map("leadkey/erasing")
        self.mint = mint or SecretMint()
        self.dirty: set[tuple[str, str]] = set()
        self.destroyed: set[tuple[str, str]] = set()  # tombstones to write
        self.erasing: set[tuple[str, str]] = set()
        self._tombstoned: set[tuple[str, str]] = set()  # (tenant, ref) destroyed elsewhere
        self.asked: set[tuple[str, str]] = set()  # erasing keys a checkpoint is asking about

    def parts(self) -> tuple[TablePart, ...]:
        return ()

    def apply(self, event: Mapping) -> bool:
        if not self.minting:
            return False
        lead = lead_of(event)
        if lead is None:
            return False
        key = (event["tenant_id"], lead)
        if key in self.keys:  # the hot path: one lookup per event
            return False
        if self.registry is not None and self.registry.erased(key[0], lead):
            return False  # an erased lead never gets a secret again
        self.keys[key] = [self.mint(), ACTIVE]
        self.dirty.add(key)
        return True

    def secret(self, tenant: str, lead: str) -> bytes | None:
        """The lead's secret; None when it has none (erased, or never seen here)."""
        # peek: read once per PostHog event, never changed here (a get would count the
        # entry as changed and write it into the next local image again)
        entry = peek(self.keys, (tenant, lead))
        if entry is None or entry[STATE] != ACTIVE:
            return None
        return entry[SECRET].encode()

    def erase(self, tenant: str, refs: Set[str]) -> None:
        self.erase_many({tenant: refs})

    def _erasing(self, key: tuple[str, str]) -> None:
        entry = self.keys[key]
        entry[STATE] = ERASING
        self.keys[key] = entry
        self.erasing.add(key)
        self._erasing_kept[key] = 1
        self.dirty.add(key)

    def to_forget(self, partition: int) -> list[Forget]:
        """Erasing secrets no checkpoint is asking about yet (marks them asked)."""
        out = []
        for key in sorted(self.erasing - self.asked):
            entry = self.keys.get(key)
            if entry is None:
                continue
            out.append(Forget(partition, key[0], key[1], lead_ref(*key), entry[SECRET].encode()))
            self.asked.add(key)
        return out

    def forgotten(self, key: tuple[str, str], done: bool) -> None:
        """A checkpoint asked about ``key``: ``done`` (the answer is durable) destroys the
        secret; else it is asked about again at a later checkpoint."""
        self.asked.discard(key)
        if not done or key not in self.erasing:
            return
        self.erasing.discard(key)
        self._erasing_kept.pop(key, None)
        self.keys.pop(key, None)
        self.dirty.discard(key)
        self.destroyed.add(key)

    def take(self) -> Taken:
        changed = sorted(self.dirty)
        gone = sorted(self.destroyed)
        self.dirty.clear()
        self.destroyed.clear()
        changelog: list[tuple[list, list | None]] = [
            ([t, lead_ref(t, lead)], [*self.keys[(t, lead)], lead])
            for t, lead in changed
            if (t, lead) in self.keys
        ]
        changelog += [([t, lead_ref(t, lead)], None) for t, lead in gone]
        return Taken(changelog=changelog, token=(changed, gone))

    def requeue(self, taken: Taken) -> None:
        changed, gone = taken.token
        self.dirty.update(k for k in changed if k in self.keys)
        self.destroyed.update(k for k in gone if k not in self.keys)

    def restore(self, key: list, value: list) -> None:
        tenant, lead = key[0], str(value[LEAD])
        entry = [str(value[SECRET]), int(value[STATE])]
        self.keys[(tenant, lead)] = entry
        if entry[STATE] == ERASING:
            self.erasing.add((tenant, lead))
            self._erasing_kept[(tenant, lead)] = 1
        elif self.registry is not None and self.registry.erased(tenant, lead):
            self._erasing((tenant, lead))  # erased while its partition was elsewhere

    def forget(self, key: list) -> None:
        """A destroyed secret's tombstone (``[tenant, lead ref]``), joined over a store that
        may still hold it: it goes at :meth:`restored` (one walk for every tombstone)."""
        self._tombstoned.add((str(key[0]), str(key[1])))

    def restored(self) -> None:
        gone = self._tombstoned
        if not gone:
            return
        self._tombstoned = set()
        found = [key for key in list(self.keys) if (key[0], lead_ref(*key)) in gone]
        for key in found:
            self.keys.pop(key, None)
            self.erasing.discard(key)
            self._erasing_kept.pop(key, None)
            self.dirty.discard(key)

    def keeps_state_in_store(self) -> bool:
        return not isinstance(self.keys, dict)

    def reopened(self) -> None:
        self.erasing = set(self._erasing_kept)

    def erase_many(self, by_tenant: Mapping[str, Set[str]]) -> None:
        found = [
            key
            for key, entry in self.keys.items()
            if entry[STATE] == ACTIVE
            and key[0] in by_tenant
            and lead_ref(*key) in by_tenant[key[0]]
        ]
        for key in found:
            self._erasing(key)

    def holds(self, tenant: str, lead: str) -> dict[str, int]:
        entry = peek(self.keys, (tenant, lead))
        if entry is None:
            return {}
        return {"lead_key_erasing" if entry[STATE] == ERASING else "lead_key": 1}

    def stats(self) -> dict[str, int]:
        return {"lead_keys": len(self.keys), "lead_keys_erasing": len(self.erasing)}

    def close(self) -> None:
        for m in (self.keys, self._erasing_kept):
            if not isinstance(m, dict):
                m.store.forget(m)  # type: ignore[attr-defined]
