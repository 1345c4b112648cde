"""The PostHog sink speaks the real SDK's wire format: what it posts to ``/batch/`` is what
``posthog.request.batch_post`` (the SDK's own request layer) posts for the same batch —
path, headers, gzip, and the JSON body — so PostHog cannot tell them apart."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import posthog.request
import pytest

from sinks.base import Envelope
from sinks.pii import Pseudonymizer
from sinks.posthog import POSTHOG_PROPERTIES, PostHogSink, to_posthog

EVENT = {
    "event_id": "6f1c3a52-6a41-4a4e-9d57-7b8f1d2a3c4e",
    "event_type": "email_opened",
    "occurred_at": 1_764_600_000_123,
    "tenant_id": "acme",
    "source": "tracker",
    "user_id": "u-7",
    "email_id": "e-1",
    "campaign_id": "c-1",
    "mailbox_id": "m-1",
    "lead_id": "l-1",
    "sequence_step_id": None,
}


@pytest.fixture
def receiver():
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            got.append(
                {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "encoding": self.headers.get("Content-Encoding"),
                    "body": json.loads(raw),
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": 1}')

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()


def test_the_sink_posts_what_the_sdk_posts(receiver):
    url, got = receiver
    item = to_posthog(EVENT, POSTHOG_PROPERTIES["email_opened"], Pseudonymizer(b"k" * 32))
    posthog.request.batch_post("phc_test", host=url, gzip=True, batch=[item])
    sink = PostHogSink("phc_test", url, pseudonymizer=Pseudonymizer(b"k" * 32), gzip=True)
    prepared = sink.prepare(Envelope(EVENT, "events.email", 0, 0))  # what the sink buffers
    sink._post([prepared])  # noqa: SLF001 - one request, as flush sends it
    sdk, ours = got
    assert ours["path"] == sdk["path"] == "/batch/"
    assert ours["content_type"] == sdk["content_type"] == "application/json"
    assert ours["encoding"] == sdk["encoding"] == "gzip"
    assert set(ours["body"]) == set(sdk["body"]) == {"api_key", "batch", "sent_at"}
    assert ours["body"]["api_key"] == sdk["body"]["api_key"]
    assert ours["body"]["batch"] == sdk["body"]["batch"]
    assert ours["body"]["batch"][0]["uuid"] == EVENT["event_id"]  # PostHog's dedup key
