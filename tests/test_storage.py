"""The storages that workers share, interrupted: no Triton server."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pytest

from autotune.interruptions import Terminated, sigterm_interrupts
from autotune.study.storage import open_storage


def test_sigterm_as_a_worker_lets_go_of_the_journals_lock_is_raised_once_it_has(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "studies.log"
    storage = open_storage(f"journal:{log}", create=True)
    rename = os.rename

    def interrupted(source: str, destination: str) -> None:
        if source.endswith(".lock"):  # Optuna lets go of the lock by renaming it away: SIGTERM arrives just then
            signal.raise_signal(signal.SIGTERM)
        rename(source, destination)

    monkeypatch.setattr(os, "rename", interrupted)
    with sigterm_interrupts(), pytest.raises(Terminated):
        optuna.create_study(storage=storage, study_name="written")
    assert not Path(f"{log}.lock").exists(), "no lock is left behind for the other workers to wait out"
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["written"]
