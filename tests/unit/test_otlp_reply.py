"""Reading an OTLP/HTTP metrics reply (sinks.observability.read_reply), pure."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from sinks.observability import MAX_REPLY_BYTES, data_points, read_reply

PROTOBUF = "application/x-protobuf"


def reply(rejected: int = 0, message: str = "") -> bytes:
    r = ExportMetricsServiceResponse()
    if rejected or message:
        r.partial_success.rejected_data_points = rejected
        r.partial_success.error_message = message
    return r.SerializeToString()


def test_full_success_in_every_shape_the_spec_allows():
    assert read_reply(b"", PROTOBUF) == (0, "")  # an empty message
    assert read_reply(reply(), PROTOBUF) == (0, "")
    assert read_reply(b"\n\x00", PROTOBUF) == (0, "")  # partial_success present but empty
    assert read_reply(b'{"partialSuccess":{}}', "application/json") == (0, "")


def test_partial_success_protobuf_and_json():
    assert read_reply(reply(7, "bad unit"), PROTOBUF) == (7, "bad unit")
    body = b'{"partialSuccess":{"rejectedDataPoints":"7","errorMessage":"bad unit"}}'
    assert read_reply(body, "application/json; charset=utf-8") == (7, "bad unit")


def test_unreadable_replies_raise():
    with pytest.raises(ValueError, match="not an ExportMetricsServiceResponse"):
        read_reply(b'{"status": "Ok"}', "application/json")
    with pytest.raises(ValueError, match="not an ExportMetricsServiceResponse"):
        read_reply(b"<html>ok</html>", "text/html")  # protobuf parse of HTML fails
    with pytest.raises(ValueError, match="discarded"):
        read_reply(b"\x00" * (MAX_REPLY_BYTES + 1), PROTOBUF)


def test_data_points_counts_every_kind():
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    scope.metrics.add(name="a").gauge.data_points.add()
    s = scope.metrics.add(name="b").sum
    s.data_points.add()
    s.data_points.add()
    scope.metrics.add(name="c").histogram.data_points.add()
    assert data_points(request) == 4
