"""Progress of a running study: a line per finished trial and, on a terminal, a bar with the best so far."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autotune.records import OFFERED_RATE_KEY, best_trial, counted_trials
from autotune.report.summary import trial_line
from autotune.search import DEFAULT_STRATEGY, Strategy


class TrialProgress:
    """A callback for ``Tuner.optimize``; use it as a context manager around the call.

    Quiet with a quiet console; the bar only on a terminal. ``strategy`` words where each trial came from.
    """

    def __init__(self, study: optuna.Study, n_trials: int, max_p95_ms: float, console: Console,
                 strategy: Strategy = DEFAULT_STRATEGY) -> None:
        self._n_trials = n_trials
        self._strategy = strategy
        self._max_p95_ms = max_p95_ms
        self._console = console
        self._bar = Progress(
            TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"), console=console, transient=True,
        ) if console.is_terminal and not console.quiet else None
        if self._bar is not None:
            self._task = self._bar.add_task("", total=n_trials, completed=counted_trials(study), best=_best(study))

    def __enter__(self) -> TrialProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        spent = counted_trials(study)
        line = trial_line(trial, self._n_trials, self._max_p95_ms, self._strategy, spent)
        self._console.print(line, markup=False, highlight=False)
        if self._bar is not None:
            self._bar.update(self._task, completed=spent, best=_best(study))


def _best(study: optuna.Study) -> str:
    best = best_trial(study)
    if best is None:
        return "no feasible trial yet"
    if OFFERED_RATE_KEY in best.user_attrs:
        return (f"best sustains {best.value:.0f} requests/s, p95 {best.user_attrs['p95_ms']:.2f} ms "
                f"(trial {best.number})")
    return f"best {best.value:.1f} infer/sec, p95 {best.user_attrs['p95_ms']:.2f} ms (trial {best.number})"
