"""The study's objective, driven trial by trial against a real server with enqueued settings."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autotune.embedded import EmbeddedServer
from autotune.loadgen import LoadGenerator, LoadSettings
from autotune.server import ModelServer
from autotune.space import SearchSpace
from autotune.study import Tuner, best_trial, is_feasible

QUICK = LoadSettings(warmup_s=0.2, window_s=0.3, max_windows=3)


def batching(max_batch_size: int, concurrency: int = 2) -> dict[str, object]:
    return {"instance_count": 1, "dynamic_batching": True, "max_batch_size": max_batch_size,
            "max_queue_delay_microseconds": 100, "preferred_batch_size": "max", "concurrency": concurrency}


@pytest.fixture
def picky_tuner(triton: EmbeddedServer):
    server = ModelServer(triton.url, "picky", explain=triton.last_error)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    yield Tuner(study, storage, server, LoadGenerator(triton.url, "picky", QUICK), SearchSpace(), max_p95_ms=1000.0)
    server.restore()
    server.close()


def test_after_a_refused_config_the_next_valid_one_is_measured(picky_tuner: Tuner) -> None:
    picky_tuner.study.enqueue_trial(batching(8))
    picky_tuner.study.enqueue_trial(batching(1))
    picky_tuner.optimize(2)
    refused, accepted = picky_tuner.study.trials
    assert refused.state == TrialState.FAIL
    assert "picky refuses" in refused.user_attrs["fail_reason"]
    assert accepted.state == TrialState.COMPLETE and is_feasible(accepted)
    assert accepted.user_attrs["config"]["max_batch_size"] == 1
    assert best_trial(picky_tuner.study).number == accepted.number


def test_a_trial_whose_requests_all_fail_is_failed_with_the_servers_message(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "broken")
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    tuner = Tuner(study, storage, server, LoadGenerator(triton.url, "broken", QUICK), SearchSpace(), max_p95_ms=1000.0)
    try:
        tuner.enqueue_baseline()
        tuner.optimize(1)
    finally:
        server.restore()
        server.close()
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL
    assert "broken on purpose" in trial.user_attrs["fail_reason"]


def test_the_baseline_is_the_model_as_configured_at_the_guides_concurrency(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "mlp")
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    tuner = Tuner(study, storage, server, LoadGenerator(triton.url, "mlp", QUICK), SearchSpace(), max_p95_ms=1000.0)
    try:
        tuner.enqueue_baseline(created=True)
        tuner.enqueue_baseline(created=False)
        tuner.optimize(1)
    finally:
        server.restore()
        server.close()
    (baseline,) = study.trials
    assert baseline.user_attrs["baseline"] is True
    # mlp has no dynamic batcher and one instance: 2 x batch 1 x 1 instance.
    assert baseline.params == {"concurrency": 2}
    assert baseline.user_attrs["config"] == {"dynamic_batching": False, "max_batch_size": 32, "instance_count": 1}
    assert baseline.user_attrs["server_batches"] > 0
