"""clickhouse-connect's DataFrame check, turned off for server clients
(:func:`sluice.olap.client.without_dataframes`): the private mechanism is still there.

Each check runs in a fresh interpreter: the test process may have imported pandas.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("pandas")  # without pandas there is nothing to keep out

PROBE = """
import sys
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from sluice.olap.client import without_dataframes

took = without_dataframes()
ctx = InsertContext("t", ["a", "b"], [get_from_name("UInt64"), get_from_name("String")])
ctx.data = [[1, "x"], [2, "y"]]  # what an insert of plain rows does first
print(took, ctx.row_count, "pandas" in sys.modules, "numpy" in sys.modules)
"""


def probe(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_plain_rows_are_inserted_without_importing_pandas_or_numpy():
    assert probe(PROBE) == "True 2 False False"


def test_without_the_override_the_insert_imports_pandas():
    # the reason for the override: if this starts failing, the override is not needed
    code = PROBE.replace("took = without_dataframes()", "took = True")
    assert probe(code) == "True 2 True True"


def test_a_process_that_imported_pandas_keeps_it():
    code = "import pandas\n" + PROBE
    assert probe(code).startswith("False 2 True")
