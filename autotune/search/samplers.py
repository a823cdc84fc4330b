"""Optuna's samplers by their short names, with the settings that suit budgets of tens of trials."""

from __future__ import annotations

import importlib.util
from typing import Literal

import optuna

from autotune.errors import AutotuneError

SamplerName = Literal["tpe", "gp", "random"]
# Random trials before a model-based sampler takes over (Optuna's default is 10): budgets here are tens of trials,
# and the baseline, rules of thumb, rungs and steps count among them.
STARTUP_TRIALS = 5


def check_sampler(name: SamplerName) -> None:
    """Fail before any server starts when the sampler's optional dependency is missing."""
    if name != "gp":
        return
    missing = [module for module in ("torch", "scipy") if importlib.util.find_spec(module) is None]
    if missing:
        raise AutotuneError(f"--sampler gp needs {' and '.join(missing)}: pip install 'autotune[gp]'")


def make_sampler(
    name: SamplerName, seed: int | None, startup_trials: int = STARTUP_TRIALS
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler by its short name. TPE and GP learn from the p95 and error constraints that trials record;
    random search ignores them and serves as a yardstick.

    TPE (multivariate, grouped for the conditional batching settings, with a constant liar for parallel workers)
    is the default; the Gaussian-process sampler needs PyTorch and SciPy (the ``gp`` extra).
    """
    check_sampler(name)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed,
                                      n_startup_trials=startup_trials)
