"""The local Kafka broker (``dev.kafka``) and the ``kafka_bootstrap`` fixture."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dev import kafka as devkafka

if TYPE_CHECKING:
    import _broker
else:
    try:  # tests/ is a plain directory (pytest puts it on sys.path) ...
        import _broker
    except ModuleNotFoundError:  # ... or a package
        from tests import _broker

pytestmark = pytest.mark.kafka


def _create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
    futures[name].result(timeout=30)


def _topics(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15).topics)


def test_produce_and_consume_one_message(kafka_bootstrap: str) -> None:
    topic = f"test-devkafka-{uuid.uuid4().hex}"
    _create_topic(kafka_bootstrap, topic)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=b"tenant-1", value=b"hello sluice")
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"test-devkafka-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        msg = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None:
                break
        assert msg is not None, "no message within 60 s"
        assert msg.error() is None, msg.error()
        assert (msg.key(), msg.value()) == (b"tenant-1", b"hello sluice")
        consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()


def _pid_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def test_local_broker_start_kill_restart_stop(tmp_path: Path) -> None:
    """A second jar broker: idempotent start, data kept across a crash, clean stop."""
    data_dir = tmp_path / "kafka"
    port, controller_port = _broker.free_ports(2)
    try:
        handle = devkafka.start(data_dir, port=port, controller_port=controller_port)
    except devkafka.ToolchainError as exc:
        _broker.unavailable(str(exc))
    try:
        assert handle.bootstrap == f"127.0.0.1:{port}"
        assert (data_dir / "broker.pid").read_text().strip() == str(handle.pid)
        assert handle.log_path.is_file()
        # Starting again returns the running broker.
        again = devkafka.start(data_dir, port=port, controller_port=controller_port)
        assert again.pid == handle.pid
        assert devkafka.status(data_dir) == handle

        topic = f"test-devkafka-{uuid.uuid4().hex}"
        _create_topic(handle.bootstrap, topic)

        # A crash (SIGKILL), then a restart on the same data keeps the topic.
        assert devkafka.kill(data_dir) is True
        assert not _pid_running(handle.pid)
        assert devkafka.status(data_dir) is None
        restarted = devkafka.start(data_dir, port=port, controller_port=controller_port)
        assert restarted.pid != handle.pid
        assert topic in _topics(restarted.bootstrap)

        assert devkafka.stop(data_dir) is True
        assert not _pid_running(restarted.pid)
        assert not (data_dir / "broker.pid").exists()
        assert devkafka.status(data_dir) is None
        assert devkafka.stop(data_dir) is False  # stopping a stopped broker is a no-op
    finally:
        devkafka.kill(data_dir)
