"""The best config with the batch its requests in flight fill.

A closed loop of c requests on n instances hands each instance about c / n at a time. A batcher with a delay that
waits for more than that waits the delay out on every batch; one that takes fewer splits them into batches that
queue behind each other. The sweep finds the requests in flight where a config does best, but the batch size was
chosen before that: the ladders climb the rule of thumb's batches and the ones its knee fitted under its shortest
delay, and on a demo model the best config known (batches of 16 at 16 in flight, a long delay) was a size none of
them tried.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import FrozenTrial

from autotune.records import CONCURRENCY_KEY, best_trial, trial_params
from autotune.search.strategy import Context, Proposal, Proposer

# Marks a trial with the best trial whose batch it fitted to that trial's requests in flight.
FILLED_FROM_KEY = "filled_from"


def filling(point: dict[str, Any], sizes: list[int], share: float) -> dict[str, Any] | None:
    """``point`` (a batcher's, as ``SearchSpace.point`` gives it) with the batch its batcher waits to fill (its
    preferred batch size) nearest ``share`` requests; None where that is a batch of one (no batch) or the space
    has no such size."""
    batch = min(sizes, key=lambda size: abs(math.log2(size / share)))
    largest = batch * (2 if point["preferred_batch_size"] == "half" else 1)
    if batch < 2 or largest not in sizes:
        return None
    return {**point, "max_batch_size": largest}


class FillBatch(Proposer):
    """Proposes, once for each best feasible trial with a batcher, its config with the batch it waits to fill (its
    preferred batch size) nearest the requests in flight each instance gets where it stands (at least 2), when that
    is another size and untried."""

    def propose(self, context: Context) -> Proposal | None:
        best = best_trial(context.study)
        if best is None or not best.user_attrs.get(CONCURRENCY_KEY):
            return None  # nothing feasible yet, or an open loop's trial (no requests in flight to fill)
        params = trial_params(best)
        if not params.dynamic_batching or best.number in context.proposed_from(FILLED_FROM_KEY):
            return None
        concurrency = best.user_attrs[CONCURRENCY_KEY]
        point = context.space.point(params, context.base, concurrency)
        if point is None:
            return None
        filled = filling(point, context.space.batch_sizes(context.base), concurrency / params.instance_count)
        if filled is None or filled["max_batch_size"] == point["max_batch_size"]:
            return None  # no batch fits that share, or its batches fill already
        filled["concurrency"] = context.space.clamp_concurrency(concurrency)
        tried = context.tried(context.trials)
        if (context.space.resolve(filled, context.base), concurrency if context.sampled_concurrency else None) in tried:
            return None
        return Proposal(filled, {FILLED_FROM_KEY: best.number})

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        if FILLED_FROM_KEY not in trial.user_attrs:
            return None
        return f"trial {trial.user_attrs[FILLED_FROM_KEY]}'s config with the batch its requests in flight fill"

    def __repr__(self) -> str:
        return "FillBatch()"
