"""Regenerate the configuration reference in docs/operations.md from sluice/settings.py.

.venv/bin/python scripts/settings_doc.py          # rewrite the block
.venv/bin/python scripts/settings_doc.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

from sluice.settings import reference_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
BEGIN, END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def main() -> int:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + reference_markdown() + END + tail
    if "--check" in sys.argv:
        if new != text:
            print(f"{DOC} is out of date: run scripts/settings_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
