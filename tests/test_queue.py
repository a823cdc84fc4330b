"""The study's trial queue against a real SQLite storage: no Triton server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from sqlalchemy.exc import OperationalError

from autotune.search import SAMPLERS_TURN
from autotune.study.queue import TrialQueue


def test_a_heartbeat_the_storage_refuses_is_tried_again_at_the_next_beat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'studies.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    queue = TrialQueue(study, storage, n_trials=1, propose=lambda: SAMPLERS_TURN)
    trial = queue.claim()
    assert trial is not None
    beats: list[int] = []

    def refuse(trial_id: int) -> None:  # as a read-only file or a database that went away would
        beats.append(trial_id)
        raise OperationalError("UPDATE trial_heartbeats", {}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(storage, "record_heartbeat", refuse)
    crashed: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    with queue.heartbeat(trial):
        time.sleep(1.5)
    assert len(beats) == 2, "the beat after a refused one is tried all the same"
    assert not crashed, "a refused beat is the trial's own next write to report, not a thread's traceback"
