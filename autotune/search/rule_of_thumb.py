"""The Triton guide's rule of thumb: dynamic batching up to the model's largest batch, the shortest delay.

The guide tries the dynamic batcher and more instances alone, then together, since their best settings interact
(on a demo model's grid the long delays that lose with one instance win with three): the rule of thumb is tried
with the fewest instances the space allows, and once that has run, with the most.
"""

from __future__ import annotations

from typing import Literal

from optuna.trial import FrozenTrial

from autotune.records import counts_or_pending, counts_toward_total, planned_params
from autotune.search.strategy import Context, Proposal, Proposer

# Marks the rule of thumb's trials, where a delay ladder starts.
RULE_OF_THUMB_KEY = "rule_of_thumb"


def rules_of_thumb(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.user_attrs.get(RULE_OF_THUMB_KEY)]


class RuleOfThumb(Proposer):
    """Proposes the rule of thumb with the ``fewest`` or the ``most`` instances, once, at concurrency
    2 x max_batch_size x instances so that the batcher always has a batch to form. A model that cannot batch, or a
    space without the batcher, has no rule of thumb."""

    def __init__(self, instances: Literal["fewest", "most"] = "fewest") -> None:
        self.instances = instances

    def propose(self, context: Context) -> Proposal | None:
        space, base = context.space, context.base
        sizes = space.batch_sizes(base)
        if base.max_batch_size == 0 or True not in space.dynamic_batching or not sizes:
            return None
        rules = rules_of_thumb(context.trials)
        # The one with the most instances comes after the one with the fewest has run, and not while it still runs.
        ran = any(counts_toward_total(t) for t in rules) and all(t.state.is_finished() for t in rules)
        if self.instances == "most" and not ran:
            return None
        count = space.instance_count.low if self.instances == "fewest" else space.instance_count.high
        if any(planned_params(t).get("instance_count") == count and counts_or_pending(t) for t in rules):
            return None
        return Proposal({
            "instance_count": count, "dynamic_batching": True, "max_batch_size": sizes[-1],
            "max_queue_delay_microseconds": space.max_queue_delay_microseconds.low,
            "preferred_batch_size": space.preferred_batch_size[0],
            "concurrency": space.clamp_concurrency(2 * sizes[-1] * count),
        }, {RULE_OF_THUMB_KEY: True})

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        return "the Triton guide's rule of thumb" if trial.user_attrs.get(RULE_OF_THUMB_KEY) else None

    def __repr__(self) -> str:
        return f"RuleOfThumb({self.instances!r})"
