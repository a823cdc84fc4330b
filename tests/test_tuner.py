"""The study loop and its objective, driven trial by trial against a real server with enqueued settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import optuna
import pytest
from fakes import ENQUEUED_FIRST, QUICK, make_tuner
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import get_note

from autotune.load.loop import WARMUP_SLICE_S, LoadGenerator
from autotune.load.policy import SATURATION_GAIN, SETTLE_S
from autotune.load.windows import MIN_WINDOWS
from autotune.records import CONFIRMED_KEY, SAME_AS_KEY, best_trial, is_feasible, top_feasible
from autotune.search import DEFAULT_STRATEGY, IntRange, SearchSpace, Strategy
from autotune.search.space import ConcurrencySearch
from autotune.study.tuner import Tuner
from autotune.triton.embedded import EmbeddedServer
from autotune.triton.server import ModelServer


def batching(max_batch_size: int, concurrency: int = 2) -> dict[str, object]:
    return {"instance_count": 1, "dynamic_batching": True, "max_batch_size": max_batch_size,
            "max_queue_delay_microseconds": 100, "preferred_batch_size": "max", "concurrency": concurrency}


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if t.state.is_finished()]


@pytest.fixture
def tuner_for(triton: EmbeddedServer) -> Iterator[Callable[..., Tuner]]:
    """Tuners of a model on the session's server, in an in-memory study; their models are restored afterwards.

    Their trials measure one sampled concurrency each, unless a test asks for the sweep; what a test enqueues runs
    first, unless it asks for another strategy.
    """
    servers: list[ModelServer] = []

    def make(model: str, concurrency_search: ConcurrencySearch = "sample", *, max_p95_ms: float = 1000.0,
             space: SearchSpace | None = None, strategy: Strategy = ENQUEUED_FIRST) -> Tuner:
        server = ModelServer(triton.url, model, explain=triton.last_error)
        servers.append(server)
        return make_tuner(server, LoadGenerator(triton.url, model, QUICK), max_p95_ms=max_p95_ms, space=space,
                          concurrency_search=concurrency_search, strategy=strategy)

    yield make
    for server in servers:
        server.restore()
        server.close()


def test_after_a_refused_config_the_next_valid_one_is_measured(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("picky")
    tuner.study.enqueue_trial(batching(8))
    tuner.study.enqueue_trial(batching(1))
    tuner.optimize(2)
    refused, accepted = tuner.study.trials
    assert refused.state == TrialState.FAIL
    assert "picky refuses" in refused.user_attrs["fail_reason"]
    assert accepted.state == TrialState.COMPLETE and is_feasible(accepted)
    assert accepted.user_attrs["config"]["max_batch_size"] == 1
    assert best_trial(tuner.study).number == accepted.number


def test_a_trial_whose_requests_all_fail_is_failed_with_the_servers_message(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("broken", strategy=DEFAULT_STRATEGY)
    tuner.optimize(1)
    (trial,) = finished(tuner.study)
    assert trial.state == TrialState.FAIL
    assert "broken on purpose" in trial.user_attrs["fail_reason"]


def test_the_baseline_is_the_model_as_configured_at_the_guides_concurrency(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp", strategy=DEFAULT_STRATEGY)
    tuner.optimize(1)
    (baseline,) = finished(tuner.study)
    assert baseline.user_attrs["baseline"] is True
    # mlp has no dynamic batcher and one instance: 2 x batch 1 x 1 instance.
    assert baseline.params == {"concurrency": 2}
    assert baseline.user_attrs["config"] == {"dynamic_batching": False, "max_batch_size": 32, "instance_count": 1}
    assert baseline.user_attrs["server_batches"] > 0
    # What a trial's time went on: loading its config (none here: the baseline is what was loaded) and measuring.
    assert baseline.user_attrs["reload_s"] < baseline.user_attrs["measure_s"]
    # A warm-up of two slices at least (the second tells whether latencies still fall), then two windows at least.
    shortest = min(QUICK.warmup_s, 2 * WARMUP_SLICE_S) + MIN_WINDOWS * QUICK.window_s
    assert baseline.user_attrs["measure_s"] >= shortest - 1e-3, baseline.user_attrs


def test_a_study_that_holds_its_budget_runs_nothing_more(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp", strategy=DEFAULT_STRATEGY)
    tuner.optimize(2)
    tuner.optimize(2)
    assert [t.state for t in tuner.study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]


def test_patience_stops_when_trials_bring_no_improvement(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp", max_p95_ms=0.001)  # nothing can be feasible, so no trial improves on the last
    stopped = tuner.optimize(10, patience=2)
    assert stopped is not None and "--patience" in stopped
    # Far over the limit, each trial is pruned after its first window.
    assert [t.state for t in tuner.study.trials] == [TrialState.PRUNED] * 2, "no slot is left behind"


def test_timeout_stops_this_worker_after_the_running_trial(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp")
    stopped = tuner.optimize(10, timeout_s=0.001)
    assert stopped is not None and "--timeout" in stopped
    assert len([t for t in tuner.study.trials if t.state.is_finished()]) == 1


def test_a_trial_far_over_the_limit_is_pruned_after_its_first_window(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp", max_p95_ms=0.001)
    tuner.study.enqueue_trial(batching(8, concurrency=4))
    tuner.optimize(1)
    (trial,) = tuner.study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["windows"] == 1
    assert "stopped after window 1: median latency" in trial.user_attrs["pruned_reason"]
    assert trial.intermediate_values == {1: pytest.approx(trial.user_attrs["throughput"])}
    assert not is_feasible(trial) and trial.constraints.values(), "the sampler learns it was infeasible"


def test_confirm_measures_the_top_trials_again_and_crowns_the_winner(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp")
    for concurrency in (1, 2, 4, 8):
        tuner.study.enqueue_trial(batching(8, concurrency))
    tuner.optimize(4)
    top3 = sorted(tuner.study.trials, key=lambda t: -t.value)[:3]
    tuner.confirm(rounds=2)
    confirmed = tuner.study.user_attrs[CONFIRMED_KEY]
    assert [run["trial"] for run in confirmed["trials"]] == [t.number for t in top3]
    assert all(len(run["throughput"]) == len(run["p95_ms"]) == 2 for run in confirmed["trials"])
    assert confirmed["winner"] in [t.number for t in top3]
    assert best_trial(tuner.study).number == confirmed["winner"]
    storage = tuner.storage
    winner = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(tuner.study.study_name), confirmed["winner"])
    note = get_note(optuna.Trial(tuner.study, winner))
    assert note.startswith("Crowned by re-measurement") and 'name: "mlp"' in note, "the dashboard shows the winner"


def test_a_config_still_warm_from_the_last_trial_gets_a_short_settle_instead_of_a_warm_up(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp")
    for max_batch_size, concurrency in ((8, 1), (8, 2), (4, 2)):
        tuner.study.enqueue_trial(batching(max_batch_size, concurrency))
    tuner.optimize(3)
    loaded, same_config, reloaded = tuner.study.trials
    assert loaded.user_attrs["warmup_s"] == QUICK.warmup_s
    assert same_config.user_attrs["warmup_s"] == SETTLE_S
    assert same_config.user_attrs["reload_s"] < 0.05, "an identical config is not reloaded"
    assert reloaded.user_attrs["warmup_s"] == QUICK.warmup_s


def test_a_sweep_raises_concurrency_on_one_loaded_config_and_stands_on_its_knee(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp", "sweep", space=SearchSpace(concurrency=IntRange(1, 8)))
    tuner.study.enqueue_trial({"instance_count": 1, "dynamic_batching": False})
    tuner.optimize(1)
    (trial,) = tuner.study.trials
    sweep = trial.user_attrs["sweep"]
    assert [concurrency for concurrency, _, _ in sweep] == [1, 2, 4, 8][:len(sweep)]
    feasible = [(c, throughput) for c, throughput, p95 in sweep if p95 <= 1000.0]
    best = max(throughput for _, throughput in feasible)
    # The fewest requests in flight within 5 % of the best feasible throughput.
    knee, at_knee = min((c, t) for c, t in feasible if t * (1 + SATURATION_GAIN) >= best)
    assert trial.user_attrs["concurrency"] == knee
    assert trial.value == pytest.approx(at_knee, abs=0.01)
    assert "concurrency" not in trial.params, "a sweep measures concurrency instead of sampling it"
    # A full warm-up, ended once latencies stop falling (a slice at least), then a settle before each point.
    assert SETTLE_S * len(sweep) - 1e-3 <= trial.user_attrs["warmup_s"] <= QUICK.warmup_s + SETTLE_S * (len(sweep) - 1)


def test_settings_measured_before_are_answered_from_the_study_instead_of_measured_again(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp")
    for concurrency in (2, 2, 4):
        tuner.study.enqueue_trial(batching(8, concurrency))
    tuner.objective.worker = {"server_url": "first-worker:8001"}
    tuner.optimize(1)
    tuner.objective.worker = {"server_url": "second-worker:8001"}
    tuner.optimize(2)
    first, repeat, other = tuner.study.trials
    assert repeat.user_attrs[SAME_AS_KEY] == first.number
    assert repeat.user_attrs["server_url"] == "second-worker:8001", "a worker's own attributes are not copied"
    assert repeat.user_attrs["server_batches"] == first.user_attrs["server_batches"] > 0
    assert "measure_s" not in repeat.user_attrs, "nothing was measured for it"
    assert (repeat.value, repeat.user_attrs["p95_ms"]) == (first.value, first.user_attrs["p95_ms"])
    assert is_feasible(repeat) and is_feasible(first), "the sampler learns the same constraints from it"
    assert SAME_AS_KEY not in other.user_attrs, "another concurrency is another measurement"
    assert [t.number for t in top_feasible(tuner.study, 3)] in ([0, 2], [2, 0]), "rankings list a config once"
