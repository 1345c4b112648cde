"""Fault hooks for the fault-injection suite (``tests/faults``): dev tooling, never shipped.

``python -m dev.faults worker [ARGS]`` runs ``sluice worker`` with the OLAP client's writes
wrapped by :class:`FaultHooks`, configured from the environment (the product itself has
no hook and reads no such variable):

* ``SLUICE_FAULT_OLAP_FAIL_UNTIL=<epoch seconds>``: every insert into a catalog table
  fails, without writing, until that time (ClickHouse unavailable).
* ``SLUICE_FAULT_OLAP_AMBIGUOUS_EVERY=<n>``: every n-th flush (:meth:`OlapClient.write`)
  is *written* in full and then reported as failed (a timeout whose insert in fact
  succeeded).
* ``SLUICE_FAULT_LEGACY_KEYS=1``: the topic catalog keys every family by ``tenant_id``, as
  the releases before email-keyed email and warm-up topics did, so a worker (and ``sluice
  produce``) of this process builds state the way an old deployment did: the history that
  ``sluice topics rekey`` migrates (tests/faults/test_rekey.py).
* ``SLUICE_FAULT_STORE_HOLD_S=<seconds>``: every write of a partition's local store image
  (:meth:`streams.store.PartitionDB.write`: after the checkpoint's changelog and OLAP
  rows, before its commit) first waits that long, logging ``fault: image write held``,
  so a kill -9 can land inside a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sluice.olap.catalog import OLAP_TABLES
from sluice.olap.client import OlapClient, OlapError


class InjectedFault(OlapError):
    """A failure injected by :class:`FaultHooks`."""


class FaultHooks:
    """Fault injection for analytics inserts; off unless the variables above are set."""

    FAIL_UNTIL = "SLUICE_FAULT_OLAP_FAIL_UNTIL"
    AMBIGUOUS_EVERY = "SLUICE_FAULT_OLAP_AMBIGUOUS_EVERY"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.fail_until = float(env.get(self.FAIL_UNTIL) or 0)
        self.ambiguous_every = int(env.get(self.AMBIGUOUS_EVERY) or 0)
        self.flushes = 0
        self.injected = 0

    @property
    def active(self) -> bool:
        return bool(self.fail_until or self.ambiguous_every)

    def before(self, table: str) -> None:
        if table in OLAP_TABLES and self.fail_until and time.time() < self.fail_until:
            self.injected += 1
            raise InjectedFault(f"insert into {table} failed: injected: ClickHouse unavailable")

    def after_flush(self, tables: Sequence[str]) -> None:
        if not any(t in OLAP_TABLES for t in tables):
            return
        self.flushes += 1
        if self.ambiguous_every and self.flushes % self.ambiguous_every == 0:
            self.injected += 1
            raise InjectedFault(
                f"insert into {', '.join(tables)}: injected: written, reported as failed"
            )


@contextlib.contextmanager
def installed(hooks: FaultHooks) -> Iterator[FaultHooks]:
    """Wrap every :class:`OlapClient`'s inserts and flushes with ``hooks`` (this process)
    for the duration of the block."""
    insert, write = OlapClient.insert, OlapClient.write

    def faulty_insert(self: OlapClient, table: str, *args: Any, **kwargs: Any) -> str:
        hooks.before(table)
        return insert(self, table, *args, **kwargs)

    def faulty_write(self: OlapClient, batch: Mapping[str, Any]) -> None:
        write(self, batch)
        hooks.after_flush(list(batch))

    OlapClient.insert = faulty_insert  # type: ignore[method-assign]
    OlapClient.write = faulty_write  # type: ignore[method-assign]
    logging.getLogger("sluice.olap").warning(
        "TEST-ONLY OLAP fault injection is on: fail until %s, ambiguous every %s",
        hooks.fail_until or "-",
        hooks.ambiguous_every or "-",
    )
    try:
        yield hooks
    finally:
        OlapClient.insert, OlapClient.write = insert, write  # type: ignore[method-assign]


LEGACY_KEYS = "SLUICE_FAULT_LEGACY_KEYS"


def legacy_keys() -> None:
    """Key every family by tenant in this process (see the module docstring)."""
    from topics import catalog

    tenant = catalog.FamilyKey(("tenant_id",), "TEST-ONLY: the tenant key of older releases")
    catalog.FAMILY_KEYS = {family: tenant for family in catalog.FAMILY_KEYS}  # type: ignore[misc]
    logging.getLogger("sluice").warning("TEST-ONLY legacy keys: every family by tenant_id")


@contextlib.contextmanager
def store_held(seconds: float) -> Iterator[None]:
    """Every local store image write waits ``seconds`` first (this process)."""
    from streams.store import PartitionDB

    write = PartitionDB.write
    log = logging.getLogger("sluice.store")

    def held(self: PartitionDB, *args: Any, **kwargs: Any) -> Any:
        log.warning("fault: image write held %.1fs (partition %d)", seconds, self.partition)
        time.sleep(seconds)
        return write(self, *args, **kwargs)

    PartitionDB.write = held  # type: ignore[method-assign]
    log.warning("TEST-ONLY store fault injection is on: image writes held %.1fs", seconds)
    try:
        yield
    finally:
        PartitionDB.write = write  # type: ignore[method-assign]


def main() -> None:
    from cli import main as sluice

    sys.argv = ["sluice", *sys.argv[1:]]
    if os.environ.get(LEGACY_KEYS):
        legacy_keys()
    hooks = FaultHooks()
    hold = float(os.environ.get("SLUICE_FAULT_STORE_HOLD_S") or 0)
    with contextlib.ExitStack() as stack:
        if hooks.active:
            stack.enter_context(installed(hooks))
        if hold:
            stack.enter_context(store_held(hold))
        sluice()


if __name__ == "__main__":
    main()
