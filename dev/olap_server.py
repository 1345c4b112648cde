"""A development stand-in for a ClickHouse server: one embedded chDB store behind
ClickHouse's HTTP interface (dev tooling, not shipped)::

    python -m dev.olap_server --path var/olap [--host 127.0.0.1] [--port 8123]
        [--user U --password-file F] [--tls-cert C --tls-key K]

chDB allows one process per data path, so two workers cannot share an embedded store.
This server owns the store and speaks the part of ClickHouse's HTTP interface that
clickhouse-connect uses, so every Sluice process reaches it with an ordinary server
URL (``CLICKHOUSE_URL=http://127.0.0.1:8123``): the same client code path as production.

What it implements, as ClickHouse does:

* ``POST /`` (and ``GET /``, read-only) with the query in the body or the ``query``
  parameter; ``INSERT ... FORMAT <fmt>`` followed by data (any input format chDB reads,
  e.g. clickhouse-connect's Native blocks), ingested with ``FROM INFILE``;
* ``database``, ``default_format`` / ``X-ClickHouse-Format``, ``param_<name>`` bound
  parameters, ``query_id``; every other URL parameter is a setting for that query
  (``insert_deduplication_token``, ...), applied with ``SET`` and undone afterwards;
* request bodies compressed with ``Content-Encoding`` gzip, deflate, lz4, zstd or br
  (clickhouse-connect compresses inserts); responses are never compressed;
* ``X-ClickHouse-Query-Id``, ``-Format``, ``-Timezone``, ``-Summary``,
  ``-Server-Display-Name`` headers; an error is ClickHouse's message with
  ``X-ClickHouse-Exception-Code`` and the HTTP status ClickHouse gives that code;
* with a user configured, HTTP basic auth or ``X-ClickHouse-User`` / ``-Key`` (or the
  ``user`` / ``password`` parameters); anything else is refused (401, code 516);
* optional TLS (``https://``); ``GET /ping`` answers ``Ok.``.

What it does not: sessions (``session_id`` is accepted and ignored, so ``SET`` and
``USE`` statements are no-ops, as they are without a session), ClickHouse's native
compression (``compress``/``decompress`` parameters), progress headers, cancelling a
query when its client goes away, several users. Queries run one at a time: chDB hosts
one engine and every call on it holds one lock.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import gzip
import hmac
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger("dev.olap_server")

# URL parameters of the HTTP interface that are not settings of the query.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
        "readonly",  # enforced by the server itself (a SET readonly could not be undone)
        # HTTP-only settings with nothing to do here (responses are buffered, uncompressed)
        "enable_http_compression",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_wait_end_of_query",
        "http_response_buffer_size",
    }
)

# ClickHouse error codes this module raises itself
SYNTAX_ERROR = 62
NOT_IMPLEMENTED = 48
READONLY = 164
AUTHENTICATION_FAILED = 516
UNKNOWN_EXCEPTION = 1002
# The HTTP status ClickHouse answers per error code (exceptionCodeToHTTPStatus.cpp in
# ClickHouse's source; any other code is 500).
_HTTP_STATUS = {
    194: 401,  # REQUIRED_PASSWORD
    # bad basic-auth credentials: recent servers answer 401 (with WWW-Authenticate)
    AUTHENTICATION_FAILED: 401,
    **dict.fromkeys((192, 193, 497, 512), 403),  # UNKNOWN_USER, WRONG_PASSWORD, ACCESS_DENIED...
    # BAD_ARGUMENTS, CANNOT_PARSE_*, DUPLICATE_COLUMN, ILLEGAL_COLUMN, *_AST*, SYNTAX_ERROR,
    # INCORRECT_DATA, TYPE_MISMATCH, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, ...
    **dict.fromkeys(
        (6, 8, 15, 25, 26, 27, 36, 37, 38, 41, 44, 53, 62, 72, 117, 123, 167, 168, 223, 321)
        + (376, 427, 441, 675, 676),
        400,
    ),
    # UNKNOWN_TABLE, _FUNCTION, _IDENTIFIER, _TYPE, _STORAGE, _DATABASE, _SETTING, ...
    **dict.fromkeys((46, 47, 50, 56, 60, 63, 73, 78, 81, 115, 152, 336, 511), 404),
    229: 413,  # QUERY_IS_TOO_LARGE
    NOT_IMPLEMENTED: 501,
    **dict.fromkeys((76, 209, 439), 503),  # CANNOT_OPEN_FILE, SOCKET_TIMEOUT, CANNOT_SCHEDULE_TASK
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
    779: 415,  # UNSUPPORTED_MEDIA_TYPE
}
_CODE_RE = re.compile(r"Code: (\d+)\.")
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
# An INSERT whose data follows the statement: INSERT INTO t [(cols)] [SETTINGS ...] FORMAT f
_DATA_INSERT_RE = re.compile(
    rb"""\A\s*INSERT\s+INTO\s+(?:TABLE\s+)?(?P<table>(?:`[^`]*`|"[^"]*"|[\w.])+)\s*
    (?P<cols>\([^()]*\))?\s*
    (?:SETTINGS\s+(?P<settings>.*?)\s+)?
    FORMAT\s+(?P<format>\w+)[ \t]*(?:\r?\n|\Z)""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)


def _checked_read(query: Query) -> Query:
    """A read (a GET, or ``readonly`` set): Sluice's read guard decides what may run, as
    the worker's query endpoint does (one read statement over the catalog, no table
    function, no OUTFILE, no SETTINGS); the limits come as the request's settings."""
    from dataclasses import replace

    from sluice.olap.readguard import (
        ENGINE_AST_SQL,
        ReadRefused,
        catalog_relations,
        check_read,
        strip_output_format,
    )

    try:
        if strip_output_format(query.sql)[0].strip() == ENGINE_AST_SQL:
            return query  # the reader's own parse-only probe of what it checked
        body, fmt = strip_output_format(query.sql)
        checked = check_read(body, catalog_relations())
    except ReadRefused as exc:
        raise QueryError(f"{exc}. (READONLY)", READONLY) from None
    return replace(query, sql=f"{checked}\nFORMAT {fmt}" if fmt else checked)


_TEXT_FORMATS = ("TabSeparated", "TSV", "CSV", "JSON", "Pretty", "Values", "Vertical", "Markdown")


class ServeError(RuntimeError):
    """The server cannot start (message is the one line to show)."""


class QueryError(Exception):
    """A failed query: ClickHouse's message and error code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def from_engine(cls, exc: Exception) -> QueryError:
        message = str(exc).strip()
        start = message.find("Code: ")
        if start > 0:
            message = message[start:]
        match = _CODE_RE.match(message)
        return cls(message or type(exc).__name__, int(match[1]) if match else UNKNOWN_EXCEPTION)


@dataclass
class Result:
    """What one query answered."""

    body: bytes = b""
    format: str | None = None  # None: no result set (DDL, INSERT, SET ...)
    summary: dict[str, str] = field(default_factory=dict)


@dataclass
class Query:
    """One request, parsed: the statement, its data and how to run it."""

    sql: str
    data: bytes | None = None  # an INSERT's data, in ``data_format``
    data_format: str | None = None
    database: str = "default"
    default_format: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    readonly: bool = False


def parse_query(
    params: Mapping[str, str],
    body: bytes,
    *,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
) -> Query:
    """Split a request into the statement, an INSERT's data, settings and parameters."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}  # names are case-insensitive
    text = params.get("query", "")
    if text:
        match = _DATA_INSERT_RE.match(text.encode())
        data = body if match else None
        if not match and body:
            text = f"{text}\n{body.decode()}"
    else:
        match = _DATA_INSERT_RE.match(body)
        data = body[match.end() :] if match else None
        text = body[: match.end()].decode() if match else body.decode()
    if not text.strip():
        raise QueryError("Empty query. (SYNTAX_ERROR)", SYNTAX_ERROR)
    if params.get("compress") == "1" or params.get("decompress") == "1":
        raise QueryError(
            "ClickHouse's native compression (compress/decompress) is not supported by "
            "sluice olap serve; use Content-Encoding instead. (NOT_IMPLEMENTED)",
            NOT_IMPLEMENTED,
        )
    sql = text.rstrip()
    if match:
        # FROM INFILE comes after the columns and before SETTINGS/FORMAT
        m = match
        sql = (
            f"INSERT INTO {m['table'].decode()} {(m['cols'] or b'').decode()} FROM INFILE {{path}}"
        )
        if m["settings"]:
            sql += f" SETTINGS {m['settings'].decode()}"
        sql += f" FORMAT {m['format'].decode()}"
    readonly_param = params.get("readonly", "0")
    return Query(
        sql=sql,
        data=data,
        data_format=match["format"].decode() if match else None,
        database=params.get("database") or headers.get("x-clickhouse-database") or "default",
        default_format=params.get("default_format") or headers.get("x-clickhouse-format"),
        settings={
            k: v
            for k, v in params.items()
            if k not in TRANSPORT_PARAMS and not k.startswith("param_")
        },
        params={k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")},
        readonly=method == "GET" or readonly_param not in ("", "0"),
    )


def statement_head(sql: str) -> str:
    """The first keyword of a statement, upper-cased (comments skipped)."""
    text = re.sub(r"^(\s|--[^\n]*\n|/\*.*?\*/)*", "", sql, flags=re.DOTALL)
    word = re.match(r"[A-Za-z]+", text)
    return word[0].upper() if word else ""


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """Undo a request's ``Content-Encoding`` (clickhouse-connect compresses inserts)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    import cramjam  # a Sluice dependency already (aiokafka's codecs)

    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding == "lz4":  # LZ4 frames, one per block
            return bytes(cramjam.lz4.decompress(body))
        if encoding == "zstd":
            return bytes(cramjam.zstd.decompress(body))
        if encoding == "br":
            return bytes(cramjam.brotli.decompress(body))
    except Exception as exc:
        raise QueryError(f"Cannot decompress the {encoding} request body: {exc}", 271) from exc
    raise QueryError(f"Unknown Content-Encoding {encoding!r}. (UNKNOWN_COMPRESSION_METHOD)", 89)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_store_free(path: Path) -> None:
    """Raise :class:`ServeError` when another process holds the store's lock.

    chDB itself only logs the reason and raises a bare "Error initializing
    EmbeddedServer"; the lock is ClickHouse's ``flock`` on ``PATH/status``.
    """
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        pid = re.search(r"PID: (\d+)", status.read_text(errors="replace"))
        owner = f" (PID {pid[1]})" if pid else ""
        raise ServeError(
            f"the chDB store {path} is locked by another process{owner}: chDB allows one "
            "process per store (stop that worker or server, or point clients at it)"
        ) from None
    finally:
        os.close(fd)  # releases our probe lock


class Store:
    """The one chDB connection; every call on it holds one lock."""

    def __init__(self, path: Path) -> None:
        import chdb

        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        check_store_free(path)
        try:
            self._conn = chdb.connect(str(path))
            probe = self._conn.query("SELECT version(), timezone()", "TabSeparated")
        except ServeError:
            raise
        except Exception as exc:
            raise ServeError(f"cannot open the chDB store {path}: {exc}") from None
        self.lock = threading.Lock()
        self.version, self.timezone = probe.bytes().decode().strip().split("\t")
        self._tmp = Path(tempfile.mkdtemp(prefix="sluice-olap-serve-"))
        self._database = "default"
        self._applied: dict[str, str] = {}  # settings SET on the connection right now
        self._closed = False

    def _call(self, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            return self._conn.query(sql, fmt, params=dict(params or {}))
        except Exception as exc:
            raise QueryError.from_engine(exc) from None

    def _prepare(self, query: Query) -> None:
        """USE the query's database and make the connection's settings the query's."""
        if query.database != self._database:
            self._call(f"USE `{query.database.replace('`', '')}`", "TabSeparated")
            self._database = query.database
        for name in [n for n in self._applied if n not in query.settings]:
            self._call(f"SET {name} = DEFAULT", "TabSeparated")
            del self._applied[name]
        for name, value in query.settings.items():
            if self._applied.get(name) != value:
                if not _SETTING_NAME_RE.match(name):
                    raise QueryError(f"Invalid setting name {name!r}. (BAD_ARGUMENTS)", 36)
                self._call(f"SET {name} = {_quote(value)}", "TabSeparated")
                self._applied[name] = value

    def execute(self, query: Query) -> Result:
        """Run one query (an INSERT's data first goes to a file chDB reads)."""
        if query.readonly:
            query = _checked_read(query)
        head = statement_head(query.sql)
        if head in ("SET", "USE"):
            # Without a session these change nothing beyond the statement itself.
            return Result()
        infile: Path | None = None
        if query.data is not None:
            infile = self._tmp / f"{uuid.uuid4().hex}.{(query.data_format or 'data').lower()}"
            infile.write_bytes(query.data)
        try:
            with self.lock:
                if self._closed:
                    raise QueryError("The server is shutting down. (ABORTED)", 236)
                self._prepare(query)
                return self._run(query, infile)
        finally:
            if infile is not None:
                infile.unlink(missing_ok=True)

    def _run(self, query: Query, infile: Path | None) -> Result:
        started = time.perf_counter()
        if infile is not None:
            result = self._call(query.sql.replace("{path}", _quote(str(infile)), 1), "TabSeparated")
            rows, size = result.rows_read(), result.bytes_read()
            return Result(summary=_summary(started, written=(rows, size)))
        trailing = _TRAILING_FORMAT_RE.search(query.sql)
        if trailing or query.default_format:
            # an explicit FORMAT clause wins over the format argument
            fmt = trailing[1] if trailing else str(query.default_format)
            result = self._call(query.sql, fmt, query.params)
            body = result.bytes() or b""
            shows = bool(trailing) or bool(body)
        else:
            # ClickHouse reports a result set (X-ClickHouse-Format) even with no rows;
            # with names, a result-producing statement always prints one line
            fmt = "TabSeparated"
            result = self._call(query.sql, "TabSeparatedWithNames", query.params)
            body = result.bytes() or b""
            shows = bool(body)
            body = body[body.find(b"\n") + 1 :] if shows else b""
        read = (result.rows_read(), result.bytes_read())
        return Result(body=body, format=fmt if shows else None, summary=_summary(started, read))

    def close(self) -> None:
        """Wait for the running query, then close the store (later queries are refused)."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                self._conn.close()
            shutil.rmtree(self._tmp, ignore_errors=True)


def _summary(
    started: float, read: tuple[int, int] = (0, 0), written: tuple[int, int] = (0, 0)
) -> dict[str, str]:
    return {
        "read_rows": str(read[0]),
        "read_bytes": str(read[1]),
        "written_rows": str(written[0]),
        "written_bytes": str(written[1]),
        "total_rows_to_read": "0",
        "result_rows": str(written[0]),
        "result_bytes": str(written[1]),
        "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
    }


@dataclass(frozen=True)
class Credentials:
    """The one user the server accepts."""

    user: str
    password: str

    def check(self, user: str | None, password: str | None) -> bool:
        ok_user = hmac.compare_digest((user or "default").encode(), self.user.encode())
        ok_password = hmac.compare_digest((password or "").encode(), self.password.encode())
        return ok_user and ok_password


class _BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    """ClickHouse's HTTP interface over :class:`Store`."""

    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
    server_version = "sluice-olap-serve"
    server: OlapServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_HEAD(self) -> None:
        self._send(200, b"", {"Content-Type": "text/plain; charset=UTF-8"}, head=True)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._send(400, f"{exc}\n".encode(), {"Content-Type": "text/plain; charset=UTF-8"})
            return
        path = url.path.rstrip("/") or "/"
        if path in ("/ping", "/replicas_status") or (
            path == "/" and method == "GET" and not params.get("query") and not body
        ):
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if path != "/":
            message = f"There is no handle {url.path}\n\nUse / or /ping.\n".encode()
            self._send(404, message, {"Content-Type": "text/plain; charset=UTF-8"})
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            self._authenticate(params)
            query = parse_query(
                params,
                decode_body(body, self.headers.get("Content-Encoding")),
                method=method,
                headers=dict(self.headers.items()),
            )
            result = self.server.engine.execute(query)
        except QueryError as exc:
            self._error(exc, query_id)
            return
        except Exception as exc:  # a bug here must still answer like a server
            log.exception("query %s failed", query_id)
            self._error(QueryError(f"{type(exc).__name__}: {exc}", UNKNOWN_EXCEPTION), query_id)
            return
        headers = self._common_headers(query_id)
        headers["X-ClickHouse-Summary"] = json.dumps(result.summary, separators=(",", ":"))
        if result.format is not None:
            headers["X-ClickHouse-Format"] = result.format
        headers["Content-Type"] = _content_type(result.format)
        self._send(200, result.body, headers)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequest(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # the CRLF after each chunk
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            return self.rfile.read(int(length))
        except ValueError:
            raise _BadRequest(f"bad Content-Length {length!r}") from None

    def _authenticate(self, params: Mapping[str, str]) -> None:
        expected = self.server.credentials
        if expected is None:
            return
        user, password = self.headers.get("X-ClickHouse-User"), self.headers.get("X-ClickHouse-Key")
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            with contextlib.suppress(ValueError):
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        user = user if user is not None else params.get("user")
        password = password if password is not None else params.get("password")
        if not expected.check(user, password):
            raise QueryError(
                f"{user or 'default'}: Authentication failed: password is incorrect, or there "
                "is no user with such name. (AUTHENTICATION_FAILED)",
                AUTHENTICATION_FAILED,
            )

    def _common_headers(self, query_id: str) -> dict[str, str]:
        return {
            "X-ClickHouse-Server-Display-Name": self.server.display_name,
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
        }

    def _error(self, exc: QueryError, query_id: str) -> None:
        message = str(exc)
        if "(version " not in message:
            message += f" (version {self.server.engine.version})"
        headers = self._common_headers(query_id)
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        status = _HTTP_STATUS.get(exc.code, 500)
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="ClickHouse server HTTP API"'
        log.debug("query %s failed: %s", query_id, message)
        self._send(status, f"{message}\n".encode(), headers)

    def _send(
        self, status: int, body: bytes, headers: Mapping[str, str], head: bool = False
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close" if self.close_connection else "Keep-Alive")
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _content_type(fmt: str | None) -> str:
    if fmt is not None and fmt.startswith(_TEXT_FORMATS):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


class OlapServer(ThreadingHTTPServer):
    """A thread per connection; TLS handshakes happen in that thread, not in accept()."""

    daemon_threads = True  # idle keep-alive connections must not hold up shutdown

    def __init__(
        self,
        address: tuple[str, int],
        engine: Store,
        credentials: Credentials | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.engine = engine
        self.credentials = credentials
        self.tls = tls
        self.display_name = socket.gethostname()
        super().__init__(address, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            request.settimeout(30)
            conn = self.tls.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context from a PEM certificate (chain) and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return context


def serve(
    path: Path,
    host: str = "127.0.0.1",
    port: int = 8123,
    credentials: Credentials | None = None,
    tls: ssl.SSLContext | None = None,
    on_ready: Callable[[OlapServer], None] | None = None,
) -> None:
    """Serve the store until SIGTERM or SIGINT; then finish the running query and close."""
    engine = Store(path.expanduser().resolve())
    try:
        try:
            server = OlapServer((host, port), engine, credentials, tls)
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            if not stop.is_set():
                stop.set()
                # shutdown() waits for serve_forever(), which runs in this thread
                threading.Thread(target=server.shutdown, daemon=True).start()

        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if on_ready is not None:
                on_ready(server)
            server.serve_forever(poll_interval=0.2)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            server.server_close()
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m dev.olap_server``: serve a chDB store until SIGTERM."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m dev.olap_server", description=__doc__)
    parser.add_argument("--path", type=Path, required=True, help="the chDB store to own")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0: any free port")
    parser.add_argument("--user", default=os.environ.get("CLICKHOUSE_USER"))
    parser.add_argument("--password-file", type=Path, help="else CLICKHOUSE_PASSWORD")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    password = os.environ.get("CLICKHOUSE_PASSWORD")
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            parser.error(f"--password-file {args.password_file}: {exc.strerror or exc}")
    credentials = (
        Credentials(args.user or "default", password or "") if (args.user or password) else None
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")

    def ready(server: OlapServer) -> None:
        auth = f", user {credentials.user}" if credentials else ", no authentication"
        print(f"serving {args.path} at {server.url}{auth}", flush=True)

    try:
        tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        serve(args.path, args.host, args.port, credentials, tls, on_ready=ready)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
