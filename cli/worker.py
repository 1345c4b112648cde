"""``sluice worker``: the long-running processor (stops cleanly on SIGTERM)."""

from __future__ import annotations

import typer

from cli.common import fail, needs, settings


def worker(
    loglevel: str = typer.Option("info", help="Log level of the worker."),
) -> None:
    """Run the long-running stream processor (stops cleanly on SIGTERM)."""
    try:
        from streams.app import run_worker
    except ImportError as exc:
        raise needs("worker", exc) from None
    from streams.seam import SeamError

    conf = settings()  # outside the try: its typer.Exit is a RuntimeError too
    try:
        run_worker(conf, loglevel=loglevel)
    except (SeamError, RuntimeError) as exc:
        raise fail(str(exc)) from None
