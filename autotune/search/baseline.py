"""The baseline: the model exactly as configured, the study's first trial and the yardstick of its gain."""

from __future__ import annotations

from optuna.trial import FrozenTrial

from autotune.records import BASELINE_KEY, counts_or_pending
from autotune.search.strategy import Context, Proposal, Proposer
from autotune.triton.model_config import params_of


class Baseline(Proposer):
    """Proposes the baseline until one is measured or on its way, at the Triton guide's rule-of-thumb concurrency
    2 x batch x instances (it is swept like any other trial unless concurrency is sampled).

    A baseline cut short (Ctrl-C, a worker that died) does not count, so it is proposed again."""

    def propose(self, context: Context) -> Proposal | None:
        if any(t.user_attrs.get(BASELINE_KEY) and counts_or_pending(t) for t in context.trials):
            return None
        params = params_of(context.base)
        batch = params.max_batch_size if params.dynamic_batching else 1
        concurrency = context.space.clamp_concurrency(2 * batch * params.instance_count)
        return Proposal({"concurrency": concurrency}, {BASELINE_KEY: True})

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        return "the baseline (the model as configured)" if trial.user_attrs.get(BASELINE_KEY) else None

    def __repr__(self) -> str:
        return "Baseline()"
