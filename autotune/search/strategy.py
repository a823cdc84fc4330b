"""The search strategy: where each trial's settings come from, as Optuna's samplers say how values are drawn.

A ``Proposer`` looks at the study's trials and proposes the next trial (the sampled values it fixes, and the user
attributes that mark where they came from), or has nothing to propose. A ``Strategy`` asks its proposers in order
and takes the first proposal; when none has one, the trial is the sampler's own: it carries no values, and
Optuna's sampler draws them all. Proposers keep no state of their own: everything they decide on is read back from
the study's storage, so a resumed study and several workers sharing one go on where it stands. Each proposer also
words its own trials for progress lines and reports (``label``).

A new strategy is one small module: a ``Proposer`` subclass, composed into a ``Strategy`` with the others.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from autotune.params import ServerParams
from autotune.records import CONFIG_KEY, counts_or_pending, trial_params
from autotune.search.space import SearchSpace
from autotune.triton.model_config import ModelConfig


@dataclass(frozen=True)
class Context:
    """What a proposer may look at: the study, and the space and model its trials are drawn for."""

    study: optuna.Study
    space: SearchSpace
    base: ModelConfig
    sampled_concurrency: bool  # concurrency is a sampled setting, not swept by each trial
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def proposed_from(self, mark: str) -> set[Any]:
        """The trials that trials marked ``mark`` were proposed from, among those measured, failed for a reason of
        their own, or still queued or running (another worker's included): a proposer proposes once for each."""
        return {t.user_attrs.get(mark) for t in self.trials if counts_or_pending(t)}

    def tried(self, trials: list[FrozenTrial]) -> set[tuple[ServerParams, int | None]]:
        """The settings (and concurrency, where it is sampled) that ``trials`` ran with: where not to go again."""
        return {(trial_params(t), t.params.get("concurrency") if self.sampled_concurrency else None)
                for t in trials if CONFIG_KEY in t.user_attrs}


@dataclass(frozen=True)
class Proposal:
    """The next trial: the sampled values it fixes (``Study.enqueue_trial``) and the user attributes that mark
    which proposer made it. An empty proposal is the sampler's turn."""

    params: dict[str, Any] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)


SAMPLERS_TURN = Proposal()


class Proposer(abc.ABC):
    """One source of trials."""

    @abc.abstractmethod
    def propose(self, context: Context) -> Proposal | None:
        """The next trial this proposer wants, or None when it has nothing to propose now."""

    @staticmethod
    def label(trial: FrozenTrial) -> str | None:
        """Where a trial's settings came from, in words, when this kind of proposer made it."""
        return None


class Strategy:
    """Proposers asked in order; the first proposal wins, and the sampler's turn comes when none has one."""

    def __init__(self, *proposers: Proposer) -> None:
        self.proposers: Sequence[Proposer] = proposers

    def propose(self, context: Context) -> Proposal:
        for proposer in self.proposers:
            proposal = proposer.propose(context)
            if proposal is not None:
                return proposal
        return SAMPLERS_TURN

    def label(self, trial: FrozenTrial) -> list[str]:
        """What each kind of proposer in this strategy says of ``trial``: empty for the sampler's own trials."""
        kinds = dict.fromkeys(type(proposer) for proposer in self.proposers)
        return [text for kind in kinds if (text := kind.label(trial)) is not None]

    def __repr__(self) -> str:
        return f"Strategy({', '.join(map(repr, self.proposers))})"
