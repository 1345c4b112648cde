"""Write demo traffic as JSON lines: ``python -m dev.demo OUT.jsonl [EMAILS]``.

Timestamps are ISO-8601 strings, as a user would write them by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dev.workload import email_workload, iso


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m dev.demo OUT.jsonl [EMAILS]", file=sys.stderr)
        return 2
    out = Path(args[0])
    emails = int(args[1]) if len(args) > 1 else 2000
    out.parent.mkdir(parents=True, exist_ok=True)
    wl = email_workload(emails=emails)
    with out.open("w") as fh:
        for event in wl.events:
            fh.write(json.dumps({**event, "occurred_at": iso(event["occurred_at"])}) + "\n")
    print(f"wrote {len(wl.events)} events ({emails} emails) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
