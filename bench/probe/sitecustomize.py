"""A probe for the worker's CPU time and garbage collection (bench/README.md, 2026-12-02).

Put this directory first on ``PYTHONPATH`` for a bench run (the worker inherits it)::

    PYTHONPATH=bench/probe .venv/bin/python -m bench.run --only sluice --no-sinks ...

In a ``sluice worker`` process (only there) it writes one line every 0.5 s to stderr,
which lands in the worker's log: ``GCPROBE <epoch> cpu=<process_time s>
collections=<n> seconds=<wall s in collections> gen2=<n full> gen2_seconds=<wall s>``.
CPU per event = the ``cpu`` of the first line after the last checkpoint minus that of
the last line before "Worker ready", over the events. Not imported by anything else.
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

    def _report() -> None:
        while True:
            time.sleep(0.5)
            sys.stderr.write(
                f"GCPROBE {time.time():.1f} cpu={time.process_time():.2f} "
                f"collections={_t['n']} seconds={_t['s']:.3f} gen2={_t['g2n']} "
                f"gen2_seconds={_t['g2s']:.3f}\n"
            )

    gc.callbacks.append(_callback)
    threading.Thread(target=_report, name="gcprobe", daemon=True).start()
