"""One ClickHouse client for both backends: embedded chDB (``chdb://PATH``) and a server
(``http(s)://user:pass@host:port/db``), through clickhouse-connect — the same code path.

chDB hosts one engine per process and its store is single-writer: the worker owns it.
Other processes read through the worker's HTTP endpoint (see ``sluice olap query``).

Written for a ClickHouse server, not for what chDB forgives:

* every insert states its settings (:func:`insert_settings`): synchronous
  (``async_insert=0``: an async insert ignores the deduplication token unless
  ``async_insert_deduplicate`` is on and may acknowledge before the data is durable; the
  worker already batches a whole checkpoint per insert, which is what async inserts are
  for), deduplication on with a deterministic token, ``wait_end_of_query`` so an error is
  never hidden behind a 200 already sent, and on a cluster ``insert_quorum='auto'`` (a
  majority of replicas has the rows before the insert returns);
* no HTTP session (``autogenerate_session_id=False``): sessions belong to one server, and
  behind a load balancer the next request may reach another; nothing Sluice runs needs
  session state;
* timeouts (``CLICKHOUSE_TIMEOUT_S``) well under what a checkpoint can wait: a server that
  stops answering fails the checkpoint, which is retried, instead of holding it.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import orjson
from clickhouse_connect.driver.client import Client

from sluice.olap.catalog import INTERNAL_TABLES, OLAP_TABLES
from sluice.settings import Settings, redact_url


class OlapError(RuntimeError):
    """A ClickHouse operation failed (message says which and why)."""


def chdb_path(url: str) -> Path | None:
    """The filesystem path of a ``chdb://`` URL (relative paths resolve from the cwd)."""
    if not url.startswith("chdb://"):
        return None
    raw = url[len("chdb://") :] or "./var/olap"
    return Path(raw).expanduser().resolve()


def clickhouse_options(settings: Settings) -> dict[str, Any]:
    """Extra clickhouse-connect ``get_client`` options (credentials, TLS) for server URLs."""
    s = settings
    options: dict[str, Any] = {}
    if s.clickhouse_url.startswith("chdb://"):
        return options
    if s.clickhouse_user:
        options["username"] = s.clickhouse_user
    if s.clickhouse_password is not None:
        options["password"] = s.clickhouse_password.get_secret_value()
    if s.clickhouse_url.startswith("https://"):
        options["verify"] = s.clickhouse_verify
        if s.clickhouse_ca_file:
            options["ca_cert"] = s.clickhouse_ca_file
    return options


def open_store(settings: Settings) -> OlapClient:
    """The OLAP store the settings name (``CLICKHOUSE_URL`` with credentials and TLS)."""
    return connect(
        settings.clickhouse_url,
        cluster=settings.clickhouse_cluster,
        timeout_s=settings.clickhouse_timeout_s,
        **clickhouse_options(settings),
    )


def insert_settings(token: str, cluster: str | None = None) -> dict[str, Any]:
    """The settings of every insert (see the module docstring)."""
    settings: dict[str, Any] = {
        "async_insert": 0,
        "insert_deduplicate": 1,
        "insert_deduplication_token": token,
    }
    if cluster:
        settings.update(insert_quorum="auto", insert_quorum_parallel=1)
    return settings


def connect(
    url: str, *, cluster: str | None = None, timeout_s: float = 30.0, **options: Any
) -> OlapClient:
    """Open the OLAP store named by ``url``.

    ``options`` go to clickhouse-connect for server URLs (credentials, TLS: see
    :func:`clickhouse_options`); the embedded store ignores them. ``cluster``: the tables
    are replicated on that cluster (inserts wait for a quorum).
    """
    try:
        path = chdb_path(url)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(interface="chdb", path=str(path))
        else:
            parsed = urlparse(url)
            if parsed.scheme not in {"http", "https"}:
                raise OlapError(f"unsupported CLICKHOUSE_URL scheme {parsed.scheme!r}")
            # interface: clickhouse-connect takes TLS from the port (443/8443), not the
            # DSN's scheme, so https://host:8123 would otherwise be plain HTTP
            client = clickhouse_connect.get_client(
                dsn=url,
                interface=parsed.scheme,
                autogenerate_session_id=False,
                connect_timeout=min(5.0, timeout_s / 6),
                send_receive_timeout=timeout_s,
                settings={"wait_end_of_query": 1},
                **options,
            )
    except OlapError:
        raise
    except Exception as exc:  # the drivers raise many kinds; one clear message here
        detail = str(exc)
        for secret in (urlparse(url).password, options.get("password")):
            if secret:
                detail = detail.replace(secret, "***")
        raise OlapError(f"cannot open ClickHouse at {redact_url(url)}: {detail}") from None
    if path is not None:
        _import_insert_dependencies()
    else:
        without_dataframes()
    return OlapClient(client, url, cluster)


def _import_insert_dependencies() -> None:
    """Import pandas now, if installed, rather than at the first insert (embedded store).

    clickhouse-connect imports pandas lazily inside its first ``insert()`` (to check
    whether the rows are a DataFrame). That import holds the GIL for ~0.7 s, which in the
    worker lands in its first checkpoint while events are flowing: 7 % of the worker's
    samples in a 200,000-event bench run (py-spy, 2026-12-02). At start-up it costs the
    same once, before any event is taken. chDB needs pandas and pyarrow itself.
    """
    with contextlib.suppress(ImportError):
        import pandas  # noqa: F401


def without_dataframes() -> bool:
    """Keep clickhouse-connect from importing pandas and numpy for a server client.

    Sluice inserts plain lists, never DataFrames or arrays, but clickhouse-connect's
    insert asks ``options.pd`` / ``options.np`` whether the rows are one, and that first
    question imports pandas and numpy (73 MiB of the worker's RSS, ``python -m
    bench.footprint``) wherever they are installed — in the image they are, for chDB.

    XXX A debt: ``clickhouse_connect.driver.options`` resolves ``pd`` and ``np`` lazily
    through a module ``__getattr__`` and caches them as module globals (tested with
    clickhouse-connect 1.12); setting them to None first answers "not installed". Only
    done while neither was resolved yet (nothing else in the process asked), so a process
    that uses pandas keeps it; ``tests/contract/test_olap_client.py`` checks the
    mechanism is still there. Returns True when it took effect.
    """
    from clickhouse_connect.driver import options

    names = vars(options)
    if "pd" in names or "np" in names or "pandas" in sys.modules or "numpy" in sys.modules:
        return False
    options.pd = None  # type: ignore[attr-defined]
    options.pd_time_test = None  # type: ignore[attr-defined]
    options.np = None  # type: ignore[attr-defined]
    return True


class OlapClient:
    """Thin wrapper: catalog-guarded idempotent inserts, commands and queries.

    Calls are serialized by a lock, so the worker may call from an executor thread.
    """

    def __init__(self, client: Client, url: str, cluster: str | None = None) -> None:
        self._client = client
        self.url = url
        self.cluster = cluster
        self._lock = threading.Lock()

    @property
    def is_embedded(self) -> bool:
        return self.url.startswith("chdb://")

    def command(self, sql: str) -> Any:
        with self._lock:
            try:
                return self._client.command(sql)
            except Exception as exc:
                raise OlapError(str(exc)) from exc

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple]]:
        """Run a query; return (column names, rows)."""
        with self._lock:
            try:
                result = self._client.query(sql, parameters=parameters)
            except Exception as exc:
                raise OlapError(str(exc)) from exc
            return list(result.column_names), [tuple(r) for r in result.result_rows]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        """Insert rows idempotently; return the deduplication token used.

        The token is a hash of the table, columns and rows, so replaying the same flush
        (after a timeout whose insert in fact succeeded, say) is dropped by ClickHouse
        (every catalog table keeps a deduplication window: :mod:`sluice.olap.ddl`).
        """
        if table not in OLAP_TABLES and table not in INTERNAL_TABLES:
            raise OlapError(f"refusing to write {table!r}: not in the OLAP catalog")
        token = dedup_token(table, columns, rows)
        with self._lock:
            try:
                self._client.insert(
                    table,
                    rows,
                    column_names=list(columns),
                    settings=insert_settings(token, self.cluster),
                )
            except Exception as exc:
                raise OlapError(f"insert into {table} failed: {exc}") from exc
        return token

    def write(self, batch: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]]) -> None:
        """One flush: :meth:`insert` each table's ``(columns, rows)``; raises on any failure
        (some tables may then be written: every insert is idempotent, retry the lot)."""
        for table, (columns, rows) in batch.items():
            self.insert(table, columns, rows)

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):  # closing is best effort
            self._client.close()


def dedup_token(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    digest = hashlib.sha256(orjson.dumps([table, list(columns)]))
    digest.update(orjson.dumps(rows, default=str))
    return f"{table}-{digest.hexdigest()[:32]}"
