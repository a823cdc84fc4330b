"""The loop that runs a study's trials on one worker: claim a trial, measure it, tell the study, report it.

What each trial should be comes from the search strategy, asked whenever the study's queue runs empty; how it is
measured is the ``Objective``'s business. The loop owns what lies around them: the budget shared with other
workers, heartbeats, interruptions, this worker's timeout and patience, and the re-measurement at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import TrialFailed
from autotune.interruptions import held, safe_point
from autotune.records import trials_since_best
from autotune.search import DEFAULT_STRATEGY, Context, Proposal, Strategy
from autotune.study.confirm import confirm
from autotune.study.objective import Objective
from autotune.study.queue import TrialQueue

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class Tuner:
    """Runs the trials of one study, proposed by ``strategy``, measured by ``objective``."""

    study: optuna.Study
    storage: BaseStorage
    objective: Objective
    strategy: Strategy = DEFAULT_STRATEGY
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def optimize(self, n_trials: int, callbacks: Sequence[Callback] = (), timeout_s: float | None = None,
                 patience: int | None = None) -> str | None:
        """Run trials until the study holds ``n_trials`` that count: a resumed study tops up, workers share it.

        This worker stops sooner once ``timeout_s`` has passed, or once ``patience`` trials in a row brought no
        better feasible throughput. Returns why it stopped early, or None when the study holds its trials.
        """
        queue = TrialQueue(self.study, self.storage, n_trials, self.propose)
        started = time.monotonic()
        with held():
            while (trial := queue.claim()) is not None:
                with queue.heartbeat(trial):
                    finished = self._tell(trial)
                for callback in callbacks:
                    callback(self.study, finished)
                if timeout_s is not None and time.monotonic() - started >= timeout_s:
                    return f"stopped after {time.monotonic() - started:.0f} s, the --timeout"
                if patience is not None and trials_since_best(self.study) >= patience:
                    return f"stopped: {patience} trials in a row brought no improvement (--patience)"
                safe_point()
        return None

    def propose(self) -> Proposal:
        """The strategy's next trial for this study."""
        objective = self.objective
        return self.strategy.propose(Context(self.study, objective.space, objective.base,
                                             objective.sampled_concurrency, self.rng))

    def confirm(self, rounds: int) -> None:
        """Measure the top feasible trials again and crown the one that holds up (``confirm.confirm``)."""
        objective = self.objective
        confirm(self.study, self.storage, objective.target, objective.meter, rounds)

    def _tell(self, trial: optuna.Trial) -> FrozenTrial:
        """One trial, told to the study however it ends; interruptions are recorded, then passed on."""
        try:
            value = self.objective(trial)
        except optuna.TrialPruned:
            return self.study.tell(trial, state=TrialState.PRUNED)
        except TrialFailed:
            return self.study.tell(trial, state=TrialState.FAIL)
        except BaseException:  # interruptions come at safe points (``held``), never in the middle of a write
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        return self.study.tell(trial, value)
