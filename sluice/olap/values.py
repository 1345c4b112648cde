"""OLAP values over JSON: query results for the CLI and the worker's query endpoint, and
rows ``sluice backfill`` ships to a running worker (pure; no ClickHouse client needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any


def to_json(value: Any) -> Any:
    """One value as JSON carries it: dates and datetimes ISO-8601, decimals and UUIDs as
    strings, numbers, strings, booleans and None unchanged, arrays (tuples, as chDB
    returns them, too) as lists of such values."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return str(value)


def rows_to_json(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Rows as JSON values (see :func:`to_json`)."""
    return [[to_json(v) for v in row] for row in rows]


def rows_from_json(types: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Undo :func:`rows_to_json` given the ClickHouse column types (from DESCRIBE)."""
    parse: list[Callable[[Any], Any] | None] = []
    for kind in types:
        if "DateTime" in kind:
            parse.append(_parse_datetime)
        elif "Date" in kind:
            parse.append(date.fromisoformat)
        else:
            parse.append(None)
    out = []
    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) != len(parse):
            raise ValueError(f"a row must be a list of {len(parse)} values")
        out.append([v if f is None or v is None else f(v) for f, v in zip(parse, row, strict=True)])
    return out


def _parse_datetime(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
