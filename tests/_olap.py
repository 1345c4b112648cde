"""The ClickHouse the tests use: embedded chDB, or a real server when ``CLICKHOUSE_TEST_URL``
is set (``http(s)://user:password@host:8123``; e.g. ``docker compose up clickhouse`` and
``CLICKHOUSE_TEST_URL=http://sluice_admin:sluice_admin@127.0.0.1:8123``). On a server every
test store is a database of its own, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from sluice.olap.client import OlapClient, connect

SERVER_URL = os.environ.get("CLICKHOUSE_TEST_URL") or None


def on_server() -> bool:
    return SERVER_URL is not None


def with_database(url: str, database: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{database}"))


def new_store_url(root: Path, name: str | None = None) -> str:
    """A fresh, empty store: ``chdb://root/olap``, or a new database on the server."""
    if SERVER_URL is None:
        return f"chdb://{root / 'olap'}"
    database = f"sluice_test_{name or uuid.uuid4().hex[:10]}".replace("-", "_")
    admin = connect(SERVER_URL)
    try:
        admin.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    finally:
        admin.close()
    return with_database(SERVER_URL, database)


def drop_store(url: str) -> None:
    """Drop a server store made by :func:`new_store_url` (chDB stores go with their dir)."""
    if SERVER_URL is None or url.startswith("chdb://"):
        return
    database = urlparse(url).path.strip("/")
    admin = connect(SERVER_URL)
    try:
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
    finally:
        admin.close()


def open_store(url: str) -> OlapClient:
    return connect(url)
