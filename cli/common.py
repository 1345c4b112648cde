"""What every command shares: the consoles, one-line errors, settings, Kafka client errors.

Every error a user can cause (bad settings, a bad file, an unreachable broker) is one
clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError as SettingsError
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from sluice.settings import Settings

out = Console(soft_wrap=True)  # a line stays one line, whatever the width
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line; return the Exit to raise (``raise fail(...)``)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings() -> Settings:
    """The process settings; a bad value is one error line naming the variable."""
    from sluice.settings import get_settings

    try:
        return get_settings()
    except SettingsError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first.get("loc"):
            raise fail(f"invalid setting {str(first['loc'][0]).upper()}: {message}") from None
        raise fail(f"invalid settings: {message}") from None


def needs(extra: str, exc: ImportError) -> typer.Exit:
    """A command whose optional dependencies are not installed: name the pip extra."""
    return fail(
        f"this command needs the '{extra}' extra ({exc.name} is missing): "
        f"pip install 'sluice[{extra}]'"
    )


class KafkaClientErrors:
    """Quiet confluent-kafka clients for the CLI: librdkafka's log lines go nowhere and
    the first client-side error (authentication, TLS) is kept for the one error line."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.logger = logging.getLogger("cli.librdkafka")
        self.logger.propagate = False
        if not self.logger.handlers:
            self.logger.addHandler(logging.NullHandler())

    def config(self, s: Settings, **extra: Any) -> dict[str, Any]:
        from sluice.kafka import kafka_config

        return {**kafka_config(s), "logger": self.logger, "error_cb": self._on_error, **extra}

    def _on_error(self, error: Any) -> None:
        if self.first is None:
            self.first = error.str()

    def describe(self, exc: Exception) -> str:
        return self.first or str(exc)


def quiet_clickhouse() -> None:
    """clickhouse-connect logs its own line before raising; the CLI prints one error line."""
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)


def chdb_hint(message: str) -> str:
    if "lock" in message.lower() or "already" in message.lower():
        return f"{message} (is a worker using this chDB store? stop it, or query through it)"
    return message


def ms_iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WorkerUnreachable(Exception):
    """No worker answers at the configured web address."""


def call_worker(s: Settings, path: str, body: bytes | None = None, timeout: float = 30) -> Any:
    """GET (or POST ``body``) a JSON endpoint of the running worker.

    Raises :class:`WorkerUnreachable` when nothing answers, and ``fail`` with the worker's
    error line when it refuses.
    """
    request = urllib.request.Request(s.worker_url(path), data=body)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    token = s.api_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = None
    if request.full_url.startswith("https://"):
        import ssl

        context = ssl.create_default_context(cafile=s.sluice_web_tls_ca_file)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", str(exc))
        except Exception:
            message = str(exc)
        hint = " (set SLUICE_API_TOKEN to the worker's token)" if exc.code == 401 else ""
        raise fail(f"the worker refused: {message}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WorkerUnreachable(str(getattr(exc, "reason", exc))) from None
