"""sluice.malloc: the worker's cap on glibc's malloc arenas takes effect, and yields to
an operator's MALLOC_ARENA_MAX. Each case runs in a fresh interpreter (the cap is
process-wide): eight threads allocate at once, then glibc's ``malloc_info`` counts the
arenas ("heaps") they used."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

REPO = Path(__file__).resolve().parents[2]
PROBE = textwrap.dedent(
    """
    import ctypes, os, re, sys, tempfile, threading
    from sluice.malloc import limit_arenas

    print(limit_arenas(int(sys.argv[1])))
    print(os.environ.get("MALLOC_ARENA_MAX", "-"))
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    together = threading.Barrier(8)

    def allocate():
        together.wait()
        kept = [libc.malloc(4096) for _ in range(200)]
        together.wait()

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p] * 2
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    path = os.path.join(tempfile.mkdtemp(), "malloc.xml")
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(len(re.findall("<heap nr=", open(path).read())))
    """
)


def probe(arenas: int, **env: str) -> tuple[str, str, int]:
    """(what limit_arenas said, MALLOC_ARENA_MAX afterwards, arenas used)."""
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(arenas)],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    return out[0], out[1], int(out[2])


def test_the_cap_holds_and_is_passed_on_to_child_processes():
    said, exported, heaps = probe(2)
    assert said == "malloc arenas: at most 2 (SLUICE_MALLOC_ARENAS)"
    assert exported == "2" and heaps <= 2


def test_without_the_cap_the_threads_spread_over_more_arenas():
    said, exported, heaps = probe(0)  # if this fails, glibc no longer needs the cap
    assert said == "malloc arenas: glibc's default (SLUICE_MALLOC_ARENAS=0)"
    assert exported == "-" and heaps > 2


def test_an_operators_malloc_arena_max_wins():
    said, exported, heaps = probe(2, MALLOC_ARENA_MAX="3")
    assert said == "malloc arenas: MALLOC_ARENA_MAX=3 (set by the environment)"
    assert exported == "3" and heaps == 3
