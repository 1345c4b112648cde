"""Sub-command groups of the ``sluice`` CLI (mounted by :mod:`sluice.cli`)."""
