"""How many malloc arenas the worker's process may use (glibc only).

glibc gives a thread that finds the arenas busy an arena of its own, up to 8 per core,
and memory freed in one arena is reused only by the threads on it. The worker allocates
from many threads: the event loop, librdkafka's (a main thread and one per broker for
each of the reader, the changelog producer and the forwarder), the reader's fetch thread,
the sinks' request threads and the OpenTelemetry exporter. In the benchmark
(bench/README.md, 2 cores) the every-route worker's peak RSS was lower with two arenas on
average, at the same throughput: 200,000 events 367–460 MiB (five runs) against 408–464
(three), 600,000 events 729–955 MiB (three) against 1,020 (one). The runs spread widely,
so that is a direction, not a measured size.

So the worker caps them (:func:`limit_arenas`, ``SLUICE_MALLOC_ARENAS``) before it starts
a thread: ``mallopt(M_ARENA_MAX, n)`` through :mod:`ctypes`, as the ``MALLOC_ARENA_MAX``
environment variable would at start-up, and it exports that variable for the processes it
starts (state rebuilds). No library wraps ``mallopt``; this is the whole of it. A
``MALLOC_ARENA_MAX`` the operator set is left as it is; another C library (musl, macOS)
is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's malloc.h
ENV = "MALLOC_ARENA_MAX"


def limit_arenas(arenas: int) -> str:
    """Cap glibc's malloc arenas at ``arenas`` (0: glibc's default); says what it did."""
    if ENV in os.environ:
        return f"malloc arenas: {ENV}={os.environ[ENV]} (set by the environment)"
    if arenas <= 0:
        return "malloc arenas: glibc's default (SLUICE_MALLOC_ARENAS=0)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "malloc arenas: not glibc, left alone"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:  # mallopt answers 1 on success
        return f"malloc arenas: mallopt(M_ARENA_MAX, {arenas}) refused, left alone"
    os.environ[ENV] = str(arenas)  # the processes this one starts get the same cap
    return f"malloc arenas: at most {arenas} (SLUICE_MALLOC_ARENAS)"
