"""The rule of thumb fitted to the limit: its batcher with batches no larger than the limit lets the queue fill.

The rule of thumb batches up to the model's largest batch. Where the p95 limit binds before that many requests are
in flight (a GPU-like model whose batch of 32 takes 10 ms, under a 10 ms limit), the batcher never forms a full
batch: every batch waits out its delay, so the rungs of its delay ladder only add latency. The rule of thumb's sweep
says how many requests are in flight within the limit (its knee); the fitted rule of thumb batches up to the power of
two nearest that. Its delay ladder climbs before the one it fits, which still climbs: on a CPU model's grid batches
of 32 won with 3 instances under a 10 ms limit, where the rule of thumb's knee fitted them to 16.
"""

from __future__ import annotations

import math

from optuna.trial import FrozenTrial

from autotune.records import CONCURRENCY_KEY
from autotune.search.rule_of_thumb import rules_of_thumb
from autotune.search.strategy import Context, Proposal, Proposer

# Marks a fitted rule of thumb with the rule of thumb it fits.
FITTED_FROM_KEY = "fitted_from"


class FittedBatch(Proposer):
    """Proposes, for each measured rule of thumb whose knee holds fewer requests in flight than its batch, the same
    rule of thumb with the batch size nearest its knee (at least 2: a batch of one is no batch)."""

    def propose(self, context: Context) -> Proposal | None:
        sizes, trials = context.space.batch_sizes(context.base), context.trials
        done = context.proposed_from(FITTED_FROM_KEY)
        for rule in rules_of_thumb(trials):
            if rule.number in done or not rule.user_attrs.get(CONCURRENCY_KEY) or "max_batch_size" not in rule.params:
                continue  # not measured yet, an open loop's (no requests-in-flight knee), or nothing to batch
            knee = rule.user_attrs[CONCURRENCY_KEY]
            batch = min(sizes, key=lambda size: abs(math.log2(size / knee)))
            if 2 <= batch < rule.params["max_batch_size"]:
                concurrency = context.space.clamp_concurrency(2 * batch * rule.params["instance_count"])
                return Proposal({**rule.params, "max_batch_size": batch, "concurrency": concurrency},
                                {FITTED_FROM_KEY: rule.number})
        return None

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        if FITTED_FROM_KEY not in trial.user_attrs:
            return None
        return f"trial {trial.user_attrs[FITTED_FROM_KEY]}'s rule of thumb with batches its knee could fill"

    def __repr__(self) -> str:
        return "FittedBatch()"
