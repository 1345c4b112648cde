"""A real OpenTelemetry Collector for tests: built by dev/otelcol/build.sh, run on free ports.

:func:`collector_binary` builds it, or waits for the build ``.ci/run`` started in the
background (the script holds a lock while building; a second run waits, then finds the
cached binary). Without ``go``, or when the build fails: the test is skipped, and fails
under ``CI`` (which must never pass by skipping).

:class:`Collector` runs it with an OTLP/HTTP receiver, the file exporter (one OTLP JSON
line per export, which :meth:`Collector.exports` reads back) and the debug exporter (a
summary line per export in ``collector.log``), and exposes its own telemetry on a second
port (:meth:`Collector.own_metrics`: accepted and refused points).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import NoReturn

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "dev" / "otelcol" / "build.sh"
BUILD_TIMEOUT_S = 900  # a cold build took 138 s on the 2-core machine; CI runs others beside


def _required() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip otherwise."""
    __tracebackhide__ = True
    outcome = pytest.fail.Exception if _required() else pytest.skip.Exception
    raise outcome(reason, pytrace=False) from None


def collector_binary() -> Path:
    """The collector's path, built (or waited for) now."""
    if shutil.which("go") is None:
        unavailable("no Go toolchain to build the OpenTelemetry Collector (dev/otelcol/build.sh)")
    try:
        proc = subprocess.run(
            ["bash", str(BUILD)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        unavailable(f"dev/otelcol/build.sh did not finish in {BUILD_TIMEOUT_S} s")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-25:])
        unavailable(f"dev/otelcol/build.sh failed ({proc.returncode}):\n{tail}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    """One collector process (restartable on the same ports)."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary, self.root = binary, root
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.telemetry_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/metrics"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log = root / "collector.log"

    def _config(self) -> Path:
        out = self.root / f"exports-{self.runs}.jsonl"
        path = self.root / f"config-{self.runs}.yaml"
        path.write_text(
            f"""
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{self.port}
exporters:
  file:
    path: {out}
    flush_interval: 100ms
  debug:
    verbosity: basic
service:
  telemetry:
    logs:
      level: info
    metrics:
      level: detailed
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {self.telemetry_port}
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [file, debug]
"""
        )
        return path

    def start(self, timeout: float = 30) -> Collector:
        self.runs += 1
        config = self._config()
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", f"file:{config}"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if (
                "Everything is ready"
                in self.log.read_text(errors="replace").split("Starting otelcol-sluice")[-1]
            ):
                return self
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the collector did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def exports(self, run: int | None = None) -> list[ExportMetricsServiceRequest]:
        """What the file exporter wrote in a run (the latest by default), in order."""
        path = self.root / f"exports-{run or self.runs}.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().split("\n")[:-1]  # a last line without "\n" is not whole
        return [json_format.Parse(line, ExportMetricsServiceRequest()) for line in lines]

    def wait_exports(self, count: int, timeout: float = 10) -> list[ExportMetricsServiceRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.exports()
            if len(got) >= count:
                return got
            time.sleep(0.1)
        raise AssertionError(f"{len(self.exports())} exports written, wanted {count}")

    def own_metrics(self) -> dict[str, float]:
        """The collector's own counters (this run): name{labels} → value."""
        url = f"http://127.0.0.1:{self.telemetry_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"^(otelcol_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
            if match:
                name = re.sub(r"_total$", "", match.group(1))  # with or without the suffix
                out[name + (match.group(2) or "")] = float(match.group(3))
        return out
