"""A probe for the worker's CPU time, garbage collection and memory (bench/README.md).

Put this directory first on ``PYTHONPATH`` for a bench run (the worker inherits it)::

    PYTHONPATH=bench/probe .venv/bin/python -m bench.run --only sluice --no-sinks ...

In a ``sluice worker`` process (only there) it writes one line every 0.5 s to stderr,
which lands in the worker's log: ``GCPROBE <epoch> cpu=<process_time s>
collections=<n> seconds=<wall s in collections> gen2=<n full> gen2_seconds=<wall s>``.
CPU per event = the ``cpu`` of the first line after the last checkpoint minus that of
the last line before "Worker ready", over the events. With glibc (2.33+) the line also
says where the resident memory is: ``rss=<MiB> py_blocks=<n>`` (pymalloc's live blocks:
Python objects of up to 512 bytes), ``malloc_used=<MiB> malloc_free=<MiB>`` (what
malloc has handed out and still holds, in every arena, mmapped chunks included: C
libraries such as librdkafka, and Python objects above 512 bytes). Not imported by
anything else.
"""

import sys

if "worker" in sys.argv:
    import gc
    import threading
    import time

    _t = {"n": 0, "s": 0.0, "g2n": 0, "g2s": 0.0, "start": 0.0}

    def _callback(phase: str, info: dict) -> None:
        if phase == "start":
            _t["start"] = time.perf_counter()
            return
        took = time.perf_counter() - _t["start"]
        _t["n"] += 1
        _t["s"] += took
        if info["generation"] == 2:
            _t["g2n"] += 1
            _t["g2s"] += took

    def _mallinfo2():  # glibc 2.33+, else None
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_size_t)
                for name in [
                    "arena",
                    "ordblks",
                    "smblks",
                    "hblks",
                    "hblkhd",
                    "usmblks",
                    "fsmblks",
                    "uordblks",
                    "fordblks",
                    "keepcost",
                ]
            ]

        try:
            fn = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):
            return None
        fn.restype = MallInfo2
        return fn

    _mallinfo = _mallinfo2()

    def _malloc() -> str:
        if _mallinfo is None:
            return ""
        m = _mallinfo()
        return f" malloc_used={(m.uordblks + m.hblkhd) >> 20} malloc_free={m.fordblks >> 20}"

    def _report() -> None:
        while True:
            time.sleep(0.5)
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * 4096 >> 20
            sys.stderr.write(
                f"GCPROBE {time.time():.1f} cpu={time.process_time():.2f} "
                f"collections={_t['n']} seconds={_t['s']:.3f} gen2={_t['g2n']} "
                f"gen2_seconds={_t['g2s']:.3f} rss={rss} "
                f"py_blocks={sys.getallocatedblocks()}{_malloc()}\n"
            )

    gc.callbacks.append(_callback)
    threading.Thread(target=_report, name="gcprobe", daemon=True).start()
