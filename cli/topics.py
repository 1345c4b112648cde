"""``sluice topics``: apply and show the topic catalog."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import KafkaClientErrors, fail, out, settings

app = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)


@app.command("create")
def create() -> None:
    """Create the catalog's topics (idempotent: existing topics are left alone)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from topics.catalog import Catalog

    s = settings()
    catalog = list(Catalog.from_settings(s))
    errors = KafkaClientErrors()
    admin = AdminClient(errors.config(s))
    try:
        existing = set(admin.list_topics(timeout=s.kafka_timeout_s).topics)
    except Exception as exc:
        raise fail(
            f"cannot reach Kafka at {s.kafka_bootstrap_servers}: {errors.describe(exc)}"
        ) from None
    for spec in catalog:
        if spec.name in existing:
            out.print(f"exists   {spec.name}", highlight=False)
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=-1,
            config=spec.topic_config(),
        )
        for spec in catalog
        if spec.name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=30).items():
        try:
            future.result()
            out.print(f"created  {name}", highlight=False)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                out.print(f"exists   {name}", highlight=False)
            else:
                raise fail(f"creating {name}: {exc}") from None


@app.command("list")
def list_() -> None:
    """Show the topic catalog: partitions, retention, record key and why."""
    from topics.catalog import Catalog

    s = settings()
    table = Table("topic", "partitions", "retention (days)", "key", "why this key", "schema")
    for spec in Catalog.from_settings(s):
        retention = (
            "compacted" if spec.retention_ms is None else f"{spec.retention_ms / 86_400_000:g}"
        )
        table.add_row(
            spec.name,
            str(spec.partitions),
            retention,
            " + ".join(spec.key) or "-",
            spec.key_reason or "-",
            spec.schema or "-",
        )
    out.print(table)
