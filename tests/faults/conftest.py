"""The fault suite runs every worker as production should: static group membership (a
stable ``SLUICE_INSTANCE_ID``) over a local state store kept across restarts."""

from __future__ import annotations

import pytest

from tests._sluice import Deployment


@pytest.fixture
def deployment(kafka_bootstrap: str, tmp_path):
    """An isolated deployment whose one worker is a static member of its group."""
    dep = Deployment(kafka_bootstrap, tmp_path)
    dep.instance_id = f"{dep.name}-worker"
    yield dep
    dep.close()
