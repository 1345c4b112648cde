"""SIEM sinks: security events and security-sensitive admin actions, in full detail, as ECS.

Two transports; each is enabled by its setting and both may run at once.

``siem.syslog`` — RFC 5424 over TCP (RFC 6587 octet-counting framing), optionally TLS
    Delivery guarantee: at least once *up to the collector's socket*. A batch counts as
    durable when its bytes are written and drained to the kernel; plain syslog has no
    application acknowledgement, so a collector that crashes after reading and before
    writing to disk can lose the last records. A broken connection is reopened and the
    whole batch re-sent. Use the HTTP collector when per-request acknowledgement
    matters. Limits: 500 records per write, one connection, 64 KiB per record (a larger
    record is dead-lettered). PRI: facility ``authpriv``, the syslog severity of the
    event type (:data:`sinks.ecs.SEVERITIES`); ``MSGID`` is the event type; structured data
    ``[sluice@32473 event_id=… tenant_id=…]``; the message is the ECS JSON.
``siem.hec`` — HTTP JSON collector, Splunk HEC style
    Delivery guarantee: at least once; a batch is durable when the collector answered
    2xx. Limits: 500 events per request (newline-separated HEC event objects), up to
    ``SINK_MAX_IN_FLIGHT`` requests at once; a refused (4xx) batch is split until the
    refused records are alone, which are dead-lettered (stage ``siem.hec``).

Idempotency key (both): ECS ``event.id`` = the event's ``event_id``; a record re-sent
after a crash or a reconnect carries the same id, so the SIEM can deduplicate on it.

Both transports carry the same ECS document: built and serialized (orjson) once per
event for both (:class:`EcsDocuments`), not once per transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from sinks.base import (
    BatchingSink,
    BatchLimits,
    Envelope,
    PermanentError,
    RetryPolicy,
    SinkObserver,
    TransientError,
)
from sinks.ecs import ECS_KINDS, syslog_severity, to_ecs
from sinks.http import in_thread, new_session, post

SYSLOG = "siem.syslog"
HEC = "siem.hec"
FACILITY_AUTHPRIV = 10  # RFC 5424: security/authorization messages
SD_ID = "sluice@32473"  # 32473: the enterprise number reserved for examples (RFC 5612)
MAX_RECORD_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str, limit: int) -> str:
    """A syslog header field: printable ASCII without spaces, or the nil value."""
    token = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


def ecs_document(event: Mapping[str, Any]) -> dict[str, Any]:
    if event["event_type"] not in ECS_KINDS:
        raise PermanentError("no_ecs_mapping", f"{event['event_type']} has no ECS mapping")
    return to_ecs(event)


def ecs_json(doc: Mapping[str, Any]) -> bytes:
    """A document as compact UTF-8 JSON (orjson; the standard library for what it refuses:
    ints past 64 bits). NaN and infinities become null, as JSON has neither."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class EcsDocuments:
    """Each event's ECS document and its JSON, built once for every SIEM sink.

    The router hands one batch to every sink of a destination
    (:meth:`streams.routing.Router.write`), so syslog and HEC see the same envelopes one
    after the other: a sink calls :meth:`begin` with its batch, and :meth:`get` builds an
    envelope's document the first time either asks. Only the latest batch is kept.
    """

    def __init__(self) -> None:
        self._batch: Sequence[Envelope] | None = None
        self._built: dict[int, tuple[Envelope, dict[str, Any], bytes]] = {}

    def begin(self, batch: Sequence[Envelope]) -> None:
        if batch is not self._batch:
            self._batch, self._built = batch, {}

    def get(self, envelope: Envelope) -> tuple[dict[str, Any], bytes]:
        """(document, its JSON); raises :class:`PermanentError` without an ECS mapping."""
        built = self._built.get(id(envelope))
        if built is None or built[0] is not envelope:
            doc = ecs_document(envelope.record)
            built = self._built[id(envelope)] = (envelope, doc, ecs_json(doc))
        return built[1], built[2]


def rfc5424_frame(
    doc: Mapping[str, Any], hostname: str, procid: str = "-", doc_json: bytes | None = None
) -> bytes:
    """One octet-counted RFC 5424 record whose MSG is the ECS document as JSON
    (``doc_json``: that JSON, when it was made already)."""
    # the syslog severity (lower is worse), not ECS's event.severity (higher is worse)
    pri = FACILITY_AUTHPRIV * 8 + syslog_severity(doc["event"]["action"])
    sd = (
        f'[{SD_ID} event_id="{_sd_escape(doc["event"]["id"])}" '
        f'tenant_id="{_sd_escape(doc.get("organization", {}).get("id", ""))}"]'
    )
    header = (
        f"<{pri}>1 {doc['@timestamp']} {_header_token(hostname, 255)} sluice "
        f"{_header_token(procid, 128)} {_header_token(doc['event']['action'], 32)} {sd} "
    )
    body = header.encode() + _BOM + (doc_json if doc_json is not None else ecs_json(doc))
    if len(body) > MAX_RECORD_BYTES:
        raise PermanentError("too_large", f"{len(body)} bytes > {MAX_RECORD_BYTES}")
    return b"%d " % len(body) + body


class SyslogSink(BatchingSink):
    """RFC 5424 over TCP/TLS (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        hostname: str | None = None,
        limits: BatchLimits | None = None,
        policy: RetryPolicy | None = None,
        observer: SinkObserver | None = None,
        documents: EcsDocuments | None = None,
    ) -> None:
        """``documents``: shared with the HEC sink, so each document is built once."""
        limits = limits or BatchLimits(max_events=500)
        # one TCP stream: one writer at a time keeps records whole and reconnects simple
        limits = BatchLimits(limits.max_events, limits.linger_s, 1, limits.flush_deadline_s)
        super().__init__(SYSLOG, limits, policy, observer)
        self.host, self.port, self.tls, self.timeout_s = host, port, tls, timeout_s
        self.hostname = hostname or socket.gethostname()
        self.procid = str(os.getpid())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.documents = documents or EcsDocuments()

    def write(self, batch: Sequence[Envelope]) -> None:
        self.documents.begin(batch)
        super().write(batch)

    def prepare(self, envelope: Envelope) -> bytes:
        doc, doc_json = self.documents.get(envelope)
        return rfc5424_frame(doc, self.hostname, self.procid, doc_json)

    async def send(self, items: list[Any]) -> None:
        try:
            writer = await self._connection()
            writer.write(b"".join(items))
            await asyncio.wait_for(writer.drain(), self.timeout_s)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self._disconnect()
            raise TransientError("connection", type(exc).__name__) from None

    async def _connection(self) -> asyncio.StreamWriter:
        # The collector never writes to us: EOF on the read side means it closed.
        if self._writer is not None and (
            self._writer.is_closing() or (self._reader and self._reader.at_eof())
        ):
            await self._disconnect()
        if self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                ),
                self.timeout_s,
            )
        assert self._writer is not None
        return self._writer

    async def _disconnect(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def close(self) -> None:
        await super().close()
        await self._disconnect()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context verifying the server (against ``ca_file`` if given)."""
    return ssl.create_default_context(cafile=ca_file)


class HecSink(BatchingSink):
    """Splunk-HEC-style HTTP JSON collector (see the module docstring)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout_s: float = 10.0,
        hostname: str | None = None,
        limits: BatchLimits | None = None,
        policy: RetryPolicy | None = None,
        observer: SinkObserver | None = None,
        documents: EcsDocuments | None = None,
    ) -> None:
        """``documents``: shared with the syslog sink, so each document is built once."""
        super().__init__(HEC, limits or BatchLimits(max_events=500), policy, observer)
        self.url, self.timeout_s = url, timeout_s
        self.hostname = hostname or socket.gethostname()
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Splunk {token}"
        self._session = new_session()
        self.documents = documents or EcsDocuments()
        # the envelope of every HEC event around its document, serialized once
        self._host_json = orjson.dumps(self.hostname)

    def write(self, batch: Sequence[Envelope]) -> None:
        self.documents.begin(batch)
        super().write(batch)

    def prepare(self, envelope: Envelope) -> bytes:
        """``{"time", "host", "source", "sourcetype", "event"}`` as JSON, the ECS document's
        JSON spliced in (the same bytes as serializing the whole object)."""
        _, doc_json = self.documents.get(envelope)
        seconds = orjson.dumps(envelope.record["occurred_at"] / 1000)
        return b'{"time":%b,"host":%b,"source":"sluice","sourcetype":"ecs","event":%b}' % (
            seconds,
            self._host_json,
            doc_json,
        )

    async def send(self, items: list[Any]) -> None:
        body = b"\n".join(items)
        await in_thread(
            post, self._session, self.url, body, headers=self.headers, timeout=self.timeout_s
        )

    async def close(self) -> None:
        await super().close()
        self._session.close()
