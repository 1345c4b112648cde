"""Helpers for tests that run Sluice as a user would: CLI subprocesses and a real worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from sluice.taxonomy import FAMILIES

REPO = Path(__file__).resolve().parents[1]
SLUICE = [sys.executable, "-m", "sluice.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    """One isolated Sluice deployment: its own topic prefix, group, store and port."""

    bootstrap: str
    root: Path
    partitions: int = 4
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    web_port: int = field(default_factory=free_port)
    flush_interval_s: float = 1.0
    worker: subprocess.Popen | None = None
    group_name: str | None = None

    @property
    def prefix(self) -> str:
        return f"{self.name}."

    @property
    def group(self) -> str:
        return self.group_name or f"sluice-{self.name}"

    @property
    def olap_url(self) -> str:
        return f"chdb://{self.root / 'olap'}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            CLICKHOUSE_URL=self.olap_url,
            SLUICE_TOPIC_PREFIX=self.prefix,
            SLUICE_APP_ID=self.group,
            SLUICE_WEB_PORT=str(self.web_port),
            SLUICE_DATA_DIR=str(self.root / "var"),
            SLUICE_FLUSH_INTERVAL_S=str(self.flush_interval_s),
            SLUICE_TOPIC_PARTITIONS=str(self.partitions),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def topic(self, family: str) -> str:
        return f"{self.prefix}events.{family}"

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        env_extra: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*SLUICE, *args],
            env=self.env(**(env_extra or {})),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"sluice {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def produce(self, events: list[dict[str, Any]]) -> subprocess.CompletedProcess:
        path = self.root / f"events-{uuid.uuid4().hex[:6]}.jsonl"
        with path.open("w") as fh:
            for e in events:
                fh.write(json.dumps(e) + "\n")
        return self.run("produce", "--file", str(path))

    def start_worker(self) -> subprocess.Popen:
        log = (self.root / "worker.log").open("a")
        self.worker = subprocess.Popen(
            [*SLUICE, "worker"],
            env=self.env(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.worker

    def stop_worker(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        assert self.worker is not None
        self.worker.send_signal(sig)
        code = self.worker.wait(timeout=timeout)
        self.worker = None
        return code

    def log_tail(self, lines: int = 60) -> str:
        path = self.root / "worker.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def lag(self) -> int:
        """Events not yet committed by the worker's group, over every event topic."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
            }
        )
        try:
            tps = [
                TopicPartition(self.topic(f), p) for f in FAMILIES for p in range(self.partitions)
            ]
            committed = consumer.committed(tps, timeout=10)
            total = 0
            for tp in committed:
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                total += high - max(tp.offset, 0)
            return total
        finally:
            consumer.close()

    def wait_drained(self, timeout: float = 240) -> float:
        """Wait until the worker committed every event; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.worker is not None and self.worker.poll() is not None:
                raise AssertionError(f"worker exited {self.worker.returncode}:\n{self.log_tail()}")
            if self.lag() == 0:
                return time.monotonic() - start
            time.sleep(0.5)
        raise AssertionError(
            f"worker did not drain in {timeout}s (lag {self.lag()}):\n{self.log_tail()}"
        )

    def query(self, sql: str) -> list[dict[str, Any]]:
        proc = self.run("olap", "query", "--format", "json", sql)
        return json.loads(proc.stdout)
