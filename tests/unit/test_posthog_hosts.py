"""Where the PostHog sink posts for each POSTHOG_HOST a user may configure: PostHog Cloud's
app hosts go to their region's ingestion host, self-hosted hosts are used as given; and
the sink no longer leans on the SDK's helpers for it."""

from __future__ import annotations

import ast
import asyncio
import json
import math
from pathlib import Path

import orjson
import pytest

import sinks.posthog as posthog_sink
from sinks.pii import Pseudonymizer
from sinks.posthog import PostHogSink, encode_batch, encode_message, ingestion_url, to_posthog
from sluice import __version__

US, EU = "https://us.i.posthog.com/batch/", "https://eu.i.posthog.com/batch/"


@pytest.mark.parametrize(
    "configured, url",
    [
        # US Cloud: the former and the current app host, and the ingestion host itself
        ("https://app.posthog.com", US),
        ("https://us.posthog.com", US),
        ("https://us.posthog.com/", US),
        ("https://us.i.posthog.com", US),
        ("us.posthog.com", US),  # no scheme
        ("http://app.posthog.com", US),  # a POST to http:// is redirected and loses its body
        ("https://US.PostHog.com", US),  # host names are case-insensitive
        ("https://us.posthog.com/project/12345/insights", US),  # pasted from the browser
        ("https://app.posthog.com:443", US),
        # EU Cloud
        ("https://eu.posthog.com", EU),
        ("https://eu.i.posthog.com/", EU),
        ("eu.posthog.com", EU),
        # unset or blank: the default, US Cloud
        (None, US),
        ("", US),
        ("   ", US),
        # self-hosted and reverse proxies: as given
        ("https://posthog.example.com", "https://posthog.example.com/batch/"),
        ("https://posthog.example.com/", "https://posthog.example.com/batch/"),
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000/batch/"),
        ("posthog.internal:8443", "https://posthog.internal:8443/batch/"),
        ("https://example.com/ingest/", "https://example.com/ingest/batch/"),
        ("https://e.example.com/ph?x=1", "https://e.example.com/ph/batch/"),
        # look-alikes are not PostHog Cloud
        ("https://eu.posthog.com.evil.example", "https://eu.posthog.com.evil.example/batch/"),
        ("https://my-us.posthog.com", "https://my-us.posthog.com/batch/"),
        # a Cloud name on another port is not Cloud (a tunnel, a test double)
        ("http://us.posthog.com:8080", "http://us.posthog.com:8080/batch/"),
    ],
)
def test_ingestion_url(configured: str | None, url: str):
    assert ingestion_url(configured) == url


def test_the_sink_posts_where_ingestion_url_says():
    for host, url in (
        ("https://eu.posthog.com", EU),
        ("http://127.0.0.1:9", "http://127.0.0.1:9/batch/"),
    ):
        sink = PostHogSink("phc_x", host, pseudonymizer=Pseudonymizer(b"k"))
        assert sink.url == url
        asyncio.run(sink.close())


def test_no_name_is_imported_from_the_posthog_sdk():
    tree = ast.parse(Path(posthog_sink.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m and m.split(".")[0] == "posthog"}


def test_lib_version_is_sluices_and_the_body_is_plain_json():
    event = {
        "event_id": "e-1",
        "event_type": "email_opened",
        "occurred_at": 0,
        "tenant_id": "acme",
        "source": "tracker",
    }
    message = to_posthog(event, {}, Pseudonymizer(b"k"))
    assert message["properties"]["$lib"] == "sluice"
    assert message["properties"]["$lib_version"] == __version__
    assert encode_message({"x": math.nan, "y": math.inf}) == b'{"x":null,"y":null}'
    # orjson refuses ints past 64 bits; the fallback still writes JSON, NaN as null
    big = encode_message({"n": 2**70, "x": math.nan})
    assert big == b'{"n": 1180591620717411303424, "x": null}'
    body = encode_batch([encode_message(message), b'{"x":1}'], "phc_k", "2026-12-02T00:00:00")
    assert json.loads(body) == {
        "batch": [json.loads(orjson.dumps(message)), {"x": 1}],
        "sent_at": "2026-12-02T00:00:00",
        "api_key": "phc_k",
    }
