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
from autotune.study.storage import open_storage


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


def test_a_worker_that_another_beat_to_the_queued_trial_claims_the_next_instead_of_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without heartbeats (a journal file) a worker does not wait on running trials, but a lost race for the one
    queued trial is no spent budget: a --gpus worker stopped so with 495 of 500 trials to go."""
    storage = open_storage(f"journal:{tmp_path / 'studies.log'}", create=True)
    study = optuna.create_study(storage=storage, study_name="shared")
    other = TrialQueue(optuna.load_study(study_name="shared", storage=storage), storage, n_trials=10,
                       propose=lambda: SAMPLERS_TURN)
    taken: list[optuna.Trial | None] = []
    enqueue = study.enqueue_trial

    def enqueued_then_taken(*args: object, **kwargs: object) -> None:
        enqueue(*args, **kwargs)  # type: ignore[arg-type]
        if not taken:
            taken.append(other.claim())  # the other worker claims it before this one can

    monkeypatch.setattr(study, "enqueue_trial", enqueued_then_taken)
    trial = TrialQueue(study, storage, n_trials=10, propose=lambda: SAMPLERS_TURN).claim()
    assert taken[0] is not None and taken[0].number == 0
    assert trial is not None and trial.number == 1
