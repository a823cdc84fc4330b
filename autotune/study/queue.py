"""Trials of one study handed out to any number of workers, never more than the study's budget.

Every trial starts as a WAITING trial in the study's own queue: whenever none waits and the budget has room, the
search strategy's next proposal is added (the sampler's turn is an empty one); a worker claims one with the
storage's atomic WAITING -> RUNNING switch, and a claim that would exceed the budget goes back to WAITING. A
worker keeps its trial's heartbeat; a trial whose heartbeat stops (its worker was killed) is failed by the next
sweep, and the storage's retry callback queues its parameters again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import optuna
from optuna.storages import BaseStorage, RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from autotune.records import counted, counts_or_pending, planned_params
from autotune.search.strategy import Proposal

POLL_S = 1.0


class TrialQueue:
    """Claims trials of ``study`` (kept in ``storage``) until ``n_trials`` of them count; ``propose`` says what the
    next one should be when none waits."""

    def __init__(self, study: optuna.Study, storage: BaseStorage, n_trials: int, propose: Callable[[], Proposal],
                 poll_s: float = POLL_S) -> None:
        self.study = study
        self.storage = storage
        self.n_trials = n_trials
        self.propose = propose
        self.poll_s = poll_s
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._heartbeat_s = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None

    def claim(self) -> optuna.Trial | None:
        """The next trial to run, or None once the study's budget is spent (waits while others may still fail)."""
        while True:
            if self._heartbeat_s is not None:
                fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            spent = counted(trials)
            if spent >= self.n_trials:
                return None
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if not waiting and spent + running < self.n_trials:
                # One at a time: a worker that stops early leaves none behind, and each proposal sees the last result.
                proposal = self.propose()
                self.study.enqueue_trial(proposal.params, user_attrs=proposal.marks)
            trial = self._claim_within_budget()
            if trial is not None:
                return trial
            if spent + running < self.n_trials:
                continue  # another worker claimed the queued trial first: there is room for the next one
            if self._heartbeat_s is None:
                # Without heartbeats a dead worker's trial stays RUNNING for ever: do not wait on it.
                return None
            time.sleep(self.poll_s)

    def _claim_within_budget(self) -> optuna.Trial | None:
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        # Retries carry their parameters: run them before the sampler's turns.
        for ticket in sorted(waiting, key=lambda t: (not (t.params or t.user_attrs), t.number)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, ticket.number)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    continue
                if self._proposed_twice(ticket):
                    # Two workers that found the queue empty at once proposed the same trial: run it once. Failed
                    # without a reason of its own, the copy counts toward nothing, and the claim starts over.
                    self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                    return self.claim()
                if self._within_budget(ticket.number):
                    return optuna.Trial(self.study, trial_id)
                self.storage.set_trial_state_values(trial_id, TrialState.WAITING)
                return None
        return None

    def _proposed_twice(self, ticket: FrozenTrial) -> bool:
        """Whether an earlier trial that counts or is pending carries the same proposal: its marks and its values."""
        if not ticket.user_attrs:
            return False  # the sampler's turn, which proposes nothing twice
        return any(t.number < ticket.number and counts_or_pending(t) and planned_params(t) == planned_params(ticket)
                   and {key: t.user_attrs.get(key) for key in ticket.user_attrs} == ticket.user_attrs
                   for t in self.study.get_trials(deepcopy=False))

    def _within_budget(self, number: int) -> bool:
        """Whether the trials that count, and the running ones claimed before this one, leave room for it."""
        trials = self.study.get_trials(deepcopy=False)
        ahead = counted(trials) + sum(t.state == TrialState.RUNNING and t.number < number for t in trials)
        return ahead < self.n_trials

    @contextlib.contextmanager
    def heartbeat(self, trial: optuna.Trial) -> Iterator[None]:
        """Keep ``trial`` alive in the storage while it runs, so that other workers do not fail it."""
        if self._heartbeat_s is None:
            yield
            return
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                # A storage that fails (gone, read-only, full) is reported by the trial's own next write; a beat
                # that fails once is tried again at the next, as a database that comes back takes them again.
                with contextlib.suppress(Exception):
                    self.storage.record_heartbeat(trial_id)
                stop.wait(self._heartbeat_s)

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

