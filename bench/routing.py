"""Routing throughput of the real worker alone: ``python -m bench.routing``.

Kept for the commands quoted in ``docs/sinks.md``; the code lives in the harness now
(:mod:`bench.sluice_worker`, run by :mod:`bench.run`). This is

    python -m bench.run --only sluice --posthog-extras [--events N] [--no-sinks] [--keep]

i.e. the worker with every sink on against local receivers, checked exact, plus Sluice's
PostHog sink alone and the posthog SDK's ``capture()`` in the same run.
"""

from __future__ import annotations

import sys

from bench.run import app


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    app(["--only", "sluice", "--posthog-extras", *args])


if __name__ == "__main__":
    main()
