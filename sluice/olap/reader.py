"""The query path's own connection to the OLAP store: every read checked, bounded, alone.

Guarantee: a read never holds up a write. The writer (:class:`sluice.olap.OlapClient`,
the checkpoint's) and this reader share nothing: not the clickhouse-connect client, not
its lock, not the executor. chDB runs queries of two handles on one engine at once and
releases the GIL while it does (measured: inserts p50 12–28 ms while reads ran back to
back on another handle, p50 1.2–2.8 s through the writer's own; figures in
:mod:`sluice.olap.readguard`), so the writer only ever competes for CPU, and every read
stops at ``max_execution_time``.

* Every SQL text goes through :func:`~sluice.olap.readguard.check_read`; what runs is the
  normalized statement, with :func:`~sluice.olap.readguard.read_settings` per query.
* One read at a time per reader: a second one is refused at once (:class:`ReadBusy`),
  never queued behind a slow one. :meth:`OlapReader.query_async` runs reads on the
  reader's own one-thread executor, never on the loop's default executor, which the
  checkpoint uses.
* chDB keeps what a failed query had already produced in the handle's buffer and hands
  it out with the next query's result (measured on 26.9: after a timeout, ``SELECT 42``
  returned ``7, 42``): after any failed read the handle is closed and a fresh one opened.
* A server: its own HTTP client without a session (a timed-out query must not lock one),
  read timeout ``max_execution_time + 5`` s; the settings go as URL parameters (per
  ClickHouse's SettingsConstraints a request's settings are checked against the user's
  before any applies, so ``readonly=1`` and the limits arrive together; not measured here:
  no server on this machine), and a setting the server's user may not change is accepted
  only when its profile already holds a value as strict (else the reader refuses to
  open: fail closed). Best in production: a user of its own for reads, profile
  ``readonly=1`` with the limits in the profile (the reader then sends nothing), or
  ``readonly=2`` with constraints (``<max_execution_time><max>10</max>``...), and
  ``GRANT SELECT`` on the catalog's tables and views only.
* Before the read runs, ClickHouse parses the checked text (``parseQueryToJSON``, ~4 ms
  on chDB) and :func:`~sluice.olap.readguard.check_engine_ast` checks the engine's own AST;
  a server without that function gets sqlglot's check and ``readonly`` only, with a
  warning.

Wiring (one reader per process, beside the writer)::

    reader = open_reader(settings)
    columns, rows = await reader.query_async(sql)   # the worker's query endpoint
    columns, rows = reader.query(sql)               # the CLI
    # ReadBusy -> 429, ReadRefused (incl. ReadLimitExceeded) -> 400, OlapError -> 502
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sluice.olap.client import OlapError, chdb_path
from sluice.olap.readguard import (
    ENGINE_AST_SQL,
    ReadRefused,
    catalog_relations,
    check_engine_ast,
    check_read,
    read_settings,
)
from sluice.settings import Settings, redact_url

log = logging.getLogger("sluice.olap.reader")


class ReadBusy(ReadRefused):
    """Another read is running on this reader (answer HTTP 429 / try again)."""


class ReadLimitExceeded(ReadRefused):
    """The read ran into one of its limits (time, result size, memory)."""


@dataclass(frozen=True)
class ReadLimits:
    """The bounds of every read (see :func:`sluice.olap.readguard.read_settings`)."""

    max_execution_time_s: float = 10.0
    max_result_rows: int = 100_000
    max_result_bytes: int = 64 * 2**20
    max_memory_usage: int = 1 * 2**30
    max_threads: int = 1

    def settings(self) -> dict[str, int | float | str]:
        return read_settings(
            self.max_execution_time_s,
            self.max_result_rows,
            self.max_result_bytes,
            max_memory_usage=self.max_memory_usage,
            max_threads=self.max_threads,
        )


# Settings a read cannot go without: if the server's user may not set one, its profile
# must already hold a value at least as strict.
_REQUIRED = frozenset(
    {
        "readonly",
        "max_execution_time",
        "timeout_overflow_mode",
        "max_result_rows",
        "max_result_bytes",
        "result_overflow_mode",
        "max_memory_usage",
    }
)
_CODE = re.compile(r"\bCode:\s*(\d+)")
TIMEOUT_EXCEEDED, TOO_MANY_ROWS_OR_BYTES, MEMORY_LIMIT_EXCEEDED, READONLY = 159, 396, 241, 164
UNKNOWN_FUNCTION = 46


def effective_settings(
    wanted: Mapping[str, int | float | str], server: Mapping[str, Any]
) -> dict[str, int | float | str]:
    """The settings to send, given what the server's user may change.

    ``server`` is clickhouse-connect's ``client.server_settings`` (name → an object with
    ``value`` and ``readonly``). A setting the server does not know is dropped unless
    required; one the user may not change is dropped when the profile already satisfies
    it, else :class:`OlapError` (the reader would run without that bound).
    """
    out: dict[str, int | float | str] = {}
    for name, value in wanted.items():
        known = server.get(name)
        if known is None:
            if name in _REQUIRED:
                raise OlapError(f"the ClickHouse server has no setting {name}; reads need it")
            continue
        if not getattr(known, "readonly", 0):
            out[name] = value
        elif name in _REQUIRED and not _satisfied(name, str(known.value), value):
            raise OlapError(
                f"the ClickHouse user for reads cannot set {name} and its profile has "
                f"{name}={known.value}; reads need {value} (set it in the user's profile)"
            )
    return out


def _satisfied(name: str, current: str, wanted: int | float | str) -> bool:
    if name == "readonly":
        return current not in ("", "0")
    if isinstance(wanted, str):
        return current == wanted
    try:
        value = float(current)
    except ValueError:
        return False
    return 0 < value <= float(wanted)  # 0 is "unlimited"


class OlapReader:
    """Checked, bounded reads on their own connection (see the module docstring).

    ``url`` is ``CLICKHOUSE_URL``; ``options`` go to clickhouse-connect for a server
    (credentials, TLS: :func:`sluice.olap.client.clickhouse_options`) — give the reader its
    own read-only user there if you can. ``allowed`` defaults to the OLAP catalog's
    relations.
    """

    def __init__(
        self,
        url: str,
        *,
        allowed: Collection[str] | None = None,
        limits: ReadLimits | None = None,
        **options: Any,
    ) -> None:
        self.url = url
        self.allowed = frozenset(catalog_relations() if allowed is None else allowed)
        self.limits = limits or ReadLimits()
        self._options = options
        self._client: Any = None
        self._settings: dict[str, int | float | str] = {}
        self._lock = threading.Lock()  # one read at a time; never the writer's lock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sluice-read")
        self._closed = False
        self._engine_ast = True  # cleared for servers without parseQueryToJSON

    @property
    def is_embedded(self) -> bool:
        return chdb_path(self.url) is not None

    def query(self, sql: str, *, wait_s: float = 0.0) -> tuple[list[str], list[tuple]]:
        """Check and run one read; return (column names, rows).

        Raises :class:`ReadRefused` (the guard or a limit; one line), :class:`ReadBusy`
        when another read does not finish within ``wait_s``, :class:`OlapError` else.
        """
        acquired = self._lock.acquire(timeout=wait_s) if wait_s > 0 else self._lock.acquire(False)
        if not acquired:
            raise ReadBusy("refused: another read is running (one at a time); try again")
        try:
            return self._run(sql)
        finally:
            self._lock.release()

    async def query_async(self, sql: str) -> tuple[list[str], list[tuple]]:
        """:meth:`query` on the reader's own thread; refused at once when one is running."""
        if not self._lock.acquire(False):
            raise ReadBusy("refused: another read is running (one at a time); try again")
        future = self._executor.submit(self._run_and_release, sql)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancel():  # never started, so it will not release the lock itself
                self._lock.release()
            raise

    def close(self) -> None:
        """Wait for the running read (bounded by its timeout), then close."""
        with self._lock:
            self._closed = True
            self._reset()
        self._executor.shutdown(wait=False)

    # -- internals ---------------------------------------------------------------------

    def _run_and_release(self, sql: str) -> tuple[list[str], list[tuple]]:
        try:
            return self._run(sql)
        finally:
            self._lock.release()

    def _run(self, sql: str) -> tuple[list[str], list[tuple]]:
        if self._closed:
            raise OlapError("the reader is closed")
        checked = check_read(sql, self.allowed)  # before touching the store
        client = self._connected()
        if self._engine_ast:
            ast = self._engine(client, ENGINE_AST_SQL, parameters={"sql": checked})
            if ast is not None:
                check_engine_ast(ast.result_rows[0][0], self.allowed)
        result = self._engine(client, checked)
        assert result is not None
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    def _engine(self, client: Any, sql: str, parameters: dict[str, str] | None = None) -> Any:
        """One engine call with the read settings, its rows read; errors as refusals."""
        try:
            result = client.query(sql, parameters=parameters, settings=self._settings)
            result.result_rows  # noqa: B018 -- decode now: a stream error surfaces here
            return result
        except Exception as exc:
            if self.is_embedded:
                self._reset()  # chDB: the failed query's output would leak into the next
            if parameters is not None and _code(exc) == UNKNOWN_FUNCTION:
                # a server before parseQueryToJSON: sqlglot's check and readonly remain
                log.warning("the ClickHouse server has no parseQueryToJSON: sqlglot checks only")
                self._engine_ast = False
                return None
            raise self._refusal(exc) from None

    def _connected(self) -> Any:
        if self._client is not None:
            return self._client
        import clickhouse_connect

        try:
            path = chdb_path(self.url)
            if path is not None:
                if not path.is_dir():
                    raise OlapError(f"no OLAP store at {path} (run `sluice olap migrate`)")
                client = clickhouse_connect.get_client(interface="chdb", path=str(path))
            else:
                scheme = urlparse(self.url).scheme
                if scheme not in {"http", "https"}:
                    raise OlapError(f"unsupported CLICKHOUSE_URL scheme {scheme!r}")
                client = clickhouse_connect.get_client(
                    dsn=self.url,
                    interface=scheme,
                    autogenerate_session_id=False,
                    connect_timeout=5,
                    send_receive_timeout=math.ceil(self.limits.max_execution_time_s) + 5,
                    **self._options,
                )
        except OlapError:
            raise
        except Exception as exc:
            detail = str(exc)
            for secret in (urlparse(self.url).password, self._options.get("password")):
                if secret:
                    detail = detail.replace(secret, "***")
            raise OlapError(f"cannot open ClickHouse at {redact_url(self.url)}: {detail}") from None
        try:
            self._settings = effective_settings(self.limits.settings(), client.server_settings)
        except OlapError:
            with contextlib.suppress(Exception):
                client.close()
            raise
        self._client = client
        return client

    def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # best effort: a fresh handle comes next
                client.close()

    def _refusal(self, exc: Exception) -> Exception:
        """The engine's error as one line, naming the limit when one was hit."""
        message = str(exc).strip()
        start = message.find("Code: ")
        message = (message[start:] if start > 0 else message).splitlines()[0] if message else ""
        code = _code(exc)
        limits = self.limits
        if code == TIMEOUT_EXCEEDED:
            return ReadLimitExceeded(
                f"refused: the read ran longer than {limits.max_execution_time_s:g} s "
                "(max_execution_time)"
            )
        if code == TOO_MANY_ROWS_OR_BYTES:
            return ReadLimitExceeded(
                f"refused: the result is over {limits.max_result_rows} rows or "
                f"{limits.max_result_bytes // 2**20} MiB (add a LIMIT or aggregate)"
            )
        if code == MEMORY_LIMIT_EXCEEDED:
            return ReadLimitExceeded(
                f"refused: the read needs more than {limits.max_memory_usage // 2**20} MiB "
                "(max_memory_usage)"
            )
        if code == READONLY:
            return ReadRefused(f"refused by the engine's read-only mode: {message[:200]}")
        return OlapError(message[:500] or type(exc).__name__)


def _code(exc: Exception) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match[1]) if match else None


def open_reader(settings: Settings) -> OlapReader:
    """The reader the settings describe (``CLICKHOUSE_URL`` and the ``SLUICE_QUERY_*``
    limits; a server's credentials and TLS as the writer's)."""
    from sluice.olap.client import clickhouse_options

    limits = ReadLimits(
        max_execution_time_s=settings.sluice_query_timeout_s,
        max_result_rows=settings.sluice_query_max_rows,
        max_result_bytes=settings.sluice_query_max_bytes,
    )
    return OlapReader(settings.clickhouse_url, limits=limits, **clickhouse_options(settings))
