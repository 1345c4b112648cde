"""HTTP POST for sinks, with responses classified into the errors of :mod:`sinks.base`.

Synchronous on purpose (``requests``, run in a thread by the sink): gzip and the socket
wait release the GIL, so several batches are in flight while the event loop keeps
taking events.
"""

from __future__ import annotations

import asyncio
import functools
import gzip as gzip_lib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import requests

from sinks.base import DestinationRefused, PermanentError, TransientError, parse_retry_after

T = TypeVar("T")

# The sinks' own threads: a hanging destination must not take the default executor's
# threads, which the worker needs for its OLAP writes.
_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sluice-sink")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking I/O of a sink in the sinks' thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_THREADS, functools.partial(fn, *args, **kwargs))


# The destination refuses Sluice, not the events: a key revoked, mistyped or lacking a
# scope (401, 403), or a proxy's credentials (407). Rejecting events one by one for it
# would flood the DLQ; retrying it forever would stall every route behind backpressure.
# The sink retries it for a grace period, then stops asking (sinks.base, "refused").
REFUSING = frozenset({401, 403, 407})
# Statuses worth retrying as they are.
RETRYABLE = frozenset({408, 425, 429})


def raise_for_status(status: int, retry_after: float | None = None, text: str = "") -> None:
    """Raise the sink error an HTTP status means (nothing for 2xx)."""
    if 200 <= status < 300:
        return
    detail = f"HTTP {status} {text[:300]}".strip()
    if status in REFUSING:
        raise DestinationRefused(f"http_{status}", detail, retry_after, status=status)
    if status >= 500 or status in RETRYABLE:
        raise TransientError(f"http_{status}", detail, retry_after, status=status)
    raise PermanentError(f"http_{status}", detail, status=status)


def new_session() -> requests.Session:
    """A session whose pool fits several concurrent requests per sink."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def post(
    session: requests.Session,
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout: float,
    gzip: bool = False,
) -> requests.Response:
    """POST ``body``; raise :class:`TransientError`/:class:`PermanentError` unless 2xx."""
    headers = dict(headers)
    if gzip:
        body = gzip_lib.compress(body, compresslevel=1)  # fast; JSON still shrinks ~8x
        headers["Content-Encoding"] = "gzip"
    try:
        response = session.post(url, data=body, headers=headers, timeout=timeout)
    except requests.Timeout as exc:
        raise TransientError("timeout", type(exc).__name__) from None
    except requests.ConnectionError as exc:
        raise TransientError("connection", type(exc).__name__) from None
    except requests.RequestException as exc:
        raise TransientError("request", type(exc).__name__) from None
    raise_for_status(
        response.status_code, parse_retry_after(response.headers.get("Retry-After")), response.text
    )
    return response
