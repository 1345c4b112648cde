"""Shared pytest fixtures for Sluice's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import _broker
    from confluent_kafka.admin import AdminClient
else:
    try:  # tests/ is a plain directory (pytest puts it on sys.path) ...
        import _broker
    except ModuleNotFoundError:  # ... or a package
        from tests import _broker


# --------------------------------------------------------------------- Kafka broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bootstrap.servers`` of a real Kafka broker for the whole session.

    ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a testcontainers Kafka when a Docker engine
    answers, else a local broker from Maven Central jars (``dev.kafka``) on free
    ports, stopped at session end. Without any: fail under ``CI``/``SLUICE_REQUIRE_KAFKA=1``,
    skip otherwise.
    """
    try:
        broker = _broker.acquire_broker(tmp_path_factory.mktemp("kafka"))
    except _broker.BrokerUnavailable as exc:
        _broker.unavailable(f"no Kafka broker for the tests: {exc}")
    try:
        yield broker.bootstrap
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    """A confluent-kafka ``AdminClient`` on the session's broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


# --------------------------------------------------------------------- ClickHouse (chDB)


@pytest.fixture(scope="session")
def reference_olap(tmp_path_factory: pytest.TempPathFactory):
    """The test process's own ClickHouse, for reference queries: embedded chDB, or a
    database of its own on the server ``CLICKHOUSE_TEST_URL`` names (tests/_olap.py).

    chDB hosts one engine per process, so the session opens exactly one store; the
    workers under test run in their own processes with their own stores.
    """
    try:
        from tests import _olap
    except ModuleNotFoundError:
        import _olap

    url = _olap.new_store_url(tmp_path_factory.mktemp("reference-olap"), "reference")
    client = _olap.open_store(url)
    yield client
    client.close()
    _olap.drop_store(url)


# --------------------------------------------------------------------- a Sluice deployment


@pytest.fixture
def deployment(kafka_bootstrap: str, tmp_path):
    """An isolated Sluice deployment whose worker is killed when the test ends, pass or fail."""
    try:
        from tests._sluice import Deployment
    except ModuleNotFoundError:
        from _sluice import Deployment

    dep = Deployment(kafka_bootstrap, tmp_path)
    yield dep
    dep.close()
