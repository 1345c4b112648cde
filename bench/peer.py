"""Contender *peer*: Quix Streams' windowed count, in its own virtualenv (see peer_quix.py).

Quix Streams pins an older confluent-kafka than Sluice, so it cannot share ``.venv``:
the first run creates ``bench/.venv-quix`` with ``python3 -m venv`` and installs the
latest ``quixstreams`` and ``fastavro`` from PyPI into it (later runs reuse it; delete the
directory to upgrade).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.measure import Result, RunContext, run_child

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-quix"
PYTHON = VENV / "bin" / "python"
PACKAGES = ["quixstreams", "fastavro"]


def ensure_venv(log: Path) -> Path:
    """The Quix virtualenv's interpreter, created on first use."""
    check = [str(PYTHON), "-c", "import quixstreams, fastavro"]
    if PYTHON.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return PYTHON
    base = shutil.which("python3") or sys.executable
    print(f"creating {VENV} (quixstreams from PyPI; once)", file=sys.stderr)
    with log.open("ab") as out:
        subprocess.run([base, "-m", "venv", str(VENV)], check=True, stdout=out, stderr=out)
        subprocess.run(
            [str(PYTHON), "-m", "pip", "install", "-q", *PACKAGES],
            check=True,
            stdout=out,
            stderr=out,
        )
    return PYTHON


def write_config(ctx: RunContext, path: Path, out: Path) -> None:
    """Topic names and schemas from Sluice's catalog and schema tree, for the other venv."""
    from avro_schemas import default_repo, strip_logical_types
    from sluice.settings import get_settings
    from topics.catalog import Catalog

    repo = default_repo()
    topics = Catalog.from_settings(get_settings()).families()
    writers, readers = {}, {}
    for family in set(topics.values()):
        assert family is not None
        for sv in repo.schema_versions(family):
            writers[sv.fingerprint.hex()] = strip_logical_types(sv.raw)
        readers[family] = strip_logical_types(repo.latest_version(family).raw)
    config = {
        "bootstrap": ctx.bootstrap,
        "group": ctx.group("peer"),
        "events": ctx.events,
        "topics": topics,
        "writers": writers,
        "readers": readers,
        "state_dir": str(ctx.root / "quix-state"),
        "out": str(out),
    }
    path.write_text(json.dumps(config))


def run(ctx: RunContext) -> Result:
    """Run the Quix app until every event is counted; verify its window counts."""
    log = ctx.root / "peer.log"
    python = ensure_venv(log)
    out = ctx.root / "peer.json"
    config = ctx.root / "peer-config.json"
    write_config(ctx, config, out)
    cmd = [str(python), str(BENCH / "peer_quix.py"), str(config)]
    # the Quix venv must not see Sluice's venv packages
    env = {k: v for k, v in ctx.env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    raw, peak = run_child(cmd, out, log, env=env, timeout=ctx.timeout)
    result = ctx.verify("peer", raw, peak)
    if raw.get("late_dropped"):
        result.verified = False
        result.problems.append(f"{raw['late_dropped']} late events dropped by the window")
    return result
