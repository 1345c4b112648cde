"""``sluice schemas``: Avro schema tools (the rules live in :mod:`avro_schemas.evolution`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import out, settings

app = typer.Typer(help="Avro schemas of the taxonomy.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Avro schemas of the taxonomy."""
    # A callback keeps `check` a sub-command even while it is the only one.


@app.command()
def check(
    dir: Path | None = typer.Option(  # noqa: B008 - typer's idiom
        None,
        "--dir",
        help="Schema tree to check (default: SLUICE_SCHEMA_DIR, else the schemas "
        "shipped with Sluice).",
        file_okay=False,
    ),
) -> None:
    """Check every family's schema versions: FULL_TRANSITIVE compatibility, unchanged
    envelope and documented fields, defaults on every other field. Exit 1 on any problem."""
    from avro_schemas import SCHEMA_DIR
    from avro_schemas.evolution import check_tree, list_versions
    from topics.taxonomy import FAMILIES

    root = dir if dir is not None else Path(settings().sluice_schema_dir or SCHEMA_DIR)
    problems = check_tree(root)
    versions = list_versions(root)

    table = Table(title=f"Avro schemas in {root}")
    table.add_column("family")
    table.add_column("versions")
    table.add_column("status")
    for family in sorted(set(FAMILIES) | set(versions), key=_order):
        found = [p for p in problems if p.family == family]
        numbers = versions.get(family, [])
        status = (
            "[green]ok[/]" if not found else f"[red]{len(found)} problem{'s' * (len(found) > 1)}[/]"
        )
        table.add_row(family, ", ".join(f"v{n}" for n in numbers) or "-", status)
    out.print(table)

    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {root}", err=True)
        raise typer.Exit(1)


def _order(family: str) -> tuple[int, str]:
    from topics.taxonomy import FAMILIES

    return (FAMILIES.index(family), "") if family in FAMILIES else (len(FAMILIES), family)
