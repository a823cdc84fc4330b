"""A look somewhere new after a repeat: once the sampler proposes settings that a trial already measured, the next
trial is a random point of the space that no trial has tried.

TPE narrows down on the few feasible configs it has seen, and where most of a study's trials broke the limit it
can propose the same two or three again and again: a repeat costs nothing but tells the sampler nothing either.
Local steps go first (``LocalStep``); when the best config's neighbours have all been tried, this proposer spends
the turn on exploration. The point is drawn by Optuna's ``RandomSampler`` through the space's own ``suggest``, so it
follows the same distributions and conditions as the sampler's trials.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from autotune.records import SAME_AS_KEY
from autotune.search.strategy import Context, Proposal, Proposer

# Marks an exploring trial with the repeat it followed.
EXPLORES_AFTER_KEY = "explores_after"
# Random draws before giving up on finding an untried point (a small space may be nearly all tried).
DRAWS = 32


class Explore(Proposer):
    """Proposes a random untried point right after a trial that repeated measured settings."""

    def propose(self, context: Context) -> Proposal | None:
        trials = context.trials
        finished = [t for t in trials if t.state.is_finished()]
        if not finished or SAME_AS_KEY not in finished[-1].user_attrs:
            return None
        space, base, sampled = context.space, context.base, context.sampled_concurrency
        tried = context.tried(trials)
        sampler = optuna.samplers.RandomSampler(seed=int(context.rng.integers(2**31)))
        scratch = optuna.create_study(sampler=sampler)
        for _ in range(DRAWS):
            trial = scratch.ask()
            params = space.suggest(trial, base)
            concurrency = space.suggest_concurrency(trial) if sampled else None
            if (params, concurrency) not in tried:
                return Proposal(trial.params, {EXPLORES_AFTER_KEY: finished[-1].number})
        return None

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        after = trial.user_attrs.get(EXPLORES_AFTER_KEY)
        return None if after is None else f"a random untried point, after trial {after} repeated measured settings"

    def __repr__(self) -> str:
        return "Explore()"
