"""Helpers for tests that run Sluice as a user would: CLI subprocesses and a real worker."""

from __future__ import annotations

import json
import logging
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

from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests._olap import drop_store, new_store_url
from topics.taxonomy import FAMILIES

# librdkafka logs every refused connection to stderr unless given a logger.
_QUIET = logging.getLogger("tests.sluice.librdkafka")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())

REPO = Path(__file__).resolve().parents[1]
# A worker that commits nothing for this long while events wait is stalled: its test fails
# then, with the worker's log, instead of waiting out the test's whole budget.
STALL_S = float(os.environ.get("SLUICE_TEST_STALL_S", "45"))
SLUICE = [sys.executable, "-m", "cli"]
# dev tooling (dev/: the chDB HTTP front, the fault hooks) is not installed: run from the repo
FAULTY_SLUICE = [sys.executable, "-m", "dev.faults"]
OLAP_SERVER = [sys.executable, "-m", "dev.olap_server"]


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
    session_timeout_s: float = 6.0
    worker: subprocess.Popen | None = None
    group_name: str | None = None
    # the bearer token of the worker's query and rows endpoints (the CLI sends it too)
    api_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    # a ClickHouse server (e.g. dev/olap_server.py) instead of the deployment's own
    # chDB store, for several workers sharing one store
    clickhouse_url: str | None = None
    # static group membership (SLUICE_INSTANCE_ID): a restarted worker gets its partitions
    # back without a rebalance; None: dynamic membership
    instance_id: str | None = None
    _own_store: str | None = field(default=None, repr=False)

    @property
    def prefix(self) -> str:
        return f"{self.name}."

    @property
    def group(self) -> str:
        return self.group_name or f"sluice-{self.name}"

    @property
    def olap_url(self) -> str:
        """The deployment's store: chDB under its root, or a database of its own on the
        ``CLICKHOUSE_TEST_URL`` server (tests/_olap.py)."""
        if self.clickhouse_url is None:
            self.clickhouse_url = self._own_store = new_store_url(self.root, self.name)
        return self.clickhouse_url

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            CLICKHOUSE_URL=self.olap_url,
            SLUICE_TOPIC_PREFIX=self.prefix,
            SLUICE_APP_ID=self.group,
            SLUICE_WEB_PORT=str(self.web_port),
            SLUICE_API_TOKEN=self.api_token,
            SLUICE_DATA_DIR=str(self.root / "var"),
            SLUICE_FLUSH_INTERVAL_S=str(self.flush_interval_s),
            SLUICE_TOPIC_PARTITIONS=str(self.partitions),
            # a killed worker's partitions move on after this (Kafka's default is 45 s)
            KAFKA_SESSION_TIMEOUT_S=str(self.session_timeout_s),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        if self.instance_id is not None:
            env["SLUICE_INSTANCE_ID"] = self.instance_id
        env.update(extra)
        return env

    def auth(self) -> dict[str, str]:
        """Headers for the worker's protected endpoints (query, rows)."""
        return {"Authorization": f"Bearer {self.api_token}"}

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

    def prepare(self) -> None:
        """Create the catalog's topics and migrate the OLAP store, as a user would first."""
        self.run("topics", "create")
        self.run("olap", "migrate")

    def produce(self, events: list[dict[str, Any]]) -> subprocess.CompletedProcess:
        path = self.root / f"events-{uuid.uuid4().hex[:6]}.jsonl"
        with path.open("w") as fh:
            for e in events:
                fh.write(json.dumps(e) + "\n")
        return self.run("produce", "--file", str(path))

    def start_worker(
        self, env_extra: dict[str, str] | None = None, *, command: list[str] = SLUICE
    ) -> subprocess.Popen:
        """Start ``sluice worker`` (``command=FAULTY_SLUICE``: with the fault hooks of
        dev/faults.py, configured by ``env_extra``)."""
        log = (self.root / "worker.log").open("a")
        self.worker = subprocess.Popen(
            [*command, "worker"],
            env=self.env(**(env_extra or {})),
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

    @property
    def state_dir(self) -> Path:
        """The worker's local state stores, one directory per partition."""
        return self.root / "var" / "state" / self.group

    def log_tail(self, lines: int = 60) -> str:
        path = self.root / "worker.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def close(self) -> None:
        """Kill the worker if one still runs (a failed test must not leave it behind)."""
        if self.worker is not None:
            if self.worker.poll() is None:
                self.worker.kill()
                self.worker.wait(timeout=30)
            self.worker = None
        if self._own_store is not None:
            drop_store(self._own_store)
            self._own_store = None

    def offsets(self, attempts: int = 8) -> tuple[int, int]:
        """(committed, end) summed over every event topic partition of the group.

        Retries what a coordinator change answers (NOT_COORDINATOR, COORDINATOR_LOAD_IN_
        PROGRESS, a broker restarting...): those are transient, not a verdict.
        """
        tps = [TopicPartition(self.topic(f), p) for f in FAMILIES for p in range(self.partitions)]
        last: Exception | None = None
        for attempt in range(attempts):
            consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": self.group,
                    "enable.auto.commit": False,
                    "logger": _QUIET,
                }
            )
            try:
                committed = consumer.committed(tps, timeout=10)
                done = end = 0
                for tp in committed:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
                    _, high = consumer.get_watermark_offsets(tp, timeout=10)
                    done += max(tp.offset, 0)
                    end += high
                return done, end
            except KafkaException as exc:
                last = exc
                time.sleep(min(0.25 * 2**attempt, 3.0))
            finally:
                consumer.close()
        raise AssertionError(f"cannot read the group's offsets: {last}")

    def committed(self) -> int:
        """Events committed by the worker's group, over every event topic."""
        return self.offsets()[0]

    def lag(self) -> int:
        """Events not yet committed by the worker's group, over every event topic."""
        done, end = self.offsets()
        return end - done

    def wait_drained(self, timeout: float = 240, stall_s: float = STALL_S) -> float:
        """Wait until the worker committed every event; return the seconds it took.

        Fails at once when the worker exits, and as soon as nothing was committed for
        ``stall_s`` seconds while events wait (a stalled worker), with its last log lines.
        """
        start = moved = time.monotonic()
        last = -1
        while time.monotonic() - start < timeout:
            if self.worker is not None and self.worker.poll() is not None:
                raise AssertionError(f"worker exited {self.worker.returncode}:\n{self.log_tail()}")
            done, end = self.offsets()
            if done >= end:
                return time.monotonic() - start
            now = time.monotonic()
            if done != last:
                last, moved = done, now
            elif now - moved > stall_s:
                raise AssertionError(
                    f"worker stalled: nothing committed for {stall_s:.0f}s with {end - done} "
                    f"events waiting:\n{self.log_tail()}"
                )
            time.sleep(0.5)
        raise AssertionError(
            f"worker did not drain in {timeout}s (lag {self.lag()}):\n{self.log_tail()}"
        )

    def query(self, sql: str) -> list[dict[str, Any]]:
        proc = self.run("olap", "query", "--format", "json", sql)
        return json.loads(proc.stdout)


@dataclass
class OlapServer:
    """The chDB HTTP front (``python -m dev.olap_server``) over ``root/olap``, on a free port.

    Several workers share one chDB store through it (chDB allows one process per store).
    """

    root: Path
    args: tuple[str, ...] = ()
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"  # the name clients connect to (TLS: the certificate's name)
    scheme: str = "http"
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "olap-serve.log"

    def start(self, timeout: float = 60) -> OlapServer:
        """Start the server; return once it listens (AssertionError with its log if not)."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKHOUSE_")}
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **self.env_extra)
        self.proc = subprocess.Popen(
            [*OLAP_SERVER, "--path", str(self.root / "olap")]
            + ["--port", str(self.port), *self.args],
            env=env,
            cwd=self.root,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while "serving " not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the chDB HTTP front did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server and wait; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def close(self) -> None:
        """Kill the server if it still runs (a failed test must not leave it behind)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None
