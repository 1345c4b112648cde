"""``python -m cli``: the ``sluice`` command."""

from cli import main

main()
