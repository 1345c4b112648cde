"""One ClickHouse client for both backends: embedded chDB (``chdb://PATH``) and a server
(``http(s)://user:pass@host:port/db``), through clickhouse-connect — the same code path.

chDB hosts one engine per process and its store is single-writer: the worker owns it.
Other processes read through the worker's HTTP endpoint (see ``sluice olap query``).
"""

from __future__ import annotations

import contextlib
import hashlib
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
    return connect(settings.clickhouse_url, **clickhouse_options(settings))


def connect(url: str, **options: Any) -> OlapClient:
    """Open the OLAP store named by ``url``.

    ``options`` go to clickhouse-connect for server URLs (credentials, TLS: see
    :func:`clickhouse_options`); the embedded store ignores them.
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
            client = clickhouse_connect.get_client(dsn=url, interface=parsed.scheme, **options)
    except OlapError:
        raise
    except Exception as exc:  # the drivers raise many kinds; one clear message here
        detail = str(exc)
        for secret in (urlparse(url).password, options.get("password")):
            if secret:
                detail = detail.replace(secret, "***")
        raise OlapError(f"cannot open ClickHouse at {redact_url(url)}: {detail}") from None
    return OlapClient(client, url)


class OlapClient:
    """Thin wrapper: catalog-guarded idempotent inserts, commands and queries.

    Calls are serialized by a lock, so the worker may call from an executor thread.
    """

    def __init__(self, client: Client, url: str) -> None:
        self._client = client
        self.url = url
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
        (``non_replicated_deduplication_window`` is set on every catalog table).
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
                    settings={"insert_deduplication_token": token},
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
