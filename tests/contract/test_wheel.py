"""The wheel is the product: it holds the packages and their data, never dev tooling, and
its base install (what a service that only produces events gets) needs neither Faust,
RocksDB nor chDB."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("topics/", "avro_schemas/", "sluice/", "sinks/", "streams/", "cli/")
HEAVY = ("faust", "rocksdict", "chdb", "clickhouse", "pandas", "pyarrow", "aiokafka", "posthog")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from the files git tracks (a copy: pip builds in-tree)."""
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    source = tmp_path_factory.mktemp("source")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("sluice-*.whl")
    return found


def test_the_wheel_holds_the_product_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if not n.startswith("sluice-")]  # not the .dist-info
    assert code and all(n.startswith(PRODUCT) for n in code), sorted(
        n for n in code if not n.startswith(PRODUCT)
    )
    for must in ("sluice/producer.py", "streams/seam.py", "topics/catalog.py"):
        assert must in names
    assert any(n.startswith("avro_schemas/email/v") and n.endswith(".avsc") for n in names)
    for dev_only in ("dev/", "bench/", "tests/", "scripts/"):
        assert not any(n.startswith(dev_only) for n in names), dev_only


def test_the_base_requirements_are_light_and_the_worker_is_an_extra(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.message_from_bytes(zf.read(meta))
    requires = message.get_all("Requires-Dist") or []
    base = [r for r in requires if "extra ==" not in r]
    assert base and not [r for r in base if r.lower().startswith(HEAVY)], base
    worker = [r for r in requires if 'extra == "worker"' in r]
    assert any(r.startswith("faust-streaming") for r in worker), worker
    assert any(r.startswith("clickhouse-connect[chdb]") for r in requires), requires


def test_a_service_installs_the_sdk_without_the_worker(wheel, tmp_path):
    """A fresh venv with the base install: the SDK and the light CLI work, the worker
    names the extra it needs."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    probe = (
        "import importlib.util, sys\n"
        f"heavy = [m for m in {HEAVY!r} if importlib.util.find_spec(m)]\n"
        "assert not heavy, heavy\n"
        "from sluice.producer import EventProducer\n"
        "from avro_schemas.codec import Codec\n"
        "from topics.catalog import Catalog\n"
        "e = EventProducer.__init__  # importable without a broker\n"
        "raw = Codec().encode('email', {'event_type': 'email_sent', 'tenant_id': 't',"
        " 'source': 's', 'occurred_at': 0, 'event_id': '00000000-0000-4000-8000-000000000001',"
        " 'email_id': 'e', 'campaign_id': 'c', 'mailbox_id': 'm', 'lead_id': 'l'})\n"
        "assert Codec().decode(raw, 'email')['email_id'] == 'e'\n"
        "print(Catalog().for_family('email').name)\n"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "events.email"
    sluice = env_dir / "bin" / "sluice"
    help_ = subprocess.run([str(sluice), "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "produce" in help_.stdout, help_.stderr
    worker = subprocess.run(
        [str(sluice), "worker"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert worker.returncode == 1
    assert "pip install 'sluice[worker]'" in worker.stderr, worker.stderr
    assert "Traceback" not in worker.stderr
