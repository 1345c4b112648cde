"""The OLAP catalog: every table Sluice may write, with its grain and key.

Column meanings live in the migration DDL (``COMMENT``) and in the README; this is the
runtime guard the writer checks before every insert.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OlapTable:
    """A table the worker writes."""

    name: str
    grain: str
    key: tuple[str, ...]
    columns: tuple[str, ...]


OLAP_TABLES: dict[str, OlapTable] = {
    t.name: t
    for t in (
        OlapTable(
            name="campaign_analytics",
            grain="per company, campaign and UTC send day",
            key=("company_id", "campaign_id", "day"),
            columns=(
                "company_id",
                "campaign_id",
                "day",
                "sent",
                "delivered",
                "opened_tracked",
                "clicked_tracked",
                "replied",
                "bounced",
                "unsubscribed",
                "spam_complaints",
                "updated",
                "_version",
            ),
        ),
    )
}

# Sluice's own bookkeeping (migration history); never analytics data.
INTERNAL_TABLES: frozenset[str] = frozenset({"sluice_schema_migrations"})
