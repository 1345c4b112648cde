"""The read path cannot write, leak or stall — tried as an attacker on the same host would,
through every entry point: the worker's query endpoint, `sluice olap query` (through the
worker, and straight to a server URL: the chDB HTTP front stands in for one), and the
front itself. Then the tables are intact and the worker still checkpoints and commits.
Every endpoint that reveals or changes data needs the bearer token; status and metrics
stay open."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dev.workload import email_workload
from sluice.olap import connect
from tests._sluice import Deployment, OlapServer

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers (the old stall)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server, server.getsockname()[1]


def hostile(outfile: Path, silent: int) -> dict[str, tuple[str, str]]:
    """name -> (SQL, what the one-line refusal must name)."""
    return {
        "second statement": (
            "SELECT 1; DROP TABLE campaign_analytics",
            "more than one statement",
        ),
        "second statement behind a comment": (
            "SELECT 1 /* ; */ ; DROP TABLE campaign_analytics -- ;",
            "more than one statement",
        ),
        "local file": ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
        "scalar file read": ("SELECT file('/etc/hostname')", "file"),
        "a port that never answers": (
            f"SELECT * FROM url('http://127.0.0.1:{silent}/', 'CSV', 'a String')",
            "url()",
        ),
        "another server": ("SELECT * FROM remote('127.0.0.1:9000', system.one)", "remote()"),
        "into outfile": (f"SELECT 1 INTO OUTFILE '{outfile}'", "INTO OUTFILE"),
        "settings that lift limits": (
            "SELECT count() FROM campaign_analytics SETTINGS max_execution_time = 100000",
            "SETTINGS",
        ),
        "a secret system table": ("SELECT name FROM system.users", "system.users"),
        "ddl": ("DROP TABLE campaign_analytics", "not a read statement"),
        "a sleep": ("SELECT sleep(3)", "sleep"),
        "a table outside the catalog": ("SELECT * FROM sluice_migration_lock", "not readable"),
    }


def post(dep: Deployment, path: str, body: object, token: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{dep.web_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token is not None else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def get(dep: Deployment, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{dep.web_port}{path}", timeout=30) as r:
        return r.status


@pytest.fixture
def running(deployment):
    dep = deployment
    dep.prepare()
    dep.start_worker(env_extra={"SLUICE_QUERY_TIMEOUT_S": "10"})
    dep.produce(email_workload(emails=300, days=3, seed=11).events)
    dep.wait_drained()
    return dep


def _sent(dep: Deployment) -> int:
    rows = dep.query("SELECT sum(sent) AS n FROM campaign_analytics_v")
    return int(rows[0]["n"])


def test_every_hostile_read_is_refused_in_one_line_by_the_worker_and_the_cli(running, tmp_path):
    dep = running
    before = _sent(dep)
    silent, port = _silent_port()
    outfile = tmp_path / "written-by-the-worker.csv"
    try:
        for name, (sql, named) in hostile(outfile, port).items():
            status, body = post(dep, "/sluice/query/", {"sql": sql}, dep.api_token)
            assert status == 400, (name, status, body)
            assert body["error"].startswith("refused") and named in body["error"], (name, body)
            assert "\n" not in body["error"]
            cli = dep.run("olap", "query", sql, check=False)
            assert cli.returncode == 1, (name, cli.stdout)
            lines = cli.stderr.strip().splitlines()
            assert len(lines) == 1 and "refused" in lines[0] and named in lines[0], (name, lines)
    finally:
        silent.close()
    assert not outfile.exists()
    assert _sent(dep) == before  # the tables are intact
    # ... and the worker still checkpoints and commits
    dep.produce(email_workload(emails=50, days=2, seed=12, tenants=("later",)).events)
    dep.wait_drained()
    assert _sent(dep) > before
    assert "Traceback" not in dep.log_tail(400)


def test_protected_endpoints_need_the_token_and_status_and_metrics_stay_open(running):
    dep = running
    assert get(dep, "/sluice/status/") == 200 and get(dep, "/metrics") == 200
    for path, body in (
        ("/sluice/query/", {"sql": "SELECT 1"}),
        ("/sluice/olap/rows/", {"table": "campaign_analytics", "columns": [], "rows": []}),
    ):
        for token in (None, "not-the-token", dep.api_token + "x"):
            status, answer = post(dep, path, body, token)
            assert status == 401, (path, token, status)
            assert answer == {"error": "a valid bearer token is required"}
    log = dep.log_tail(400)
    assert "refused POST /sluice/query/ from 127.0.0.1: no bearer token" in log
    assert "wrong bearer token" in log
    assert "not-the-token" not in log and dep.api_token not in log
    status, answer = post(dep, "/sluice/query/", {"sql": "SELECT 1 AS one"}, dep.api_token)
    assert status == 200 and answer["rows"] == [[1]]
    # the CLI sends the token from its settings; without it, one clear line
    denied = dep.run("olap", "query", "SELECT 1", check=False, env_extra={"SLUICE_API_TOKEN": "x"})
    assert denied.returncode == 1 and "bearer token" in denied.stderr, denied.stderr


def test_a_long_read_never_holds_up_a_checkpoint(running):
    dep = running
    # ~300 leads: a five-way cross join of them is ~2e12 rows, far beyond the 10 s limit
    long_read = (
        "SELECT count() FROM lead_analytics AS a, lead_analytics AS b, lead_analytics AS c, "
        "lead_analytics AS d, lead_analytics AS e "
        "WHERE cityHash64(a.lead_id, b.lead_id, c.lead_id, d.lead_id, e.lead_id) % 7 = 3"
    )
    outcome: dict[str, object] = {}

    def read() -> None:
        outcome["answer"] = post(dep, "/sluice/query/", {"sql": long_read}, dep.api_token)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        dep.produce(email_workload(emails=100, days=2, seed=13, tenants=("later",)).events)
        dep.wait_drained()  # committed while the read runs
        assert reader.is_alive(), f"the read ended first: {outcome}"
        busy, body = post(dep, "/sluice/query/", {"sql": "SELECT 1"}, dep.api_token)
        assert busy == 429 and "another read is running" in body["error"]
    finally:
        reader.join(120)
    status, body = outcome["answer"]  # type: ignore[misc]
    assert status == 400 and "ran longer than 10 s" in body["error"], body


def test_olap_query_on_a_server_url_and_the_front_itself_refuse_the_same(tmp_path):
    server = OlapServer(tmp_path / "front").start()
    try:
        writer = connect(server.url)
        from sluice.olap import migrate

        migrate(writer)
        (tmp_path / "cli").mkdir()
        dep = Deployment("127.0.0.1:1", tmp_path / "cli", clickhouse_url=server.url)
        silent, port = _silent_port()
        outfile = tmp_path / "front-outfile.csv"
        try:
            for name, (sql, named) in hostile(outfile, port).items():
                cli = dep.run("olap", "query", sql, check=False)
                assert cli.returncode == 1, (name, cli.stdout)
                assert "refused" in cli.stderr and named in cli.stderr, (name, cli.stderr)
                # a read sent to the front itself (readonly, as any ClickHouse client can)
                query = urllib.request.Request(
                    f"{server.url}/?readonly=1", data=sql.encode(), method="POST"
                )
                with pytest.raises(urllib.error.HTTPError) as info:
                    urllib.request.urlopen(query, timeout=30)
                assert info.value.code >= 400, name
        finally:
            silent.close()
        assert not outfile.exists()
        assert writer.query("EXISTS TABLE campaign_analytics")[1][0][0] == 1
        writer.close()
    finally:
        server.close()
