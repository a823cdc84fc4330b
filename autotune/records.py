"""Trial records: the attribute keys a study's trials carry, and what can be read off them.

Everything that is stored lives here: the user-attribute keys of a measured trial and of its study, the
constraints that both Optuna's samplers and optuna-dashboard read, feasibility, the trials that count toward a
budget, the best trial, and a typed view of the study's own settings. Reports, plots, progress lines and the
dashboard need only this module; the search strategy and the study loop write what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from optuna.trial import FrozenTrial, TrialState

from autotune.params import ServerParams

# A trial's user attributes.
CONFIG_KEY = "config"  # the server settings it ran with (``ServerParams.as_dict``)
CONCURRENCY_KEY = "concurrency"  # the client concurrency that stands for it (0: an open loop's trial)
OFFERED_RATE_KEY = "offered_rate"  # an open loop's: the rate it sustained (or, infeasible, came closest at)
SWEEP_KEY = "sweep"  # its sweep: [concurrency or rate, throughput, p95 ms] per point, in the order measured
CAPPED_KEY = "capped"  # its sweep still gained at the space's highest concurrency, or its client fell behind
FAIL_REASON_KEY = "fail_reason"  # why it failed, when for a reason of its own (it counts toward the budget)
PRUNED_REASON_KEY = "pruned_reason"  # why its measurement was cut short
CANNOT_WIN_KEY = "cannot_win"  # cut short: over the limit where it started, reading less than the best could win
SAME_AS_KEY = "same_as"  # the earlier trial that measured its settings, whose figures it took
BASELINE_KEY = "baseline"  # the model as configured, the study's first trial: where tuning started
# What a study that measures under a closed loop records as its load.
CLOSED_LOOP = "concurrency"
# A study's user attributes.
MODEL_KEY = "model"
MAX_P95_KEY = "max_p95_ms"
LOAD_KEY = "load"  # what the study maximises: "concurrency" (infer/sec, closed loop) or "rate, ARRIVALS" (open)
BASE_CONFIG_KEY = "base_config"  # the model's config.pbtxt as the server ran it before tuning
BASELINE_SUMMARY_KEY = "baseline"  # the baseline trial's figures, for the dashboard's study page
CONFIRMED_KEY = "confirmed"  # the last re-measurement of the top trials and its winner
RESTORE_PENDING_KEY = "restore_pending"  # the server whose model a restore did not put back (None once it did)
# optuna-dashboard reads feasibility only from this list-valued system attribute; Optuna's samplers read it too.
CONSTRAINTS_KEY = "constraints"
# The winner's curse: the best of many noisy measurements is flattered. The top few are measured again, in
# rounds: three (benchmarks/README.md, the live runs of 2026-12-07).
CONFIRM_TOP = 3
CONFIRM_ROUNDS = 3


class TrialSource(Protocol):
    """What the queries read of a study: ``optuna.Study`` is one."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...

    def get_trials(self, deepcopy: bool = ..., states: Any = ...) -> list[FrozenTrial]: ...


@dataclass(frozen=True)
class StudySettings:
    """What a study was started for, as its user attributes hold it: the one source of the p95 limit, and of the
    load it measures under (a study from before open loops has none recorded: it ran a closed loop)."""

    model: str
    max_p95_ms: float
    load: str = CLOSED_LOOP

    @classmethod
    def of(cls, study: TrialSource) -> StudySettings:
        attrs = study.user_attrs
        return cls(model=str(attrs.get(MODEL_KEY, "")), max_p95_ms=float(attrs.get(MAX_P95_KEY, float("inf"))),
                   load=str(attrs.get(LOAD_KEY, CLOSED_LOOP)))

    @property
    def open_loop(self) -> bool:
        """Whether the study maximises the request rate sustained, not the throughput at a concurrency."""
        return self.load != CLOSED_LOOP

    def as_attrs(self) -> dict[str, object]:
        return {MODEL_KEY: self.model, MAX_P95_KEY: self.max_p95_ms, LOAD_KEY: self.load}


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial.system_attrs.get(CONSTRAINTS_KEY, [1]))


def constraints(p95_ms: float, errors: int, max_p95_ms: float, shortfall: float | None = None) -> list[float]:
    """A trial's constraints, feasible when none is positive: p95 over the limit, request errors, and for an open
    loop's trial the ``shortfall`` of the rate it completed below the share of its offered rate that counts as
    kept up."""
    return [p95_ms - max_p95_ms, float(errors), *([] if shortfall is None else [shortfall])]


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Whether a trial uses up one of ``--trials``: it was measured, or failed for a reason of its own.

    A trial cut short by Ctrl-C or by a worker that died does not count; its parameters are tried again.
    """
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and FAIL_REASON_KEY in trial.user_attrs
    )


def counts_or_pending(trial: FrozenTrial) -> bool:
    """Whether a trial was measured, failed for a reason of its own, or still waits or runs."""
    return counts_toward_total(trial) or trial.state in (TrialState.WAITING, TrialState.RUNNING)


def counted(trials: list[FrozenTrial]) -> int:
    """How much of a budget ``trials`` use up: each that ``counts_toward_total``, except that a repeat (settings an
    earlier trial measured, answered from its figures at no cost) counts only where repeats outnumber the rest.

    TPE proposes settings again once it narrows down; a repeat that cost a trial would leave the study fewer
    measurements, while repeats that never counted could go on for ever.
    """
    spent = [t for t in trials if counts_toward_total(t)]
    repeats = sum(SAME_AS_KEY in t.user_attrs for t in spent)
    return len(spent) - repeats + max(0, 2 * repeats - len(spent))


def counted_trials(study: TrialSource) -> int:
    return counted(study.get_trials(deepcopy=False))


def trials_since_best(study: TrialSource) -> int:
    """How many counted trials finished after the best feasible one (all of them when none is feasible)."""
    counted = [t for t in study.get_trials(deepcopy=False) if counts_toward_total(t)]
    best = best_trial(study)
    if best is None:
        return len(counted)
    return sum(t.datetime_complete > best.datetime_complete for t in counted)


def baseline_trial(study: TrialSource) -> FrozenTrial | None:
    """The measured baseline, pruned ones included: a baseline over the limit still says where tuning started."""
    measured = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return next((t for t in measured if t.user_attrs.get(BASELINE_KEY)), None)


def top_feasible(study: TrialSource, n: int) -> list[FrozenTrial]:
    """The ``n`` feasible trials with the highest throughput, best first; each config once, as first measured."""
    feasible = [t for t in study.get_trials(deepcopy=False) if is_feasible(t) and SAME_AS_KEY not in t.user_attrs]
    return sorted(feasible, key=lambda t: -(t.value or 0.0))[:n]


def best_trial(study: TrialSource) -> FrozenTrial | None:
    """The winner of the last re-measurement while it still covers the top trials, else the feasible trial with
    the highest throughput (Optuna's ``best_trial`` ignores constraints here)."""
    top = top_feasible(study, CONFIRM_TOP)
    confirmed = study.user_attrs.get(CONFIRMED_KEY)
    if top and confirmed and {t.number for t in top} <= {run["trial"] for run in confirmed["trials"]}:
        return study.get_trials(deepcopy=False)[confirmed["winner"]]
    return top[0] if top else None


def trial_level(trial: FrozenTrial) -> float:
    """Where a trial stands: the client concurrency, or the request rate an open loop's trial sustained."""
    attrs = trial.user_attrs
    return attrs[OFFERED_RATE_KEY] if OFFERED_RATE_KEY in attrs else attrs[CONCURRENCY_KEY]


def deployed_level(study: TrialSource, trial: FrozenTrial) -> float:
    """Where to run ``trial``'s config: the concurrency (or request rate) where the re-measurement crowned it, when
    it did, else where the trial measured it."""
    confirmed = study.user_attrs.get(CONFIRMED_KEY)
    if confirmed and confirmed["winner"] == trial.number:
        for key in ("rate", "concurrency"):
            if key in confirmed:
                return confirmed[key]
    return trial_level(trial)


def best_value(study: TrialSource) -> float:
    """The best feasible throughput so far; minus infinity before any."""
    best = best_trial(study)
    return best.value if best is not None and best.value is not None else float("-inf")


def planned_params(trial: FrozenTrial) -> dict[str, Any]:
    """The sampled values a trial has, or will have once it runs: those it was queued with come first."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def trial_params(trial: FrozenTrial) -> ServerParams:
    """The server settings a trial ran with, as recorded in its user attributes."""
    return ServerParams.from_dict(trial.user_attrs[CONFIG_KEY])
