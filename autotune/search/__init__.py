"""The search: the space of settings, Optuna's samplers, and the strategy that proposes each trial.

The default strategy follows the Triton guide first (the baseline, the rule of thumb with the fewest and with the
most instances, each fitted to the batches its knee could fill within the limit, each one's delay ladder), spreads a
new best that more requests in flight would have served faster over twice the instances (with a ladder of its own
where that reads more), fits each new best's batch to the requests in flight it stands on, and lets the sampler's
trials and local steps take turns; a trial that repeats measured settings is followed by a random untried point.
Random search is the yardstick: the baseline and one rule of thumb, then the sampler alone.
"""

from autotune.search.baseline import Baseline
from autotune.search.explore import EXPLORES_AFTER_KEY, Explore
from autotune.search.fill_batch import FILLED_FROM_KEY, FillBatch
from autotune.search.fitted_batch import FITTED_FROM_KEY, FittedBatch
from autotune.search.ladder import DELAY_RUNG_KEY, DelayLadder
from autotune.search.local_step import STEP_FROM_KEY, LocalStep
from autotune.search.more_instances import SPREAD_FROM_KEY, MoreInstances
from autotune.search.rule_of_thumb import RULE_OF_THUMB_KEY, RuleOfThumb
from autotune.search.samplers import STARTUP_TRIALS, SamplerName, check_sampler, make_sampler
from autotune.search.space import MAX_CONCURRENCY, ConcurrencySearch, IntRange, SearchSpace
from autotune.search.strategy import SAMPLERS_TURN, Context, Proposal, Proposer, Strategy

DEFAULT_STRATEGY = Strategy(Baseline(), RuleOfThumb("fewest"), RuleOfThumb("most"), FittedBatch(), MoreInstances(),
                            DelayLadder(), FillBatch(), LocalStep(), Explore())
RANDOM_STRATEGY = Strategy(Baseline(), RuleOfThumb("fewest"))


def strategy_for(sampler: SamplerName) -> Strategy:
    """The strategy that goes with a sampler: random search is the yardstick, with no ladder and no steps."""
    return RANDOM_STRATEGY if sampler == "random" else DEFAULT_STRATEGY


__all__ = [
    "DEFAULT_STRATEGY",
    "DELAY_RUNG_KEY",
    "EXPLORES_AFTER_KEY",
    "FILLED_FROM_KEY",
    "FITTED_FROM_KEY",
    "MAX_CONCURRENCY",
    "RANDOM_STRATEGY",
    "RULE_OF_THUMB_KEY",
    "SAMPLERS_TURN",
    "SPREAD_FROM_KEY",
    "STARTUP_TRIALS",
    "STEP_FROM_KEY",
    "Baseline",
    "ConcurrencySearch",
    "Context",
    "DelayLadder",
    "Explore",
    "FillBatch",
    "FittedBatch",
    "IntRange",
    "LocalStep",
    "MoreInstances",
    "Proposal",
    "Proposer",
    "RuleOfThumb",
    "SamplerName",
    "SearchSpace",
    "Strategy",
    "check_sampler",
    "make_sampler",
    "strategy_for",
]
