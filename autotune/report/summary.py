"""What a study found, for people and for scripts: a perf_analyzer-style summary, JSON, and the best config.pbtxt.

A closed loop's trial stands at a concurrency and its value is its throughput; an open loop's stands at the request
rate it sustains, which is its value ("sustains 1200 requests/s at p95 8.1 ms").
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.records import (
    BASE_CONFIG_KEY,
    CAPPED_KEY,
    CONFIRMED_KEY,
    MAX_P95_KEY,
    MODEL_KEY,
    OFFERED_RATE_KEY,
    SAME_AS_KEY,
    StudySettings,
    baseline_trial,
    best_trial,
    deployed_level,
    is_feasible,
    top_feasible,
    trial_level,
    trial_params,
)
from autotune.search import DEFAULT_STRATEGY, Strategy
from autotune.triton.model_config import ModelConfig, apply, parse_pbtxt, to_pbtxt

_METRICS = ("throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "concurrency", "errors")


def _open_loop(trial: FrozenTrial) -> bool:
    return OFFERED_RATE_KEY in trial.user_attrs


def _load_words(trial: FrozenTrial, at: float | None = None) -> str:
    """Where a trial stands (or ``at``), in words: "concurrency 16", "1200 requests/s"."""
    at = trial_level(trial) if at is None else at
    return f"{at:.0f} requests/s" if _open_loop(trial) else f"concurrency {at}"


def _sustains(trial: FrozenTrial, at: float | None = None) -> str:
    """A feasible open-loop trial's headline: "sustains 1200 requests/s at p95 8.10 ms"."""
    return f"sustains {_load_words(trial, at)} at p95 {trial.user_attrs['p95_ms']:.2f} ms"


def describe(params: dict[str, Any]) -> str:
    """One short line for a trial's server settings."""
    instances = f"{params['instance_count']} instance{'s' if params['instance_count'] != 1 else ''}"
    if not params["dynamic_batching"]:
        return f"no dynamic batching, {instances}"
    preferred = ",".join(map(str, params["preferred_batch_size"])) or "none"
    delay = params["max_queue_delay_microseconds"]
    batch = params["max_batch_size"]
    return f"dynamic batching (max batch {batch}, delay {delay} us, preferred {preferred}), {instances}"


def trial_line(trial: FrozenTrial, n_trials: int, max_p95_ms: float, strategy: Strategy = DEFAULT_STRATEGY,
               spent: int | None = None) -> str:
    """The progress line printed as each trial ends; ``strategy`` words where its settings came from, and
    ``spent`` is how many of the ``n_trials`` are used up (by default, as if every trial before it counted: a
    repeat of measured settings leaves the count where it was)."""
    attrs = trial.user_attrs
    head = f"[{trial.number + 1 if spent is None else spent}/{n_trials}] trial {trial.number}"
    settings = describe(attrs["config"]) if "config" in attrs else ""
    if trial.state != TrialState.COMPLETE:
        reason = attrs.get("fail_reason") or attrs.get("pruned_reason") or "interrupted"
        return f"{head} {trial.state.name.lower()}: {reason} [{settings}]"
    verdict = "ok" if is_feasible(trial) else (
        f"{attrs['errors']} errors" if attrs.get("errors") else f"over the {max_p95_ms:g} ms limit"
        if attrs["p95_ms"] > max_p95_ms else "did not keep up with its schedule")
    verdict += "".join(f", {origin}" for origin in strategy.label(trial))
    if SAME_AS_KEY in attrs:
        verdict += f", as trial {attrs[SAME_AS_KEY]} measured these settings"
    where = (f"{attrs[OFFERED_RATE_KEY]:6.0f} requests/s" if _open_loop(trial)
             else f"concurrency {attrs['concurrency']:>3}")
    return (f"{head} {where}: {attrs['throughput']:8.1f} infer/sec, p95 {attrs['p95_ms']:7.2f} ms"
            f" {verdict} [{settings}]")


def _pa_line(trial: FrozenTrial) -> str:
    """A trial's point in perf_analyzer's words; an open loop's headed by the rate it sustains, where it does."""
    attrs = trial.user_attrs
    load = (f"Request Rate: {attrs[OFFERED_RATE_KEY]:g}" if _open_loop(trial)
            else f"Concurrency: {attrs['concurrency']}")
    line = f"{load}, throughput: {attrs['throughput']:.1f} infer/sec, latency p95 {attrs['p95_ms'] * 1000:.0f} usec"
    return f"{_sustains(trial)} ({line})" if _open_loop(trial) and is_feasible(trial) else line


def summary(study: optuna.Study, output: Path | None = None, top: int = 5) -> str:
    """The perf_analyzer-style text printed at the end of ``optimize`` and by ``report``."""
    settings = StudySettings.of(study)
    max_p95_ms = settings.max_p95_ms
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    infeasible = sum(t.state == TrialState.COMPLETE and not is_feasible(t) for t in trials)
    lines = [f"Study {study.study_name}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}, "
             f"{infeasible} over the limit or with errors); p95 limit {max_p95_ms:g} ms"]
    baseline, best = baseline_trial(study), best_trial(study)
    if baseline is not None:
        pruned = f" ({baseline.user_attrs['pruned_reason']})" if "pruned_reason" in baseline.user_attrs else ""
        lines += ["", f"Baseline (trial {baseline.number}, the model as configured): {_pa_line(baseline)}{pruned}",
                  f"  {describe(baseline.user_attrs['config'])}"]
    if best is None:
        lines += ["", f"No trial met the p95 limit of {max_p95_ms:g} ms without errors."]
        return "\n".join(lines)
    ratio = _gain(best, baseline)
    gain = f" ({ratio:.2f}x the baseline)" if ratio is not None else ""
    lines += ["", f"Best (trial {best.number}): {_pa_line(best)}{gain}", f"  {describe(best.user_attrs['config'])}"]
    if best.user_attrs.get(CAPPED_KEY):
        lines.append(f"  The client fell behind its schedule above {_load_words(best)}: the config may sustain more; "
                     "raise --client-processes to look further." if _open_loop(best) else
                     f"  Its throughput still rose at concurrency {best.user_attrs['concurrency']}, the search space's "
                     "highest: raise concurrency.high in the space to look further.")
    lines += confirmation(study)
    ranked = top_feasible(study, top)
    level = "req/s" if _open_loop(best) else "conc"
    lines += ["", f"Top {len(ranked)} feasible configurations:",
              f"{'trial':>5} {level:>5} {'infer/sec':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  settings"]
    for trial in ranked:
        a = trial.user_attrs
        lines.append(f"{trial.number:>5} {trial_level(trial):>5.0f} {a['throughput']:>10.1f} {a['p50_ms']:>8.2f} "
                     f"{a['p95_ms']:>8.2f} {a['p99_ms']:>8.2f}  {describe(a['config'])}")
    if output is not None:
        deploy = deployed_level(study, best)
        where = (f"it sustained {_load_words(best, deploy)} under {settings.load.removeprefix('rate, ')} arrivals"
                 if _open_loop(best) else f"run clients at concurrency {deploy}")
        lines += ["", f"Best config written to {output} ({where})."]
    return "\n".join(lines)


def confirmation(study: optuna.Study) -> list[str]:
    """How the top trials held up when measured again: each run, the median and the spread around it."""
    confirmed = study.user_attrs.get(CONFIRMED_KEY)
    if not confirmed:
        return []
    runs = confirmed["trials"]
    lines = ["", f"Re-measured the top {len(runs)} feasible trials {len(runs[0]['throughput'])} more times each, "
             "round-robin; the winner is chosen on these runs:"]
    for run in runs:
        throughput = run["throughput"]
        median = float(np.median(throughput))
        spread = (max(throughput) - min(throughput)) / 2 / median if median else 0.0
        p95 = ", ".join("-" if p is None else f"{p:.2f}" for p in run["p95_ms"])
        mark = "  <- winner" if run["trial"] == confirmed["winner"] else ""
        first = (f"sustained {run['first'][0]:.0f} requests/s" if "rate" in run
                 else f"first {run['first'][0]:.1f} infer/sec")
        moved = run.get("rate", run.get("concurrency", []))
        at = ("" if len(set(moved)) < 2 else f" at {', '.join(f'{r:.0f}' for r in moved)} requests/s" if "rate" in run
              else f" at concurrency {', '.join(map(str, moved))}")
        unit = " infer/sec" if "rate" in run else ""
        lines.append(f"  trial {run['trial']:>3}: {first}, again median {median:.1f}{unit} "
                     f"(±{spread:.0%}){at}; p95 {p95} ms; held the limit {sum(_held(confirmed, run))} of "
                     f"{len(throughput)}{mark}")
    winner, level = _winner(confirmed)
    if level in confirmed and len(set(winner.get(level, []))) > 1:
        there = _held_where_deployed(confirmed)
        where = f"{confirmed[level]:.0f} requests/s" if level == "rate" else f"concurrency {confirmed[level]}"
        fewer = "a lower rate" if level == "rate" else "fewer requests in flight"
        edge = (": the edge of what it sustains, deploy it below that rate"
                if level == "rate" and 2 * sum(there) <= len(there) else "")
        lines.append(f"  A run over the limit moves that trial's next runs to {fewer}: the winner holds it at {where}, "
                     f"where its runs held it most often ({sum(there)} of {len(there)}{edge}).")
    return lines


def _winner(confirmed: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The winner's record in a re-measurement, and what its runs moved by: "rate" or "concurrency"."""
    winner = next(run for run in confirmed["trials"] if run["trial"] == confirmed["winner"])
    return winner, "rate" if "rate" in winner else "concurrency"


def _held_where_deployed(confirmed: dict[str, Any]) -> list[bool]:
    """Whether each of the winner's re-measured runs held the limit, of those at the level it is deployed at."""
    winner, level = _winner(confirmed)
    held = _held(confirmed, winner)
    if level not in winner or level not in confirmed:  # a study from before runs moved: all at the trial's level
        return held
    return [h for h, at in zip(held, winner[level], strict=True) if at == confirmed[level]]


def _held(confirmed: dict[str, Any], run: dict[str, Any]) -> list[bool]:
    """Whether each of a trial's re-measured runs held the limit, without errors (and, in an open loop, kept up)."""
    kept_up = run.get("kept_up", [True] * len(run["throughput"]))
    return [p is not None and p <= confirmed[MAX_P95_KEY] and not e and kept
            for p, e, kept in zip(run["p95_ms"], run["errors"], kept_up, strict=True)]


def study_note(study: optuna.Study) -> str:
    """The Markdown note optuna-dashboard shows on the study page: the best feasible trial and its config.

    The dashboard's own "best trial" ignores constraints, so the note names the one that met the limit.
    """
    found = best_config(study)
    limit = study.user_attrs.get(MAX_P95_KEY)
    if found is None:
        return f"No trial has met the p95 limit of {limit} ms without errors yet."
    config, best = found
    ratio = _gain(best, baseline_trial(study))
    gain = f", {ratio:.2f}x the baseline" if ratio is not None else ""
    deploy = deployed_level(study, best)
    figures = (_sustains(best, deploy) if _open_loop(best) else
               f"{best.value:.1f} infer/sec at concurrency {deploy}, p95 {best.user_attrs['p95_ms']:.2f} ms")
    return (f"## Best feasible: trial {best.number}\n\n{figures} (limit {limit} ms){gain}.\n\n"
            f"```\n{to_pbtxt(config)}```\n")


def _gain(best: FrozenTrial | None, baseline: FrozenTrial | None) -> float | None:
    """The best trial's throughput (or rate sustained) over the baseline's, when both exist; an open loop's
    baseline only where it sustained a rate at all."""
    if best is None or baseline is None or not baseline.user_attrs.get("throughput"):
        return None
    if _open_loop(baseline):
        return (best.value or 0.0) / baseline.value if is_feasible(baseline) and baseline.value else None
    return (best.value or 0.0) / baseline.user_attrs["throughput"]


def trial_json(trial: FrozenTrial | None, at: float | None = None) -> dict[str, Any] | None:
    """A trial's figures (an open loop's with the rate it stands on); ``at`` is where to run it (concurrency or
    rate) when that is not where it was measured."""
    if trial is None:
        return None
    metrics = {key: trial.user_attrs.get(key) for key in _METRICS}
    if _open_loop(trial):
        metrics[OFFERED_RATE_KEY] = trial.user_attrs[OFFERED_RATE_KEY]
    deploy_key = "deploy_rate" if _open_loop(trial) else "deploy_concurrency"
    deploy = {} if at in (None, trial_level(trial)) else {deploy_key: at}
    return {"trial": trial.number, **metrics, **deploy, "config": trial.user_attrs.get("config")}


def study_json(study: optuna.Study, storage: str, output: Path | None) -> dict[str, Any]:
    """The one JSON document that ``optimize --json`` prints."""
    baseline, best = baseline_trial(study), best_trial(study)
    trials = study.get_trials(deepcopy=False)
    confirmed = study.user_attrs.get(CONFIRMED_KEY)
    crowned = best is not None and confirmed and confirmed["winner"] == best.number
    held = _held_where_deployed(confirmed) if crowned else None
    return {
        "study": study.study_name,
        "storage": storage,
        "model": study.user_attrs.get(MODEL_KEY),
        "max_p95_ms": study.user_attrs.get(MAX_P95_KEY),
        "load": StudySettings.of(study).load,
        "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState},
        "baseline": trial_json(baseline),
        "best": trial_json(best, deployed_level(study, best) if best is not None else None),
        # How often the winner's re-measured runs held the limit where it is deployed: an open loop's rate held in
        # half of them or fewer is the edge of what the config sustains.
        "remeasured": {"held": sum(held), "runs": len(held)} if held is not None else None,
        "gain": _gain(best, baseline),
        "output": str(output) if output is not None and best is not None else None,
    }


def best_config(study: optuna.Study) -> tuple[ModelConfig, FrozenTrial] | None:
    """The best trial's settings applied to the model's original config, as recorded with the study."""
    best = best_trial(study)
    if best is None:
        return None
    base = parse_pbtxt(study.user_attrs[BASE_CONFIG_KEY], f"study {study.study_name}'s base config")
    return apply(base, trial_params(best)), best


def export(config: ModelConfig, trial: FrozenTrial, study: optuna.Study, path: Path) -> None:
    """Write a ready-to-deploy config.pbtxt, headed by a comment saying where it came from."""
    a, limit = trial.user_attrs, study.user_attrs.get(MAX_P95_KEY)
    deploy = deployed_level(study, trial)
    if _open_loop(trial):
        header = (f"# Tuned by autotune: study {study.study_name}, trial {trial.number}, under an open loop "
                  f"({StudySettings.of(study).load.removeprefix('rate, ')} arrivals).\n"
                  f"# It {_sustains(trial)} (limit {limit} ms).\n")
        if deploy != trial_level(trial):
            header += f"# Re-measured, it held the limit at {_load_words(trial, deploy)}.\n"
    else:
        header = (f"# Tuned by autotune: study {study.study_name}, trial {trial.number}.\n"
                  f"# Measured {trial.value:.1f} infer/sec at client concurrency {a['concurrency']}, "
                  f"p95 {a['p95_ms']:.2f} ms (limit {limit} ms).\n")
        if deploy != a["concurrency"]:
            header += f"# Re-measured, it held the limit at client concurrency {deploy}: run clients there.\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + to_pbtxt(config))
