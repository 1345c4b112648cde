"""Find a Kafka broker for the test session (used by ``conftest.py``).

Order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set: that broker, checked to answer (no fallback:
   the caller asked for it explicitly).
2. A testcontainers ``KafkaContainer`` when a Docker engine answers (image:
   ``SLUICE_TEST_KAFKA_IMAGE``, default ``confluentinc/cp-kafka:8.0.0`` = Kafka 4.0, in
   KRaft mode). If the container fails to start, fall through to 3.
3. A local broker from Maven Central jars (:mod:`dev.kafka`) in a temporary
   directory on free ports, stopped at the end of the session.

When none can be had the fixture fails (``CI`` true or ``SLUICE_REQUIRE_KAFKA=1``) or
skips the test with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from dev import kafka as devkafka

DEFAULT_TEST_IMAGE = "confluentinc/cp-kafka:8.0.0"

# librdkafka logs every refused connection to stderr unless given a logger.
_QUIET = logging.getLogger("tests.kafka.librdkafka")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


class BrokerUnavailable(Exception):
    """No broker could be found or started; the message says why."""


@dataclass
class Broker:
    """A broker for the test session.

    Attributes:
        bootstrap: ``bootstrap.servers`` value.
        kind: ``"env"``, ``"testcontainers"`` or ``"local-jars"``.
        detail: Human-readable detail (image, data dir, log path).
    """

    bootstrap: str
    kind: str
    detail: str = ""
    _close: Callable[[], object] | None = field(default=None, repr=False)

    def close(self) -> None:
        """Stop the broker if this session started it (idempotent)."""
        close, self._close = self._close, None
        if close is not None:
            close()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def kafka_required() -> bool:
    """True when a missing broker must fail the run (``CI`` or ``SLUICE_REQUIRE_KAFKA``)."""
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("SLUICE_REQUIRE_KAFKA"))


def unavailable(reason: str) -> NoReturn:
    """Fail (``CI``/``SLUICE_REQUIRE_KAFKA=1``) or skip the current test with ``reason``."""
    __tracebackhide__ = True
    # Raised outside any ``except`` block of the caller's, so no chained traceback.
    outcome = pytest.fail.Exception if kafka_required() else pytest.skip.Exception
    raise outcome(reason, pytrace=False) from None


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports that were free a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def check_reachable(bootstrap: str, timeout: float = 15.0) -> None:
    """Raise :class:`BrokerUnavailable` unless ``bootstrap`` answers a metadata request."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    conf: dict[str, object] = {"bootstrap.servers": bootstrap, "logger": _QUIET}
    admin = AdminClient(conf)  # type: ignore[arg-type]
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailable(f"Kafka at {bootstrap} does not answer: {exc}") from None
    if not metadata.brokers:
        raise BrokerUnavailable(f"Kafka at {bootstrap} reports no brokers")


def docker_engine_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, engine down, bad DOCKER_HOST...
        return False


def _from_env(bootstrap: str) -> Broker:
    check_reachable(bootstrap)
    return Broker(bootstrap, "env", "KAFKA_BOOTSTRAP_SERVERS")


def _from_testcontainers() -> Broker:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer

    image = os.environ.get("SLUICE_TEST_KAFKA_IMAGE", DEFAULT_TEST_IMAGE)
    container = KafkaContainer(image).with_kraft()
    container.with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    container.with_env("KAFKA_NUM_PARTITIONS", "4")
    container.with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
    container.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
    container.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    container.start(timeout=120)
    try:
        bootstrap = container.get_bootstrap_server()
        check_reachable(bootstrap, timeout=30)
    except BaseException:
        with contextlib.suppress(Exception):
            container.stop()
        raise
    return Broker(bootstrap, "testcontainers", image, container.stop)


def _from_local_jars(base_dir: Path, attempts: int = 2) -> Broker:
    last: devkafka.DevKafkaError | None = None
    for attempt in range(attempts):
        port, controller_port = free_ports(2)
        data_dir = base_dir / f"broker-{attempt}"
        try:
            handle = devkafka.start(data_dir, port=port, controller_port=controller_port)
        except devkafka.ToolchainError as exc:
            raise BrokerUnavailable(f"cannot run a local Kafka: {exc}") from None
        except devkafka.DevKafkaError as exc:  # e.g. a port taken since we picked it
            last = exc
            continue
        return Broker(
            handle.bootstrap,
            "local-jars",
            f"data {handle.data_dir}, log {handle.log_path}",
            functools.partial(devkafka.stop, handle.data_dir, timeout=30),
        )
    raise BrokerUnavailable(f"the local Kafka did not start: {last}")


def acquire_broker(base_dir: Path) -> Broker:
    """Find or start a broker (see the module docstring for the order).

    Args:
        base_dir: An empty temporary directory for a local broker's data.

    Raises:
        BrokerUnavailable: with every reason tried.
    """
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if bootstrap:
        return _from_env(bootstrap)
    reasons: list[str] = []
    if docker_engine_available():
        try:
            return _from_testcontainers()
        except Exception as exc:
            reasons.append(f"testcontainers Kafka failed: {type(exc).__name__}: {exc}")
            warnings.warn(f"{reasons[-1]}; trying the local jar broker", stacklevel=2)
    else:
        reasons.append("no Docker engine")
    try:
        return _from_local_jars(base_dir)
    except BrokerUnavailable as exc:
        reasons.append(str(exc))
    raise BrokerUnavailable("; ".join(reasons))
