"""The best config on twice the instances, where its sweep says that latency, not work, held it back.

A config whose throughput still rose clearly with more requests in flight, past the limit, was not out of capacity:
its requests waited in line for an instance (or a batch that instance was still running) that could have been
served beside it. That is what more model instances are for. The ladders and steps change one setting at a time, and
on a GPU-like model (batches queue for one device, the CPU work around them is small) the best config known needs
two at once: twice the instances, each with the batch its share of twice the requests fills.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial

from autotune.records import CONCURRENCY_KEY, SWEEP_KEY, best_trial, trial_params
from autotune.search.fill_batch import filling
from autotune.search.strategy import Context, Proposal, Proposer

# Marks a trial with the best trial whose config it ran on twice the instances.
SPREAD_FROM_KEY = "spread_from"
# More requests in flight must have read this much more throughput than where the best stands: more than the noise
# between two points of one sweep. In the 60 live studies of 2026-12-07 before it, 52 new bests in the 15 of
# `gpu_like` read so, against 15 in the 45 of the CPU models (at a fifth more, `gpu_like` missed the spread it needed).
GAIN = 1.1


class MoreInstances(Proposer):
    """Proposes, once for each best feasible trial whose sweep read at least ``GAIN`` times its throughput with more
    requests in flight (over the limit there), its config with twice the instances, each keeping its share of the
    requests in flight (a batcher waiting to fill the batch nearest that share), when the space allows that many
    instances and no trial has tried it. Its sweep starts where the best stands and doubles from there."""

    def propose(self, context: Context) -> Proposal | None:
        best = best_trial(context.study)
        if best is None or not best.user_attrs.get(CONCURRENCY_KEY) or context.sampled_concurrency:
            return None  # nothing feasible yet, an open loop's trial, or no sweep to read
        if best.number in context.proposed_from(SPREAD_FROM_KEY):
            return None
        concurrency = best.user_attrs[CONCURRENCY_KEY]
        more = [throughput for level, throughput, _ in best.user_attrs.get(SWEEP_KEY, []) if level > concurrency]
        params, space = trial_params(best), context.space
        instances = 2 * params.instance_count
        if not more or max(more) < GAIN * best.value or instances > space.instance_count.high:
            return None
        point = space.point(params, context.base)
        if point is None:
            return None
        if point.get("dynamic_batching"):
            point = filling(point, space.batch_sizes(context.base), concurrency / params.instance_count)
            if point is None:
                return None
        spread = {**point, "instance_count": instances}
        if (space.resolve(spread, context.base), None) in context.tried(context.trials):
            return None  # tried already (concurrency is swept here, not part of the settings)
        return Proposal(spread, {SPREAD_FROM_KEY: best.number})

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        if SPREAD_FROM_KEY not in trial.user_attrs:
            return None
        return f"trial {trial.user_attrs[SPREAD_FROM_KEY]}'s config on twice the instances"

    def __repr__(self) -> str:
        return "MoreInstances()"
