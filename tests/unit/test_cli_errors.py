"""Every CLI error a user can cause is one line on stderr and a non-zero exit, never a
traceback (bad arguments, bad settings, missing files, nothing listening)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["nosuch"], {}, 2),
    (["olap", "query"], {}, 2),
    (["topics", "create", "--bogus"], {}, 2),
    (["produce", "--file"], {}, 2),
    (["produce", "--file", "missing.jsonl"], {}, 1),
    (["olap", "lint", "missing.sql"], {}, 2),
    (["status", "--format", "yaml"], {}, 2),
    (["dlq", "list", "--format", "xml"], {}, 2),
    (["dlq", "replay", "--since", "last tuesday"], {}, 2),
    (["topics", "list"], {"CLICKHOUSE_URL": "ftp://x"}, 1),
    (["topics", "list"], {"SLUICE_WEB_PORT": "abc"}, 1),
    (["topics", "list"], {"SLUICE_PROFILE": "production"}, 1),
    (["topics", "list"], {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, 1),
    (["topics", "create"], {}, 1),  # nothing listens on 127.0.0.1:1
    (["status"], {}, 1),
    (["schemas", "check"], {"SLUICE_SCHEMA_DIR": "no-such-dir"}, 1),
    (["worker"], {"SLUICE_BATCH_MAX": "0"}, 1),
    (["worker"], {"SINK_LINGER_S": "nan"}, 1),
    (["olap", "query", "SELECT 1"], {"CLICKHOUSE_URL": "http://u:pw-9@127.0.0.1:1/db"}, 1),
]


@pytest.mark.parametrize(("args", "env", "code"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_cli_error_is_one_line(tmp_path, args, env, code):
    base = {
        "PATH": "/usr/bin:/bin",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KAFKA_TIMEOUT_S": "2",  # nothing listens there: report it soon
        "SLUICE_WEB_PORT": "1",
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'olap'}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), proc.stderr
    assert "pw-9" not in proc.stderr
