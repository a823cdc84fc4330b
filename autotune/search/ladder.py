"""The Triton guide's delay ladder: "try increasing delay values until the latency budget is exceeded".

Each rule of thumb starts a ladder (a fitted one, ``FittedBatch``, too, before the one it fits), and so does a best
config spread over twice the instances (``MoreInstances``) that read more than the config it spread from: its delay
is the one that config was found with. A rung is the ladder's last rung with the batcher delay one step longer
(``SearchSpace.delay_steps``). Throughput need not rise or fall steadily with the delay (on a demo model's grid a
short delay read less than no delay and than a longer one), so a ladder walks through a dip that would end a climb
by local steps, and tries the long delays that TPE seldom reaches in a budget of tens of trials.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial

from autotune.records import CANNOT_WIN_KEY, counts_toward_total, is_feasible
from autotune.search.fitted_batch import FITTED_FROM_KEY
from autotune.search.more_instances import SPREAD_FROM_KEY
from autotune.search.rule_of_thumb import RULE_OF_THUMB_KEY
from autotune.search.space import SearchSpace
from autotune.search.strategy import Context, Proposal, Proposer

# Marks a rung: a rule of thumb with its batcher delay this many steps longer.
DELAY_RUNG_KEY = "delay_rung"
# A ladder climbs while each rung reads at least this share of its best rung: a clearly worse reading ends it, one
# within the machine's noise does not (in the replay 0.6 did about as well at low noise; 0.9 stopped on noise).
RUNG_KEEPS = 0.75


class DelayLadder(Proposer):
    """Proposes the next rung of the first ladder, by instance count and batch size, that still climbs.

    A ladder ends at a rung that breaks the limit or reads under ``RUNG_KEEPS`` of its best rung, or at the space's
    longest delay; a rung that could not win where the study's best peaked ends nothing, unless its first window
    already condemned it. While any rung is still out, nothing is proposed: the next rung depends on it."""

    def propose(self, context: Context) -> Proposal | None:
        trials = context.trials
        rungs = [t for t in trials if t.user_attrs.get(RULE_OF_THUMB_KEY) or FITTED_FROM_KEY in t.user_attrs
                 or DELAY_RUNG_KEY in t.user_attrs or _beat_its_origin(t, trials)]
        if not all(t.state.is_finished() for t in rungs):
            return None
        ladders: dict[tuple[int, int], list[FrozenTrial]] = {}
        for rung in rungs:
            if counts_toward_total(rung) and "max_batch_size" in rung.params:
                ladders.setdefault((rung.params["instance_count"], rung.params["max_batch_size"]), []).append(rung)
        for _, ladder in sorted(ladders.items()):
            if (params := _next_rung(ladder, context.space)) is not None:
                return Proposal(params, {DELAY_RUNG_KEY: ladder[-1].user_attrs.get(DELAY_RUNG_KEY, 0) + 1})
        return None

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        if DELAY_RUNG_KEY not in trial.user_attrs:
            return None
        return f"the rule of thumb with a longer delay (rung {trial.user_attrs[DELAY_RUNG_KEY]})"

    def __repr__(self) -> str:
        return "DelayLadder()"


def _beat_its_origin(trial: FrozenTrial, trials: list[FrozenTrial]) -> bool:
    """Whether ``trial`` spread a best config over twice the instances and read more than that config: a new family
    of configs worth its own ladder (one over the limit ends it at once, as any rung). One that read less (live,
    ``gpu_like``: the rule of thumb's short delay on 2 instances in batches of 4, which cap the device at 1333
    infer/s) would spend its rungs below where the one it spread from already stands."""
    if SPREAD_FROM_KEY not in trial.user_attrs or trial.value is None:
        return False
    return trial.value > trials[trial.user_attrs[SPREAD_FROM_KEY]].value


def _next_rung(ladder: list[FrozenTrial], space: SearchSpace) -> dict[str, Any] | None:
    """The sampled values of a ladder's next rung, or None where the ladder has ended.

    A rung cut short because it could not win where the study's best peaked (its p95 over the limit there, its
    median request within it) says nothing of its own ladder's best, so the ladder climbs on: long delays can lose
    with few instances and win with more (live, `mlp`: batches of 8 read p95 12.1 ms at 8 in flight, their next
    rung was a new best and their third the winner). A rung whose median request already broke the limit
    (condemned after a window, ``Meter.hopeless``) ends its ladder: a longer delay only adds waiting where it starts
    (live, 12 studies whose ladders climbed past such rungs spent 43 trials there and found no new best)."""
    last = ladder[-1]
    if not last.user_attrs.get(CANNOT_WIN_KEY) and (
            not is_feasible(last) or last.value < RUNG_KEEPS * max(t.value for t in ladder if is_feasible(t))):
        return None
    delay = last.params["max_queue_delay_microseconds"]
    longer, _ = space.delay_steps(delay)
    return None if longer == delay else {**last.params, "max_queue_delay_microseconds": longer}
