"""``sluice produce --file EVENTS.jsonl``: validate every line, then produce."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.common import KafkaClientErrors, err, fail, out, settings


def produce(
    file: Path = typer.Option(..., "--file", "-f", help="JSON lines, one event per line."),
    skip_invalid: bool = typer.Option(
        False, help="Send the valid lines even if some are invalid (default: send nothing)."
    ),
) -> None:
    """Validate and produce events from a JSON-lines file.

    Every line is validated and encoded first (bad lines are reported with their line
    numbers, and nothing is sent unless ``--skip-invalid``); then the encoded events are
    produced and every acknowledgement awaited.
    """
    from rich.progress import Progress

    from avro_schemas.codec import ValidationError
    from sluice.producer import DeliveryError, EventProducer

    s = settings()
    if not file.is_file():
        raise fail(f"{file}: no such file")
    errors = KafkaClientErrors()
    try:
        producer = EventProducer(s, logger=errors.logger)
    except Exception as exc:  # a bad client configuration
        raise fail(f"producing failed: {errors.describe(exc)}") from None
    good = []
    bad: list[tuple[int, str]] = []
    with file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("a line must be a JSON object")
                good.append(producer.encode(event))  # validated once, here
            except (ValueError, ValidationError) as exc:
                bad.append((lineno, str(exc)))
    for lineno, message in bad[:50]:
        err.print(f"{file}:{lineno}: {message}", highlight=False)
    if len(bad) > 50:
        err.print(f"... and {len(bad) - 50} more bad lines", highlight=False)
    if bad and not skip_invalid:
        raise fail(
            f"{len(bad)} invalid line(s); nothing was sent "
            f"(use --skip-invalid to send the {len(good)} valid ones)"
        )
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("producing", total=len(good))
            for encoded in good:
                producer.send_encoded(encoded)
                progress.advance(task)
        stats = producer.flush()
    except DeliveryError as exc:
        raise fail(f"{exc} ({len(good) - len(exc.failures)} delivered)") from None
    except Exception as exc:  # broker unreachable, etc.
        raise fail(f"producing failed: {errors.describe(exc)}") from None
    out.print(
        f"sent {stats.delivered} event(s) from {file}"
        + (f"; skipped {len(bad)} invalid line(s)" if bad else ""),
        highlight=False,
    )
