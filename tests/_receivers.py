"""Local stand-ins for the sinks' destinations, on 127.0.0.1 (tests and bench/).

:class:`HttpReceiver` answers PostHog's ``/batch/``, OTLP/HTTP ``/v1/metrics`` (with an
``ExportMetricsServiceResponse``, or a scripted partial success) and a Splunk-HEC-style
``/services/collector/event``, records every body it got (decompressed) and what it
accepted, and misbehaves on request: a scripted list of faults for the next requests
(status codes with headers, or hanging) and a set of poison ids answered 400.
:class:`Rsyslog` runs Debian's rsyslogd on a free TCP port, writing records to a file.
"""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Fault:
    """One scripted answer: an HTTP status (with headers), or hanging for ``hang_s``."""

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0
    process_first: bool = False  # accept the data, then misbehave (the client can't know)


class HttpReceiver:
    """A threaded HTTP server recording what the sinks send."""

    def __init__(self, deferred: bool = False) -> None:
        """``deferred``: PostHog and HEC requests are answered 200 at once and their bodies
        kept as they came; :meth:`settle` decompresses, parses and records them later (the
        bench: this process shares the machine's two cores with the worker it measures,
        and a real destination's parsing happens on machines of its own). No faults and
        no poison ids then."""
        self.deferred = deferred
        # deferred requests: (monotonic arrival, epoch arrival, path, Content-Encoding, body)
        self.pending: list[tuple[float, float, str, str | None, bytes]] = []
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.poison: set[str] = set()
        # OTLP replies: (rejected data points, error message) for the next exports, as a
        # partial success; otherwise the full-success ExportMetricsServiceResponse
        self.otlp_partial: list[tuple[int, str]] = []
        self.bodies: list[bytes] = []  # every request body, decompressed
        self.requests = Counter[str]()
        self.statuses = Counter[int]()
        self.posthog: list[dict[str, Any]] = []  # accepted PostHog events
        self.hec: list[dict[str, Any]] = []  # accepted HEC records
        self.otlp: list[Any] = []  # accepted ExportMetricsServiceRequest messages
        self.windows: dict[str, tuple[float, float]] = {}  # path → first, last accepted
        # PostHog person deletions: (authorization header, body, events accepted before it)
        self.deletions: list[tuple[str, dict[str, Any], int]] = []
        self.accepted = Counter[str]()  # path → events (or exports) accepted
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                receiver._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HttpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what tests read ---------------------------------------------------------------------
    def posthog_uuids(self) -> list[str]:
        with self.lock:
            return [e["uuid"] for e in self.posthog]

    def hec_ids(self) -> list[str]:
        with self.lock:
            return [r["event"]["event"]["id"] for r in self.hec]

    def otlp_points(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Latest export: metric name → [(attributes, value or count)]."""
        with self.lock:
            if not self.otlp:
                return {}
            request = self.otlp[-1]
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    for p in getattr(m, kind).data_points:
                        attrs = {a.key: a.value.string_value for a in p.attributes}
                        if kind == "histogram":
                            value = float(p.count)
                        else:
                            value = (
                                p.as_double
                                if p.WhichOneof("value") == "as_double"
                                else float(p.as_int)
                            )
                        out.setdefault(m.name, []).append((attrs, value))
        return out

    # -- the server side -----------------------------------------------------------------------
    def settle(self) -> None:
        """Record the deferred requests (see ``deferred``), each at its arrival time."""
        with self.lock:
            pending, self.pending = self.pending, []
        for at, epoch, path, encoding, raw in pending:
            body = gzip.decompress(raw) if encoding == "gzip" else raw
            if not self._accept(path, body, at, epoch):
                raise AssertionError(f"deferred {path} request refused: {body[:200]!r}")

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        path = h.path.split("?", 1)[0]
        if self.deferred and (path == "/batch/" or path.startswith("/services/collector")):
            assert not self.faults and not self.poison, "a deferred receiver injects nothing"
            with self.lock:
                arrived = (time.monotonic(), time.time())
                self.pending.append((*arrived, path, h.headers.get("Content-Encoding"), raw))
                self.requests[path] += 1
            return self._answer(h, 200, {})
        body = gzip.decompress(raw) if h.headers.get("Content-Encoding") == "gzip" else raw
        with self.lock:
            self.bodies.append(body)
            self.requests[path] += 1
            fault = self.faults.pop(0) if self.faults else None
        if path.endswith("/persons/bulk_delete/") and fault is None:
            return self._bulk_delete(h, json.loads(body))
        if fault is not None:
            if fault.process_first:
                self._accept(path, body)  # e.g. a proxy that forwarded it, then timed out
            if fault.hang_s:
                time.sleep(fault.hang_s)  # past the client's timeout: it has given up
            return self._answer(h, fault.status, fault.headers)
        if not self._accept(path, body):
            return self._answer(h, 400, {})
        if path == "/v1/metrics":
            return self._answer_otlp(h)
        return self._answer(h, 200, {})

    def _answer_otlp(self, h: BaseHTTPRequestHandler) -> None:
        """An ``ExportMetricsServiceResponse`` in protobuf, as OTLP/HTTP answers."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceResponse,
        )

        reply = ExportMetricsServiceResponse()
        with self.lock:
            partial = self.otlp_partial.pop(0) if self.otlp_partial else None
            self.statuses[200] += 1
        if partial is not None:
            reply.partial_success.rejected_data_points = partial[0]
            reply.partial_success.error_message = partial[1]
        payload = reply.SerializeToString()
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/x-protobuf")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except OSError:
            pass

    def _accept(
        self, path: str, body: bytes, at: float | None = None, epoch: float | None = None
    ) -> bool:
        """Record an accepted request (that arrived at monotonic ``at``, epoch ``epoch``:
        now by default); False if it carries a poison id (→ 400)."""
        if path == "/batch/":
            events = json.loads(body)["batch"]
            if any(e["uuid"] in self.poison for e in events):
                return False
            with self.lock:
                self.posthog.extend(events)
                self.accepted[path] += len(events)
        elif path.startswith("/services/collector"):
            records = [json.loads(line) for line in body.splitlines() if line.strip()]
            if any(r["event"]["event"]["id"] in self.poison for r in records):
                return False
            with self.lock:
                self.hec.extend(records)
                self.accepted[path] += len(records)
        elif path == "/v1/metrics":
            from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                ExportMetricsServiceRequest,
            )

            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            with self.lock:
                self.otlp.append(request)
                self.accepted[path] += 1
        else:
            return False
        now = time.monotonic() if at is None else at
        with self.lock:
            first, last = self.windows.get(path, (now, now))
            self.windows[path] = (min(first, now), max(last, now))
        return True

    def _bulk_delete(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        """PostHog's ``persons/bulk_delete``: the persons are the distinct ids of accepted
        events that had person processing on."""
        wanted = set(body.get("distinct_ids") or [])
        with self.lock:
            persons = {
                e["distinct_id"]
                for e in self.posthog
                if e["properties"].get("$process_person_profile", True)
            }
            found = len(wanted & persons)
            self.deletions.append((h.headers.get("Authorization", ""), body, len(self.posthog)))
        answer = {
            "persons_found": found,
            "persons_deleted": found,
            "events_queued_for_deletion": bool(found and body.get("delete_events")),
            "recordings_queued_for_deletion": False,
        }
        return self._answer(h, 200, {}, json.dumps(answer).encode())

    def _answer(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        headers: dict[str, str],
        payload: bytes | None = None,
    ) -> None:
        with self.lock:
            self.statuses[status] += 1
        if payload is None:
            payload = b'{"status": "Ok"}' if status == 200 else b'{"detail": "scripted"}'
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout) and closed


def require_rsyslog() -> None:
    """Skip a test without rsyslogd, or fail it under CI (which installs it: .ci/run)."""
    import os

    import pytest

    if shutil.which("rsyslogd") is None:
        message = "rsyslogd is not installed (apt-get install -y rsyslog)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


class Rsyslog:
    """Debian's rsyslogd listening on 127.0.0.1:<free port>, one record per line in a file."""

    def __init__(self, root: Path) -> None:
        if shutil.which("rsyslogd") is None:
            raise RuntimeError("rsyslogd is not installed (apt-get install -y rsyslog)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.path = root / "siem.log"
        self.conf = root / "rsyslog.conf"
        self.conf.write_text(
            f'global(workDirectory="{root}" maxMessageSize="64k")\n'
            'module(load="imtcp")\n'
            'template(name="sluice" type="string" string="%msgid% %structured-data% %msg%\\n")\n'
            f'ruleset(name="sluice") {{ action(type="omfile" file="{self.path}" '
            'template="sluice") }\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="sluice")\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Rsyslog:
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.root / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "rsyslogd.err").open("wb"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rsyslogd did not listen: {(self.root / 'rsyslogd.err').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def records(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(msgid, structured data, ECS document) per line written so far."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        # rsyslog may be writing right now: a last line without its newline is not whole yet
        lines = text.split("\n")[:-1]
        out = []
        for line in lines:
            msgid, rest = line.split(" ", 1)
            sd_end = rest.index("] ") + 1
            out.append((msgid, rest[:sd_end], json.loads(rest[sd_end + 1 :].lstrip("\ufeff"))))
        return out

    def ids(self) -> list[str]:
        return [doc["event"]["id"] for _, _, doc in self.records()]
