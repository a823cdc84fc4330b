"""One trial: the settings it was given, loaded on the server, measured, and recorded on the trial.

The trial's user attributes hold its settings, its measurement and what its time went on; the p95 limit and the
request errors are its constraints (``records.constraints``), which the sampler honours, and an open loop's trial
also whether it kept up with the rate it stands on; its value is that rate, a closed loop's its throughput. A trial
whose settings an earlier trial measured takes that trial's figures instead of measuring them again.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, fields
from typing import NoReturn, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import save_note

from autotune.errors import TrialFailed
from autotune.load.policy import Meter
from autotune.load.windows import Measurement
from autotune.params import ServerParams
from autotune.records import (
    BASELINE_KEY,
    BASELINE_SUMMARY_KEY,
    CANNOT_WIN_KEY,
    CAPPED_KEY,
    CONCURRENCY_KEY,
    CONFIG_KEY,
    CONSTRAINTS_KEY,
    FAIL_REASON_KEY,
    PRUNED_REASON_KEY,
    SAME_AS_KEY,
    SWEEP_KEY,
    best_trial,
    best_value,
    constraints,
    trial_params,
)
from autotune.report.notes import new_best_note
from autotune.search.space import SearchSpace
from autotune.triton.model_config import ModelConfig, apply, params_of
from autotune.triton.server import SERVER_TIMES, server_times

# What a trial's user attributes hold about its measurement (the rest: its settings, worker and timings).
_MEASURED = frozenset({f.name for f in fields(Measurement) if f.name != "warmup_s"} | {SWEEP_KEY, CAPPED_KEY,
                                                                                    *SERVER_TIMES})


class Target(Protocol):
    """The model being tuned on its server: ``ModelServer`` is one."""

    @property
    def original(self) -> ModelConfig: ...

    def apply(self, config: ModelConfig) -> bool: ...

    def statistics(self) -> dict[str, float]: ...


@dataclass
class Objective:
    """Measures one trial of a study on ``target`` with ``meter`` (which holds the p95 limit, and the open loop's
    arrivals where the study sweeps rates); returns its throughput, or the rate it sustains, as Optuna's objectives
    do.

    Raises ``optuna.TrialPruned`` for a measurement cut short, and ``TrialFailed`` (its reason recorded) for a
    config the server refused or a model that never answered.
    """

    target: Target
    meter: Meter
    space: SearchSpace
    sampled_concurrency: bool = False
    worker: dict[str, str] = field(default_factory=dict)
    _client_warned: bool = field(default=False, init=False)  # a saturated client is said once a run

    @property
    def base(self) -> ModelConfig:
        return self.target.original

    def __call__(self, trial: optuna.Trial) -> float:
        if trial.user_attrs.get(BASELINE_KEY):
            params, config = params_of(self.base), self.base
        else:
            params = self.space.suggest(trial, self.base)
            config = apply(self.base, params)
        trial.set_user_attr(CONFIG_KEY, params.as_dict())
        for key, value in self.worker.items():
            trial.set_user_attr(key, value)
        concurrency = self.space.suggest_concurrency(trial) if self.sampled_concurrency else None
        twin = None if trial.user_attrs.get(BASELINE_KEY) else self._measured_twin(trial.study, params, concurrency)
        if twin is not None:
            return _answer_from(trial, twin)
        started = time.monotonic()
        try:
            reloaded = self.target.apply(config)
        except TrialFailed as error:
            trial.set_user_attr(FAIL_REASON_KEY, str(error))
            raise
        finally:
            trial.set_user_attr("reload_s", round(time.monotonic() - started, 3))
        before = self.target.statistics()
        best = best_trial(trial.study)
        # A sweep starts where the best peaked; a trial that cannot beat the best is cut short.
        to_beat = best.value if best is not None and best.value is not None else -math.inf
        started = time.monotonic()
        if self.meter.arrivals is not None:
            reading = self.meter.rate_trial(reloaded, to_beat)
        else:
            start = best.user_attrs[CONCURRENCY_KEY] if best is not None and concurrency is None else 1
            reading = self.meter.trial(reloaded, params.fill_level, concurrency, start, to_beat,
                                       params.max_queue_delay_microseconds / 1000)
        measurement = reading.measurement
        value = measurement.offered_rate if measurement.open_loop else measurement.throughput
        if concurrency is None:
            trial.set_user_attr(SWEEP_KEY, [point.as_record() for point in reading.sweep])
        if reading.capped:
            trial.set_user_attr(CAPPED_KEY, True)
        trial.set_user_attr("measure_s", round(time.monotonic() - started, 3))
        _record(trial, measurement, before, self.target.statistics())
        if measurement.client_cost.saturated and not self._client_warned:
            self._client_warned = True
            print(measurement.client_cost.advice(measurement.load), file=sys.stderr)
        trial.set_user_attr("warmup_s", round(reading.warmup_s, 3))
        if measurement.requests == 0:
            reason = f"no request succeeded: {measurement.first_error or 'no reply within the window'}"
            trial.set_user_attr(FAIL_REASON_KEY, reason)
            raise TrialFailed(reason)
        limits = constraints(measurement.p95_ms, measurement.errors, self.meter.max_p95_ms,
                             measurement.shortfall if measurement.open_loop else None)
        set_constraints(trial, limits)
        if trial.user_attrs.get(BASELINE_KEY):
            trial.study.set_user_attr(BASELINE_SUMMARY_KEY, {
                "trial": trial.number, "throughput": round(measurement.throughput, 2),
                "p95_ms": round(measurement.p95_ms, 3), "concurrency": measurement.concurrency,
                **({"offered_rate": measurement.offered_rate} if measurement.open_loop else {}),
            })
        if measurement.cut_short:  # condemned by a window, whether or not it could win: a rung's ladder ends here
            why = (f"{measurement.errors} errors" if measurement.errors else
                   f"median latency {measurement.p50_ms:.1f} ms, over the limit")
            _prune(trial, value, measurement.windows, f"stopped after window {measurement.windows}: {why}")
        if reading.cannot_win:
            trial.set_user_attr(CANNOT_WIN_KEY, True)
            _prune(trial, value, measurement.windows, _cannot_win(measurement, to_beat))
        if all(c <= 0 for c in limits) and value > best_value(trial.study):
            save_note(trial, new_best_note(config, measurement))
        return value

    def _measured_twin(self, study: optuna.Study, params: ServerParams, concurrency: int | None) -> FrozenTrial | None:
        """A complete trial that measured these server settings (at this concurrency, where it is sampled).

        TPE proposes the same settings again once it has narrowed down (an eighth to a fifth of the trials of a
        study of 20 on the shipped models, most of them with the batcher off, where only the instance count varies).
        Measuring them again would cost a whole trial for a reading no better than the first; the winner's re-
        measurement at the end is where repeated readings count.
        """
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if SAME_AS_KEY not in trial.user_attrs and trial_params(trial) == params and (
                    concurrency is None or trial.user_attrs[CONCURRENCY_KEY] == concurrency):
                return trial
        return None


def _prune(trial: optuna.Trial, value: float, windows: int, reason: str) -> NoReturn:
    """End a trial as pruned: its reading as the last intermediate value, and why."""
    trial.report(value, step=windows)
    trial.set_user_attr(PRUNED_REASON_KEY, reason)
    raise optuna.TrialPruned(reason)


def _cannot_win(measurement: Measurement, to_beat: float) -> str:
    if measurement.open_loop:
        why = ("the server fell behind" if not measurement.kept_up
               else f"p95 {measurement.p95_ms:.1f} ms, over the limit")
        return (f"cannot win: did not sustain {measurement.offered_rate:.0f} requests/s ({why}), and a higher rate "
                f"does no better; the best sustains {to_beat:.0f}")
    return (f"cannot win: {measurement.throughput:.0f} infer/s over the limit at concurrency "
            f"{measurement.concurrency}, and fewer requests in flight read less; the best holds {to_beat:.0f}")


def _answer_from(trial: optuna.Trial, twin: FrozenTrial) -> float:
    """Record ``twin``'s measurement as this trial's, without measuring: the sampler learns the same as from a
    measurement, the trial counts toward the budget, and the study's rankings list the config once."""
    trial.set_user_attr(SAME_AS_KEY, twin.number)
    for key, value in twin.user_attrs.items():
        if key in _MEASURED:
            trial.set_user_attr(key, value)
    set_constraints(trial, twin.system_attrs[CONSTRAINTS_KEY])
    return twin.value


def _record(trial: optuna.Trial, measurement: Measurement, before: dict[str, float], after: dict[str, float]) -> None:
    for key, value in measurement.as_dict().items():
        if value == "" or (isinstance(value, float) and not math.isfinite(value)):
            continue
        trial.set_user_attr(key, round(value, 4) if isinstance(value, float) else value)
    for key, value in server_times(before, after).items():
        trial.set_user_attr(key, value)


def set_constraints(trial: optuna.Trial, values: list[float]) -> None:
    """Store constraints in the list form that both Optuna's samplers and optuna-dashboard read.

    ``Trial.set_constraint`` (Optuna 5) writes one key per constraint, which optuna-dashboard 0.21 ignores.
    """
    trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, values)
