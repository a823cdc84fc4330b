"""Fakes of the declared protocols (``Target``, ``Load``), so that the study loop and its strategy run without a
Triton server, and a helper that builds a tuner over any target and load."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna

from autotune.load.loop import LoadSettings
from autotune.load.policy import Load, Meter
from autotune.load.windows import Measurement
from autotune.search import DelayLadder, LocalStep, SearchSpace, Strategy
from autotune.search.space import ConcurrencySearch
from autotune.study.objective import Objective, Target
from autotune.study.tuner import Tuner
from autotune.triton.model_config import ModelConfig, params_of, read_pbtxt

ROOT = Path(__file__).resolve().parent.parent
QUICK = LoadSettings(warmup_s=0.2, window_s=0.3, max_windows=3)
# What a test enqueues runs first; then local steps and the sampler's trials take turns (no baseline, no rules of
# thumb: a test that wants those uses the default strategy).
ENQUEUED_FIRST = Strategy(DelayLadder(), LocalStep())


@dataclass
class FakeTarget:
    """A model that loads whatever it is given: the shipped ``mlp`` by default."""

    original: ModelConfig = field(default_factory=lambda: read_pbtxt(ROOT / "model_repository/mlp/config.pbtxt"))
    loads: int = 0

    def __post_init__(self) -> None:
        self._loaded = params_of(self.original)

    def apply(self, config: ModelConfig) -> bool:
        if params_of(config) == self._loaded:
            return False
        self._loaded = params_of(config)
        self.loads += 1
        return True

    def statistics(self) -> dict[str, float]:
        return dict.fromkeys(("success_count", "execution_count", "queue_ns", "compute_input_ns",
                              "compute_infer_ns", "compute_output_ns"), 0.0)


def reading(concurrency: int, throughput: float, p95_ms: float) -> Measurement:
    """A clean, settled measurement with these figures; no throughput is a point without a single reply."""
    return Measurement(concurrency, throughput, p95_ms / 2, p95_ms, p95_ms, p95_ms, requests=100 if throughput else 0,
                       errors=0, windows=3, stable=bool(throughput))


@dataclass
class ScriptedLoad:
    """Fixed (throughput, p95 ms) figures per concurrency, to pin down where a sweep stops; a point warms up for
    as long as it is given."""

    figures: dict[int, tuple[float, float]]

    def measure(self, concurrency: int, stop_early: object = None, warmup_s: float | None = None,
                enough: object = None) -> Measurement:
        return replace(reading(concurrency, *self.figures[concurrency]), warmup_s=warmup_s or 0.0)


@dataclass
class ReadingsLoad:
    """(throughput, p95 ms) readings handed out in order, one per measured point."""

    readings: list[tuple[float, float]]

    def measure(self, concurrency: int, stop_early: object = None, warmup_s: float | None = None,
                enough: object = None) -> Measurement:
        return replace(reading(concurrency, *self.readings.pop(0)), warmup_s=warmup_s or 0.0)


def make_tuner(target: Target, load: Load, *, max_p95_ms: float = 1000.0, space: SearchSpace | None = None,
               concurrency_search: ConcurrencySearch = "sample", strategy: Strategy = ENQUEUED_FIRST,
               settings: LoadSettings = QUICK) -> Tuner:
    """A tuner of ``target`` measured by ``load``, in an in-memory study."""
    space = space or SearchSpace()
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    meter = Meter(load, max_p95_ms, settings.warmup_s, space.concurrency_levels())
    objective = Objective(target, meter, space, sampled_concurrency=concurrency_search == "sample")
    return Tuner(study, storage, objective, strategy, np.random.default_rng())
