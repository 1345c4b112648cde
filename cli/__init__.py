"""The ``sluice`` command line: one small module per command (group).

Every error a user can cause (bad settings, a bad file, an unreachable broker) is one
clear line on stderr and a non-zero exit code, never a traceback (:mod:`cli.common`).
Commands import what they need when they run, so ``sluice --help`` and the commands a
service uses (``produce``, ``topics``) work on the light install without the worker's
dependencies.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import typer

from cli import (
    audit,
    backfill,
    dlq,
    olap,
    privacy,
    produce,
    schemas,
    status,
    topics,
    worker,
)
from cli.common import err, out

# click's exception classes through typer's public names (typer >= 0.20 vendors click in a
# private module; BadParameter derives from UsageError, which derives from ClickException)
UsageError = cast("type[Any]", typer.BadParameter.__base__)
ClickException = cast("type[Any]", UsageError.__base__)

app = typer.Typer(
    help="Sluice: route taxonomy-typed Avro events and keep a lean ClickHouse OLAP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("worker")(worker.worker)
app.command("produce")(produce.produce)
app.command("status")(status.status)
app.command("backfill")(backfill.backfill)
app.add_typer(topics.app, name="topics")
app.add_typer(olap.app, name="olap")
app.add_typer(schemas.app, name="schemas")
app.add_typer(audit.app, name="audit")
app.add_typer(dlq.app, name="dlq")
app.add_typer(privacy.app, name="privacy")


def main() -> None:
    """Entry point of the ``sluice`` script: usage errors are one line too (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            out.print(exc.ctx.get_help(), highlight=False, markup=False)
            sys.exit(exc.exit_code)
        where = f"{exc.ctx.command_path} --help" if exc.ctx is not None else "sluice --help"
        err.print(
            f"[bold red]error:[/] {exc.format_message()} (see {where})",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(exc.exit_code)
    except ClickException as exc:
        err.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
