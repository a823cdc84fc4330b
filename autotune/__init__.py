"""autotune: a Bayesian auto-tuner for Triton Inference Server model configurations.

The public API, for scripts and benchmarks. Names are imported on first use, so that ``import autotune.records``
(what reports need) does not load gRPC, the load loop and the server with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AutotuneError": "autotune.errors",
    "TrialFailed": "autotune.errors",
    "ServerParams": "autotune.params",
    "StudySettings": "autotune.records",
    "best_trial": "autotune.records",
    "is_feasible": "autotune.records",
    "trial_params": "autotune.records",
    "ModelServer": "autotune.triton.server",
    "EmbeddedServer": "autotune.triton.embedded",
    "ModelConfig": "autotune.triton.model_config",
    "apply": "autotune.triton.model_config",
    "params_of": "autotune.triton.model_config",
    "read_pbtxt": "autotune.triton.model_config",
    "InputSpec": "autotune.load.inputs",
    "LoadGenerator": "autotune.load.loop",
    "LoadSettings": "autotune.load.loop",
    "Measurement": "autotune.load.windows",
    "Load": "autotune.load.policy",
    "Meter": "autotune.load.policy",
    "SearchSpace": "autotune.search",
    "IntRange": "autotune.search",
    "SamplerName": "autotune.search",
    "ConcurrencySearch": "autotune.search",
    "STARTUP_TRIALS": "autotune.search",
    "make_sampler": "autotune.search",
    "check_sampler": "autotune.search",
    "Context": "autotune.search",
    "Proposal": "autotune.search",
    "Proposer": "autotune.search",
    "Strategy": "autotune.search",
    "Baseline": "autotune.search",
    "RuleOfThumb": "autotune.search",
    "DelayLadder": "autotune.search",
    "LocalStep": "autotune.search",
    "DEFAULT_STRATEGY": "autotune.search",
    "RANDOM_STRATEGY": "autotune.search",
    "Objective": "autotune.study.objective",
    "Target": "autotune.study.objective",
    "Tuner": "autotune.study.tuner",
    "Budget": "autotune.study.session",
    "Search": "autotune.study.session",
    "tune": "autotune.study.session",
    "open_study": "autotune.study.open",
    "load_study": "autotune.study.open",
}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autotune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
