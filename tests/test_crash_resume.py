"""Crash and resume: stages killed with SIGKILL at seeded random points, re-run, and nothing lost or doubled.

Each stage runs in a process of its own (bench/crash.py forks it from a fork server that imported the flows
once), against the sandbox; it is killed at a random share of its work as seen in the database, then run again
until it completes. The invariants are checked by SQL, and against the sandbox's own records.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.crash import Rig
from tests.conftest import Database

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(600)]  # a loaded machine: the harness starts slowly


@pytest.fixture
def prefect_api_url(prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The harness's API URL, in the environment the stage processes inherit from the fork server."""
    from prefect.settings import PREFECT_API_URL

    url = str(PREFECT_API_URL.value())
    monkeypatch.setenv("PREFECT_API_URL", url)
    return url


def test_load_and_publish_survive_kills_without_loss_or_duplicates(
    db: Database, prefect_api_url: str, tmp_path: Path
) -> None:
    with Rig(
        workdir=tmp_path / "rig",
        db_url=db.url,
        seed=23,
        positions=40,
        prefect_api_url=prefect_api_url,
        say=lambda _line: None,
    ) as rig:
        rig.run_chain(kills=2, stages=("load-positions", "publish-positions"), batch_size=8)
        checks = rig.checks()
        reports = dict(rig.reports)
    for stage in ("load-positions", "publish-positions"):
        kills = reports[stage].kills
        assert len(kills) == 2
        # a kill lands on a running process (exit by SIGKILL), and a later run completes the stage
        assert any(k.running for k in kills), (stage, kills)
        assert reports[stage].runs_to_complete >= 1
    failed = [(name, detail) for name, holds, detail in checks if not holds]
    assert not failed, failed
    names = {name for name, _holds, _detail in checks}
    assert {
        "no IUV allocated twice (and none lost)",
        "every position published",
        "every position at GPD/ACA once",
        "every bulk row has one outcome",
    } <= names
