"""The winner's curse, answered: the top feasible trials measured again round-robin, and the winner crowned on those
runs rather than on its first, flattered reading.

A sweep stands on the most requests in flight that held the limit once, so the top trials sit on the limit's edge
and the next reading often breaks it. A run that breaks the limit moves that trial's next runs to fewer requests in
flight (``retreat``): to the most that its own sweep saw hold the limit, or, where it saw none, as many fewer as its
p95 was over (at saturation latency grows with the requests in flight, Little's law) and a little more, but not
below the batch that a batcher waits to fill where it waits its delay out (``policy.waits_out``). The winner is
crowned, and deployed, at the concurrency where its runs held most often. An open loop's trials are measured again
at the rate they sustained; a run that did not sustain it moves the next runs to ``MARGIN`` of that rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from optuna_dashboard import save_note

from autotune.load.policy import Meter, SweepPoint, waits_out
from autotune.records import (
    CONFIRM_TOP,
    CONFIRMED_KEY,
    MAX_P95_KEY,
    SWEEP_KEY,
    top_feasible,
    trial_level,
    trial_params,
)
from autotune.report.notes import crowned_note
from autotune.study.objective import Target
from autotune.triton.model_config import apply

# A trial whose run broke the limit is measured next at this share of the concurrency that would just hold it, or
# of the rate it did not sustain.
MARGIN = 0.9


@dataclass(frozen=True)
class Run:
    """One re-measurement of a trial's config, at ``at`` requests in flight, or, ``open_loop``, per second; an open
    loop's run also says whether it kept up with that rate."""

    throughput: float
    p95_ms: float
    errors: int
    at: float
    open_loop: bool = False
    kept_up: bool = True

    def held(self, max_p95_ms: float) -> bool:
        return self.p95_ms <= max_p95_ms and not self.errors and self.kept_up

    def fewer(self, max_p95_ms: float) -> float:
        """Where to measure next after this run broke the limit: as many requests in flight as would hold it, or
        a rate ``MARGIN`` of this one."""
        if self.open_loop:
            return self.at * MARGIN
        if self.errors or not math.isfinite(self.p95_ms):
            return self.at
        return max(1, min(self.at - 1, int(self.at * MARGIN * max_p95_ms / self.p95_ms)))


def retreat(run: Run, max_p95_ms: float, trial: FrozenTrial) -> float:
    """Where to measure ``trial`` next after ``run`` broke the limit. Measured points beat an estimate: fewer
    requests in flight do not always wait less, since below the batch it waits to fill a batcher waits its delay
    out, and a guess there can read worse than the run it retreats from."""
    if run.open_loop or run.errors or not math.isfinite(run.p95_ms):
        return run.fewer(max_p95_ms)
    sweep = [SweepPoint(*record) for record in trial.user_attrs.get(SWEEP_KEY, ())]
    held = [point.at for point in sweep if point.at < run.at and point.p95_ms <= max_p95_ms]
    if held:
        return max(held)
    params = trial_params(trial)
    waits = waits_out(params.max_queue_delay_microseconds / 1000, max_p95_ms)
    return max(run.fewer(max_p95_ms), min(params.fill_level if waits else 1, run.at))


def standing(runs: Sequence[Run], max_p95_ms: float) -> list[Run]:
    """The runs a trial is judged on: those at the concurrency where they held the limit most often, then read the
    highest median throughput. Fewer requests in flight are not always better: below its batch size, a batcher
    with a long delay waits the delay out, and its p95 rises."""
    at: dict[float, list[Run]] = {}
    for run in runs:
        at.setdefault(run.at, []).append(run)
    return max(at.values(), key=lambda group: (_held(group, max_p95_ms), _median(group)))


def crown(runs: dict[int, Sequence[Run]], max_p95_ms: float) -> int:
    """The trial whose ``standing`` runs held the limit at least half the time, with the highest median
    throughput; when none held it, the one that held it most often."""
    def score(number: int) -> tuple[float, float]:
        counted = standing(runs[number], max_p95_ms)
        return (min(_held(counted, max_p95_ms), 0.5), _median(counted))

    return max(runs, key=score)


def _held(runs: Sequence[Run], max_p95_ms: float) -> float:
    return sum(run.held(max_p95_ms) for run in runs) / len(runs)


def _median(runs: Sequence[Run]) -> float:
    return float(np.median([run.throughput for run in runs]))


def confirm(study: optuna.Study, storage: BaseStorage, target: Target, meter: Meter, rounds: int) -> None:
    """Measure the top feasible trials again, ``rounds`` times each in alternating order, and crown the one that
    holds up.

    A study's best single measurement is an optimistic draw, and the optimum usually sits on the limit; the
    repeated measurements decide the winner, and the study keeps them (user attribute ``confirmed``). The winner's
    dashboard note says so and holds its config, as a new best's note does: the winner need not have been a new
    best when it ran.
    """
    top = top_feasible(study, CONFIRM_TOP)
    if rounds < 1 or not top:
        return
    base, max_p95_ms = target.original, meter.max_p95_ms
    open_loop = meter.arrivals is not None
    level = "rate" if open_loop else "concurrency"  # what the record calls where each run was measured
    runs: dict[int, list[Run]] = {t.number: [] for t in top}
    where = {t.number: trial_level(t) for t in top}
    # Every other round backwards (A B C, C B A, ...): a drift of the machine's speed weighs on all alike, and the
    # config measured last in a round is measured first in the next without a reload.
    for trial in (t for round_ in range(rounds) for t in (top if round_ % 2 == 0 else top[::-1])):
        at = where[trial.number]
        measured = meter.again(at, target.apply(apply(base, trial_params(trial))))
        run = Run(measured.throughput, measured.p95_ms, measured.errors, at, open_loop,
                  not open_loop or measured.kept_up)
        runs[trial.number].append(run)
        if not run.held(max_p95_ms):
            where[trial.number] = retreat(run, max_p95_ms, trial)
    winner = next(t for t in top if t.number == crown(runs, max_p95_ms))
    won = standing(runs[winner.number], max_p95_ms)
    study.set_user_attr(CONFIRMED_KEY, {
        "winner": winner.number,
        level: won[0].at,
        MAX_P95_KEY: max_p95_ms,
        "trials": [{"trial": t.number, "first": [round(t.value or 0.0, 2), t.user_attrs["p95_ms"]],
                    "throughput": [round(r.throughput, 2) for r in runs[t.number]],
                    "p95_ms": [round(r.p95_ms, 3) if math.isfinite(r.p95_ms) else None for r in runs[t.number]],
                    "errors": [r.errors for r in runs[t.number]],
                    **({"kept_up": [r.kept_up for r in runs[t.number]]} if open_loop else {}),
                    level: [r.at for r in runs[t.number]]} for t in top],
    })
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), winner.number)
    load = f"{won[0].at:.0f} requests/s" if open_loop else f"concurrency {won[0].at}"
    save_note(optuna.Trial(study, trial_id), crowned_note(
        apply(base, trial_params(winner)), load, [r.throughput for r in won], [r.p95_ms for r in won]))
