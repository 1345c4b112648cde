"""The Faust application: configuration and wiring, nothing else.

Faust runs the application around the hot path (:mod:`streams.worker`): the consumer
group (assignment, rebalancing, static membership), the checkpoint timer, the web server
(:mod:`streams.web`). It has no table: Sluice writes the state's changelog and restores
the state itself (:mod:`streams.restore`), from each partition's local store and the
changelog after its marker. The private hooks this wiring needs live in
:mod:`streams.seam`.

Static membership (``SLUICE_INSTANCE_ID``, aiokafka's ``group_instance_id``): a worker that
restarts within the session timeout gets its partitions back from the broker at once,
without a rebalance, instead of waiting until the session of its previous incarnation
expires. The price: a static member never leaves the group on shutdown (aiokafka sends no
LeaveGroup for it), so the partitions of a worker that stops for good, or crashes and
does not come back, wait a whole session timeout before the group hands them on.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.kafka import kafka_config, kafka_ssl_context
from sluice.settings import (
    METRICS_PATH,
    PRIVACY_VERIFY_PATH,
    QUERY_PATH,
    ROWS_PATH,
    STATUS_PATH,
    Settings,
)
from streams import seam, web
from topics.catalog import Catalog

if TYPE_CHECKING:
    from streams.worker import Worker

log = logging.getLogger("sluice.app")


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for faust.App: None (plaintext), SSL or SASL/SCRAM over TLS."""
    import faust

    s = settings
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(s)
    if s.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=s.kafka_sasl_username,
        password=s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None,
        ssl_context=context,
        mechanism=s.kafka_sasl_mechanism,
    )


def web_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS context of the worker's endpoint, when a certificate is configured."""
    if not settings.sluice_web_tls_cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.sluice_web_tls_cert_file, settings.sluice_web_tls_key_file)
    return context


def build_app(settings: Settings, worker: Worker) -> seam.SeamApp:
    """The Faust app that drives ``worker``."""
    s = settings
    # absolute: Faust resolves a relative tabledir inside its datadir
    data_dir = Path(s.sluice_data_dir).resolve()
    (data_dir / "faust").mkdir(parents=True, exist_ok=True)
    brokers = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(",") if h.strip()]
    app = seam.SeamApp(
        s.sluice_app_id,
        broker=brokers,
        broker_credentials=faust_credentials(s),  # TLS / SASL_SSL from settings
        store="memory://",
        topic_partitions=s.sluice_topic_partitions,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=s.sluice_instance_id or None,
        stream_wait_empty=True,
        producer_linger=0.05,
        producer_max_request_size=16 * 1024 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        producer_acks=-1,
        broker_commit_every=1_000_000_000,  # commits happen after our checkpoints
        broker_session_timeout=s.kafka_session_timeout_s,
        broker_max_poll_interval=s.kafka_max_poll_interval_s,
        broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_s / 10),
        web_enabled=True,
        web_ssl_context=web_tls_context(s),
        web_port=s.sluice_web_port,
        web_bind=s.sluice_web_host,
        web_host=s.sluice_web_host,
        datadir=str(data_dir / "faust"),
        logging_config=None,
    )
    worker.bind(app)
    app.sluice = worker  # type: ignore[attr-defined] - the views reach the worker here
    app.before_wait_empty = worker.drain
    app.on_stopping = worker.stop
    source = app.topic(
        *worker.families,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        acks=False,  # Sluice commits offsets itself after each checkpoint
    )
    app.dlq = app.topic(  # type: ignore[attr-defined]
        worker.catalog.dlq.name, key_serializer="raw", value_serializer="raw", internal=False
    )
    app.on_partitions_revoked.connect(worker.on_revoked)
    app.on_partitions_assigned.connect(_assigned_handler(worker))
    app.agent(source, name="sluice-events")(worker.agent)
    app.timer(s.sluice_flush_interval_s, on_leader=False)(worker.on_timer)
    app.page(STATUS_PATH)(web.StatusView)
    app.page(QUERY_PATH)(web.QueryView)
    app.page(ROWS_PATH)(web.RowsView)
    app.page(METRICS_PATH)(web.MetricsView)
    app.page(PRIVACY_VERIFY_PATH)(web.PrivacyVerifyView)
    app.task(worker.router.start)
    app.task(worker.hot_loop)
    app.task(worker.follow_registry)
    return app


def _assigned_handler(worker: Worker) -> Any:
    handed_off = False

    async def on_assigned(app: Any, assigned: set, **kwargs: Any) -> None:
        nonlocal handed_off
        if not handed_off:  # the consumer exists from the first assignment on
            seam.hand_off(app.consumer, worker.families)
            handed_off = True
        await worker.on_assigned(app, assigned, **kwargs)

    return on_assigned


def create_worker(settings: Settings) -> Worker:
    """A worker and the Faust app that drives it."""
    from streams.worker import Worker

    worker = Worker(settings)
    build_app(settings, worker)
    return worker


def ensure_changelog(settings: Settings) -> None:
    """Create the state changelog as the topic catalog describes it, if it is missing
    (``sluice topics create`` makes it too; Faust's table used to declare it)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    spec = Catalog.from_settings(settings).changelog
    admin = AdminClient(kafka_config(settings))
    try:
        if spec.name in admin.list_topics(timeout=30).topics:
            return
    except Exception as exc:  # Kafka not there yet: Faust waits for it; restores retry
        log.warning("could not check the state changelog %s (%s)", spec.name, exc)
        return
    topic = NewTopic(spec.name, spec.partitions, replication_factor=-1, config=spec.topic_config())
    for name, future in admin.create_topics([topic], request_timeout=30).items():
        try:
            future.result()
            log.info("created the state changelog %s", name)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create the state changelog {name}: {exc}") from None


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """``sluice worker``: check the seam, open the OLAP store, run until SIGTERM."""
    import faust

    from sluice.malloc import limit_arenas

    arenas = limit_arenas(settings.sluice_malloc_arenas)  # before any thread is started
    seam.check()
    ensure_changelog(settings)
    worker = create_worker(settings)
    worker.started_with.append(arenas)
    worker.olap  # open and migrate the OLAP store before taking any event  # noqa: B018
    worker.load_registry()  # the erased leads, before any state is restored
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
