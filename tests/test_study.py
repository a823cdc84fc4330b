"""The study's objective, driven trial by trial against a real server with enqueued settings."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import get_note

from autotune.embedded import EmbeddedServer
from autotune.errors import AutotuneError
from autotune.loadgen import LoadGenerator, LoadSettings, Measurement
from autotune.server import ModelServer
from autotune.space import IntRange, SearchSpace
from autotune.study import (
    CONFIRMED_KEY,
    DELAY_RUNG_KEY,
    SAME_AS_KEY,
    SETTLE_S,
    STEP_FROM_KEY,
    ConcurrencySearch,
    Tuner,
    best_trial,
    check_sampler,
    crown,
    is_feasible,
    top_feasible,
    trial_params,
)

QUICK = LoadSettings(warmup_s=0.2, window_s=0.3, max_windows=3)


def batching(max_batch_size: int, concurrency: int = 2) -> dict[str, object]:
    return {"instance_count": 1, "dynamic_batching": True, "max_batch_size": max_batch_size,
            "max_queue_delay_microseconds": 100, "preferred_batch_size": "max", "concurrency": concurrency}


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if t.state.is_finished()]


@pytest.fixture
def tuner_for(triton: EmbeddedServer) -> Iterator[Callable[..., Tuner]]:
    """Tuners of a model on the session's server, in an in-memory study; their models are restored afterwards.

    Their trials measure one sampled concurrency each, unless a test asks for the sweep.
    """
    servers: list[ModelServer] = []

    def make(model: str, concurrency_search: ConcurrencySearch = "sample") -> Tuner:
        server = ModelServer(triton.url, model, explain=triton.last_error)
        servers.append(server)
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, direction="maximize")
        return Tuner(study, storage, server, LoadGenerator(triton.url, model, QUICK), SearchSpace(), 1000.0,
                     concurrency_search=concurrency_search)

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
    tuner = tuner_for("broken")
    tuner.enqueue_baseline()
    tuner.optimize(1)
    (trial,) = finished(tuner.study)
    assert trial.state == TrialState.FAIL
    assert "broken on purpose" in trial.user_attrs["fail_reason"]


def test_the_baseline_is_the_model_as_configured_at_the_guides_concurrency(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp")
    tuner.enqueue_baseline(created=True)
    tuner.enqueue_baseline(created=False)
    tuner.optimize(1)
    (baseline,) = finished(tuner.study)
    assert baseline.user_attrs["baseline"] is True
    # mlp has no dynamic batcher and one instance: 2 x batch 1 x 1 instance.
    assert baseline.params == {"concurrency": 2}
    assert baseline.user_attrs["config"] == {"dynamic_batching": False, "max_batch_size": 32, "instance_count": 1}
    assert baseline.user_attrs["server_batches"] > 0
    # What a trial's time went on: loading its config (none here: the baseline is what was loaded) and measuring.
    assert baseline.user_attrs["reload_s"] < baseline.user_attrs["measure_s"]
    assert baseline.user_attrs["measure_s"] >= QUICK.warmup_s + 3 * QUICK.window_s, baseline.user_attrs


def test_a_study_that_holds_its_budget_runs_nothing_more(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp")
    tuner.enqueue_baseline()
    tuner.optimize(2)
    tuner.optimize(2)
    assert [t.state for t in tuner.study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]


def test_patience_stops_when_trials_bring_no_improvement(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp")
    tuner.max_p95_ms = 0.001  # nothing can be feasible, so no trial improves on the last
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
    tuner = tuner_for("mlp")
    tuner.max_p95_ms = 0.001
    tuner.study.enqueue_trial(batching(8, concurrency=4))
    tuner.optimize(1)
    (trial,) = tuner.study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["windows"] == 1
    assert "stopped after window 1: median latency" in trial.user_attrs["pruned_reason"]
    assert trial.intermediate_values == {1: pytest.approx(trial.user_attrs["throughput"])}
    assert not is_feasible(trial) and trial.constraints.values(), "the sampler learns it was infeasible"


def test_a_window_without_replies_condemns_nothing_but_errors_do(tuner_for: Callable[..., Tuner]) -> None:
    """A freshly loaded model can stall past the warm-up; a point whose windows all stay empty fails anyway."""
    tuner = tuner_for("mlp")
    empty = Measurement(concurrency=2, throughput=0.0, p50_ms=math.inf, p90_ms=math.inf, p95_ms=math.inf,
                        p99_ms=math.inf, requests=0, errors=0, windows=1, stable=False)
    assert not tuner._hopeless(empty)
    assert tuner._hopeless(replace(empty, errors=1))
    assert tuner._hopeless(replace(empty, requests=5, p50_ms=tuner.max_p95_ms + 1))


def test_the_first_trials_are_the_baseline_and_the_guides_rule_of_thumb_with_the_fewest_and_most_instances(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp")
    tuner.space = replace(tuner.space, instance_count=IntRange(1, 2), concurrency=IntRange(1, 128))
    tuner.enqueue_baseline(created=True)
    tuner.optimize(3)
    baseline, *rules = tuner.study.trials
    assert baseline.user_attrs["baseline"] and all(rule.user_attrs["rule_of_thumb"] for rule in rules)
    # Dynamic batching up to mlp's max_batch_size 32, one instance then two, concurrency 2 x 32 x instances.
    for rule, instances in zip(rules, (1, 2), strict=True):
        assert rule.user_attrs["config"] == {"dynamic_batching": True, "max_batch_size": 32,
                                             "instance_count": instances, "max_queue_delay_microseconds": 100,
                                             "preferred_batch_size": [32]}
    assert [rule.params["concurrency"] for rule in rules] == [64, 128]


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


def test_the_crown_goes_to_runs_that_held_the_limit_then_to_the_highest_median() -> None:
    flattered = [(1500.0, 12.0, 0), (1450.0, 11.0, 0)]  # the best first measurement, now over a 10 ms limit
    steady = [(1200.0, 9.0, 0), (1190.0, 9.5, 0)]
    faster = [(1300.0, 9.8, 0), (1250.0, 10.5, 0)]  # held the limit once in two: still eligible
    assert crown({1: flattered, 2: steady, 3: faster}, max_p95_ms=10.0) == 3
    assert crown({1: flattered, 2: steady}, max_p95_ms=10.0) == 2
    assert crown({1: flattered, 2: [(900.0, 20.0, 0), (900.0, 9.0, 3)]}, max_p95_ms=10.0) == 1


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


def test_a_sweep_raises_concurrency_on_one_loaded_config_and_keeps_its_best_feasible_point(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp", "sweep")
    tuner.space = SearchSpace(concurrency=IntRange(1, 8))
    tuner.study.enqueue_trial({k: v for k, v in batching(8).items() if k != "concurrency"})
    tuner.optimize(1)
    (trial,) = tuner.study.trials
    sweep = trial.user_attrs["sweep"]
    assert [concurrency for concurrency, _, _ in sweep] == [1, 2, 4, 8][:len(sweep)]
    best_throughput, best_concurrency = max((throughput, c) for c, throughput, p95 in sweep if p95 <= 1000.0)
    assert trial.user_attrs["concurrency"] == best_concurrency
    assert trial.value == pytest.approx(best_throughput, abs=0.01)
    assert "concurrency" not in trial.params, "a sweep measures concurrency instead of sampling it"
    assert trial.user_attrs["warmup_s"] == pytest.approx(QUICK.warmup_s + SETTLE_S * (len(sweep) - 1))


@dataclass
class ScriptedLoad:
    """Fixed (throughput, p95 ms) figures per concurrency, to pin down where a sweep stops."""

    figures: dict[int, tuple[float, float]]
    settings: LoadSettings = QUICK

    def measure(self, concurrency: int, stop_early: object = None, warmup_s: float | None = None) -> Measurement:
        return reading(concurrency, *self.figures[concurrency])


def reading(concurrency: int, throughput: float, p95_ms: float) -> Measurement:
    """A clean, settled measurement with these figures; no throughput is a point without a single reply."""
    return Measurement(concurrency, throughput, p95_ms / 2, p95_ms, p95_ms, p95_ms, requests=100 if throughput else 0,
                       errors=0, windows=3, stable=bool(throughput))


NO_BATCHING = {"instance_count": 1, "dynamic_batching": False}
# Batches of 8, and a long delay: below 8 requests in flight each batch waits the delay out.
BATCHES_OF_8 = {"instance_count": 1, "dynamic_batching": True, "max_batch_size": 8,
                "max_queue_delay_microseconds": 15000, "preferred_batch_size": "max"}


@pytest.mark.parametrize(("config", "figures", "swept", "chosen"), [
    pytest.param(NO_BATCHING, {1: (100, 5), 2: (190, 6), 4: (300, 9), 8: (310, 15)}, [1, 2, 4, 8], 8,
                 id="saturated"),
    pytest.param(NO_BATCHING, {1: (100, 5), 2: (190, 8), 4: (300, 25)}, [1, 2, 4], 2, id="over-the-limit"),
    pytest.param(NO_BATCHING, {1: (100, 5), 2: (200, 6), 4: (400, 9), 8: (800, 12), 16: (1600, 18)},
                 [1, 2, 4, 8, 16], 16, id="end-of-range"),
    pytest.param(BATCHES_OF_8, {1: (60, 25), 2: (60, 30), 4: (50, 35), 8: (900, 12), 16: (880, 15)},
                 [1, 2, 4, 8, 16], 8, id="batcher-filled-only-from-8"),
])
def test_a_sweep_stops_once_doubling_gains_under_5_percent_or_breaks_the_limit(
    tuner_for: Callable[..., Tuner], config: dict[str, object], figures: dict[int, tuple[float, float]],
    swept: list[int], chosen: int,
) -> None:
    tuner = tuner_for("mlp", "sweep")
    tuner.max_p95_ms = 20.0
    tuner.space = SearchSpace(concurrency=IntRange(1, 16))
    tuner.loadgen = ScriptedLoad(figures)  # type: ignore[assignment]
    tuner.study.enqueue_trial(config)
    tuner.optimize(1)
    (trial,) = tuner.study.trials
    assert [point[0] for point in trial.user_attrs["sweep"]] == swept
    assert trial.user_attrs["concurrency"] == chosen and is_feasible(trial)


def test_a_sweep_whose_first_point_breaks_the_limit_is_an_infeasible_trial(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp", "sweep")
    tuner.max_p95_ms = 20.0
    tuner.loadgen = ScriptedLoad({1: (100, 25)})  # type: ignore[assignment]
    tuner.study.enqueue_trial(NO_BATCHING)
    tuner.optimize(1)
    (trial,) = tuner.study.trials
    assert trial.user_attrs["sweep"] == [[1, 100, 25]]
    assert trial.state == TrialState.COMPLETE and not is_feasible(trial)


def test_settings_measured_before_are_answered_from_the_study_instead_of_measured_again(
    tuner_for: Callable[..., Tuner],
) -> None:
    tuner = tuner_for("mlp")
    for concurrency in (2, 2, 4):
        tuner.study.enqueue_trial(batching(8, concurrency))
    tuner.worker = {"server_url": "first-worker:8001"}
    tuner.optimize(1)
    tuner.worker = {"server_url": "second-worker:8001"}
    tuner.optimize(3)
    first, repeat, other = tuner.study.trials
    assert repeat.user_attrs[SAME_AS_KEY] == first.number
    assert repeat.user_attrs["server_url"] == "second-worker:8001", "a worker's own attributes are not copied"
    assert repeat.user_attrs["server_batches"] == first.user_attrs["server_batches"] > 0
    assert "measure_s" not in repeat.user_attrs, "nothing was measured for it"
    assert (repeat.value, repeat.user_attrs["p95_ms"]) == (first.value, first.user_attrs["p95_ms"])
    assert is_feasible(repeat) and is_feasible(first), "the sampler learns the same constraints from it"
    assert SAME_AS_KEY not in other.user_attrs, "another concurrency is another measurement"
    assert [t.number for t in top_feasible(tuner.study, 3)] in ([0, 2], [2, 0]), "rankings list a config once"


def test_a_sweep_answers_a_config_it_swept_before_with_that_sweep(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp", "sweep")
    tuner.max_p95_ms = 20.0
    tuner.loadgen = ScriptedLoad({1: (100, 5), 2: (190, 8), 4: (300, 25)})  # type: ignore[assignment]
    tuner.study.enqueue_trial(NO_BATCHING)
    tuner.study.enqueue_trial(NO_BATCHING)
    tuner.optimize(2)
    first, repeat = tuner.study.trials
    assert repeat.user_attrs[SAME_AS_KEY] == first.number
    assert repeat.user_attrs["sweep"] == first.user_attrs["sweep"] == [[1, 100, 5], [2, 190, 8], [4, 300, 25]]
    assert repeat.user_attrs["concurrency"] == 2 and repeat.value == 190


def test_the_samplers_trials_and_steps_from_the_best_config_take_turns(tuner_for: Callable[..., Tuner]) -> None:
    tuner = tuner_for("mlp", "sweep")
    tuner.max_p95_ms = 20.0
    # Every config measures alike, so the first trial stays the best.
    tuner.loadgen = ScriptedLoad({c: (100.0 * c, 5.0) for c in (1, 2, 4, 8, 16, 32, 64)})  # type: ignore[assignment]
    tuner.study.enqueue_trial(BATCHES_OF_8)
    tuner.optimize(5)
    trials = tuner.study.trials
    assert [t.user_attrs.get(STEP_FROM_KEY) for t in trials] == [None, 0, None, 0, None]
    for step in (1, 3):
        assert len([key for key, value in BATCHES_OF_8.items() if trials[step].params[key] != value]) == 1
        assert trial_params(trials[step]) not in {trial_params(t) for t in trials[:step]}, "a step goes somewhere new"
    assert not tuner.study.get_trials(states=(TrialState.WAITING,)), "no step is queued past the budget"


@dataclass
class ReadingsLoad:
    """(throughput, p95 ms) readings handed out in order, one per measured point."""

    readings: list[tuple[float, float]]
    settings: LoadSettings = QUICK

    def measure(self, concurrency: int, stop_early: object = None, warmup_s: float | None = None) -> Measurement:
        return reading(concurrency, *self.readings.pop(0))


@pytest.mark.parametrize("last_rung", [pytest.param((800.0, 10.0), id="under-3/4-of-the-best-rung"),
                                       pytest.param((1300.0, 25.0), id="over-the-limit")])
def test_each_rule_of_thumbs_delay_climbs_a_step_a_trial_until_a_rung_is_clearly_worse_then_steps_begin(
    tuner_for: Callable[..., Tuner], last_rung: tuple[float, float]
) -> None:
    tuner = tuner_for("mlp")
    tuner.max_p95_ms = 20.0
    tuner.space = replace(tuner.space, instance_count=IntRange(1, 2))
    tuner.loadgen = ReadingsLoad([  # type: ignore[assignment]
        (100.0, 5.0),  # the baseline
        (1000.0, 10.0), (600.0, 10.0),  # the rule of thumb with 1 instance, and with 2
        (900.0, 10.0), (1200.0, 12.0), last_rung,  # 1 instance: a dip within the noise, a new best, the last rung
        (700.0, 10.0), (400.0, 10.0),  # 2 instances: a rung that climbs on, then one clearly worse
        (500.0, 5.0)])
    tuner.enqueue_baseline(created=True)
    tuner.optimize(9)
    trials = tuner.study.trials
    assert [t.user_attrs.get(DELAY_RUNG_KEY) for t in trials] == [None, None, None, 1, 2, 3, 1, 2, None]
    assert [trial_params(t).instance_count for t in trials[1:8]] == [1, 2, 1, 1, 1, 2, 2]
    # A quarter of the delay's log range (50 us to 20 ms) a rung: x 4.47.
    assert [trial_params(t).max_queue_delay_microseconds for t in trials[1:8]] == [100, 100, 447, 1999, 8940,
                                                                                  447, 1999]
    assert trials[8].user_attrs[STEP_FROM_KEY] == 4, "once the ladders end, steps start from the best config"


NO_REPLY = (0.0, math.inf)


@pytest.mark.parametrize(("readings", "state"), [
    pytest.param([NO_REPLY, (1000.0, 10.0)], TrialState.COMPLETE, id="a-stall"),
    pytest.param([NO_REPLY, NO_REPLY], TrialState.FAIL, id="a-model-that-never-answers"),
])
def test_a_trial_without_a_single_reply_is_measured_once_more_fully_warmed_up_before_it_fails(
    tuner_for: Callable[..., Tuner], readings: list[tuple[float, float]], state: TrialState
) -> None:
    tuner = tuner_for("mlp")
    tuner.loadgen = ReadingsLoad(readings)  # type: ignore[assignment]
    tuner.study.enqueue_trial({**NO_BATCHING, "concurrency": 2})
    tuner.optimize(1)
    (trial,) = tuner.study.trials
    assert trial.state == state
    assert not tuner.loadgen.readings, "both readings were taken"
    assert trial.user_attrs["warmup_s"] == pytest.approx(2 * QUICK.warmup_s)
    if state == TrialState.FAIL:
        assert trial.user_attrs["fail_reason"] == "no request succeeded: no reply within the window"


def test_the_gp_sampler_without_its_extra_is_an_error_that_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("torch", "scipy") else find_spec(name, *args))
    with pytest.raises(AutotuneError, match=r"--sampler gp needs torch and scipy: pip install 'autotune\[gp\]'"):
        check_sampler("gp")
    check_sampler("tpe")
