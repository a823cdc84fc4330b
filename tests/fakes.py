"""Fakes of the declared protocols (``Target``, ``Load``), so that the study loop and its strategy run without a
Triton server, and a helper that builds a tuner over any target and load."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna

from autotune.load.loop import LoadSettings
from autotune.load.policy import Load, Meter
from autotune.load.schedule import Schedule
from autotune.load.windows import Measurement
from autotune.params import ServerParams
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

    @property
    def loaded(self) -> ServerParams:
        return self._loaded

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


@dataclass
class QueueingServer:
    """An open loop on a server that completes at most ``capacity`` requests per second, each in ``service_ms``:
    its p95 grows with the queue (``service_ms / (1 - load)``), and past its capacity it falls behind and the
    point is cut short. It completes only the share ``completes`` of the requests due. Its client leaves requests
    ``late_ms`` late at p99, and where it cannot send faster than ``client_limit``, ever later; their latencies,
    counted from the schedule, grow with it. A dynamic batcher of ``batch`` waits up to ``delay_ms`` for a batch
    to fill. Each point measured is kept as (rate, warm-up)."""

    capacity: float
    service_ms: float = 1.0
    client_limit: float = math.inf
    completes: float = 1.0
    late_ms: float = 0.1
    batch: int = 1
    delay_ms: float = 0.0
    points: list[tuple[float, float]] = field(default_factory=list)

    def measure(self, concurrency: int, stop_early: object = None, warmup_s: float | None = None,
                enough: object = None) -> Measurement:
        raise AssertionError("an open loop's study measures no concurrency")

    def measure_rate(self, schedule: Schedule, cap: int, warmup_s: float | None = None, enough: object = None,
                     stop_early: object = None) -> Measurement:
        rate = schedule.offered_rate
        self.points.append((rate, warmup_s or 0.0))
        load = rate / self.capacity
        late_ms = 100.0 if rate > self.client_limit else self.late_ms
        filling_ms = min(self.delay_ms, 1e3 * (self.batch - 1) / rate)
        p95_ms = (self.service_ms / (1 - load) if load < 1 else 1e4) + filling_ms + late_ms
        throughput = min(rate, self.capacity, self.client_limit) * self.completes
        return Measurement(0, throughput, p95_ms / 2, p95_ms, p95_ms, p95_ms, requests=100, errors=0,
                           windows=3, stable=True, cut_short=load >= 1, warmup_s=warmup_s or 0.0,
                           offered_rate=rate, due_rate=rate, sent_p95_ms=p95_ms - late_ms,
                           send_lag_p50_ms=late_ms / 2, send_lag_p99_ms=late_ms)

    @property
    def rates(self) -> list[float]:
        return [round(rate) for rate, _ in self.points]


def make_tuner(target: Target, load: Load, *, max_p95_ms: float = 1000.0, space: SearchSpace | None = None,
               concurrency_search: ConcurrencySearch = "sample", strategy: Strategy = ENQUEUED_FIRST,
               settings: LoadSettings = QUICK, arrivals: Schedule | None = None) -> Tuner:
    """A tuner of ``target`` measured by ``load``, in an in-memory study; open-loop with ``arrivals``."""
    space = space or SearchSpace()
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    meter = Meter(load, max_p95_ms, settings.warmup_s, space.concurrency_levels(), arrivals=arrivals)
    objective = Objective(target, meter, space, sampled_concurrency=concurrency_search == "sample")
    return Tuner(study, storage, objective, strategy, np.random.default_rng())
