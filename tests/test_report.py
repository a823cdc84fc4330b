"""The text summary, read off studies built trial by trial."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial

from autotune.report.plots import pareto_figure
from autotune.report.summary import study_json, summary, trial_line


def measured(throughput: float, p95_ms: float, **extra: object) -> dict[str, object]:
    return {"throughput": throughput, "p50_ms": p95_ms / 2, "p90_ms": p95_ms, "p95_ms": p95_ms, "p99_ms": p95_ms,
            "concurrency": 2, "errors": 0, "config": {"dynamic_batching": False, "max_batch_size": 8,
                                                       "instance_count": 1}, **extra}


def test_a_pruned_baseline_still_anchors_the_summary_and_the_gain() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("max_p95_ms", 10.0)
    reason = "stopped after window 1: median latency 12.0 ms, over the limit"
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 400.0},
                                 user_attrs=measured(400.0, 30.0, baseline=True, pruned_reason=reason),
                                 system_attrs={"constraints": [20.0, 0.0]}))
    study.add_trial(create_trial(value=1000.0, user_attrs=measured(1000.0, 8.0),
                                 system_attrs={"constraints": [-2.0, 0.0]}))
    text = summary(study)
    assert ("Baseline (trial 0, the model as configured): Concurrency: 2, throughput: 400.0 infer/sec, "
            f"latency p95 30000 usec ({reason})") in text
    assert ("Best (trial 1): Concurrency: 2, throughput: 1000.0 infer/sec, latency p95 8000 usec "
            "(2.50x the baseline)") in text
    report = study_json(study, "sqlite:///studies.db", None)
    assert report["baseline"]["throughput"] == 400.0 and report["gain"] == 2.5


def test_a_trials_progress_line_says_where_its_settings_came_from() -> None:
    feasible = {"constraints": [-2.0, 0.0]}
    step = create_trial(value=1000.0, user_attrs=measured(1000.0, 8.0, step_from=3), system_attrs=feasible)
    repeat = create_trial(value=900.0, user_attrs=measured(900.0, 8.0, same_as=2), system_attrs=feasible)
    assert trial_line(step, 20, 10.0).endswith(
        "concurrency   2:   1000.0 infer/sec, p95    8.00 ms ok, a step from trial 3 [no dynamic batching, 1 instance]")
    rung = create_trial(value=950.0, user_attrs=measured(950.0, 8.0, delay_rung=2), system_attrs=feasible)
    assert "ok, as trial 2 measured these settings [" in trial_line(repeat, 20, 10.0)
    assert trial_line(repeat, 20, 10.0, spent=3).startswith("[3/20] trial "), "a free repeat counts nothing"
    assert "ok, the rule of thumb with a longer delay (rung 2) [" in trial_line(rung, 20, 10.0)
    baseline = create_trial(value=500.0, user_attrs=measured(500.0, 4.0, baseline=True), system_attrs=feasible)
    rule = create_trial(value=800.0, user_attrs=measured(800.0, 8.0, rule_of_thumb=True), system_attrs=feasible)
    assert "ok, the baseline (the model as configured) [" in trial_line(baseline, 20, 10.0)
    assert "ok, the Triton guide's rule of thumb [" in trial_line(rule, 20, 10.0)


def test_the_summary_says_when_the_search_spaces_concurrency_bound_ended_the_best_trials_sweep() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("max_p95_ms", 200.0)
    study.add_trial(create_trial(value=1000.0, user_attrs=measured(1000.0, 8.0, capped=True),
                                 system_attrs={"constraints": [-192.0, 0.0]}))
    assert ("Its throughput still rose at concurrency 2, the search space's highest: raise concurrency.high in the "
            "space to look further.") in summary(study)
    study.add_trial(create_trial(value=2000.0, user_attrs=measured(2000.0, 8.0),
                                 system_attrs={"constraints": [-192.0, 0.0]}))
    assert "still rose" not in summary(study)


def test_a_rate_studys_plot_shows_the_rate_each_trial_sustained_where_the_best_is_marked() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("max_p95_ms", 10.0)
    study.set_user_attr("load", "rate, poisson")
    for rate, p95_ms, over in ((900.0, 6.0, -4.0), (1500.0, 12.0, 2.0)):
        study.add_trial(create_trial(value=rate, user_attrs=measured(rate * 0.99, p95_ms, offered_rate=rate),
                                     system_attrs={"constraints": [over, 0.0]}))
    axes = pareto_figure(study, 10.0).axes[0]
    assert axes.get_ylabel() == "sustained request rate (requests/sec)"
    assert [text.xy for text in axes.texts if text.get_text().startswith("best")] == [(6.0, 900.0)]


def test_a_rate_studys_winner_that_held_only_half_its_runs_where_it_stands_is_deployed_with_a_warning() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("max_p95_ms", 20.0)
    study.set_user_attr("load", "rate, poisson")
    for rate in (663.0, 268.0):
        study.add_trial(create_trial(value=rate, user_attrs=measured(rate * 0.98, 9.0, offered_rate=rate),
                                     system_attrs={"constraints": [-11.0, 0.0, 0.0]}))
    runs = {"errors": [0, 0, 0], "kept_up": [True, True, True]}
    study.set_user_attr("confirmed", {"winner": 0, "rate": 663.0, "max_p95_ms": 20.0, "trials": [
        {"trial": 0, "first": [663.0, 9.0], "throughput": [660.0, 659.0, 593.0], "p95_ms": [18.5, 71.0, 48.9],
         "rate": [663.0, 663.0, 596.7], **runs},
        {"trial": 1, "first": [268.0, 9.0], "throughput": [259.0, 245.0, 259.0], "p95_ms": [11.5, 10.7, 13.0],
         "rate": [268.0, 268.0, 268.0], **runs}]})
    assert ("the winner holds it at 663 requests/s, where its runs held it most often (1 of 2: the edge of what it "
            "sustains, deploy it below that rate).") in summary(study)
    assert study_json(study, "memory", None)["remeasured"] == {"held": 1, "runs": 2}
    study.set_user_attr("confirmed", {**study.user_attrs["confirmed"], "trials": [
        {"trial": 0, "first": [663.0, 9.0], "throughput": [660.0, 595.0, 593.0], "p95_ms": [71.0, 18.5, 18.9],
         "rate": [663.0, 596.7, 596.7], **runs}], "rate": 596.7})
    assert "the winner holds it at 597 requests/s, where its runs held it most often (2 of 2)." in summary(study)
    assert study_json(study, "memory", None)["remeasured"] == {"held": 2, "runs": 2}
