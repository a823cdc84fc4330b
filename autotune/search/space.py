"""The search space: which server settings and concurrencies a study may try, read from ``studies/*.yaml``.

Only valid combinations are ever produced: batch sizes are powers of two up to the model's own limit,
preferred batch sizes never exceed the sampled ``max_batch_size``, and a model that cannot batch is never
given a dynamic batcher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from optuna.trial import FixedTrial

from autotune.errors import AutotuneError
from autotune.params import ServerParams
from autotune.triton.model_config import ModelConfig

# "max" forms batches as large as max_batch_size (Triton's own default when none is given);
# "half" dispatches as soon as half a batch is queued, trading batch size for latency.
PREFERRED_CHOICES = ("max", "half")
# A local step moves the batcher delay by 1 / DELAY_STEPS of its log range (x4.5 with the default bounds).
DELAY_STEPS = 4
# One client process keeps each request in flight as a coroutine: a bound far past any server's useful
# concurrency, that still catches a typo of a few zeros before it fills the client's memory.
MAX_CONCURRENCY = 65_536
# "sample": concurrency is one more sampled setting; "sweep": each trial raises it on its config (no reloads).
ConcurrencySearch = Literal["sample", "sweep"]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of each tuned setting; the defaults suit a model on a small or mid-size server."""

    model: str | None = None
    dynamic_batching: tuple[bool, ...] = (True, False)
    max_queue_delay_microseconds: IntRange = IntRange(100, 20_000)
    max_batch_size: IntRange | None = None
    preferred_batch_size: tuple[str, ...] = PREFERRED_CHOICES
    instance_count: IntRange = IntRange(1, 4)
    concurrency: IntRange = IntRange(1, 64)
    source: str = field(default="built-in defaults", compare=False)

    def __post_init__(self) -> None:
        if self.max_batch_size is not None and not self.batch_sizes(ModelConfig()):
            raise ValueError(f"max_batch_size: {self.max_batch_size.low}..{self.max_batch_size.high} "
                             "holds no power of two")

    @classmethod
    def from_yaml(cls, path: Path) -> SearchSpace:
        try:
            document = yaml.safe_load(Path(path).read_text())
        except OSError as error:
            raise AutotuneError(f"cannot read search space {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise AutotuneError(f"{path}: malformed YAML{where}: {getattr(error, 'problem', error)}") from None
        try:
            return cls.from_dict(document or {}, source=str(path))
        except (TypeError, ValueError) as error:
            raise AutotuneError(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, document: dict[str, Any], source: str = "a dict") -> SearchSpace:
        if not isinstance(document, dict):
            raise ValueError("a search space is a mapping of setting names to choices or ranges")
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(document) - known)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {"source": source}
        if "model" in document:
            values["model"] = str(document["model"])
        if "dynamic_batching" in document:
            values["dynamic_batching"] = _choices("dynamic_batching", document["dynamic_batching"], (True, False))
        if "preferred_batch_size" in document:
            values["preferred_batch_size"] = _choices(
                "preferred_batch_size", document["preferred_batch_size"], PREFERRED_CHOICES)
        for name, low_floor in (("max_queue_delay_microseconds", 2), ("instance_count", 1),
                                ("concurrency", 1), ("max_batch_size", 1)):
            if name in document:
                values[name] = _range(name, document[name], default=getattr(cls, name, None), low_floor=low_floor)
        if "concurrency" in values and values["concurrency"].high > MAX_CONCURRENCY:
            raise ValueError(f"concurrency: high is at most {MAX_CONCURRENCY} requests in flight, got "
                             f"{values['concurrency'].high}")
        return cls(**values)

    def batch_sizes(self, base: ModelConfig) -> list[int]:
        """Powers of two from 1 up to the model's own ``max_batch_size`` (or the space's bound)."""
        low, high = (1, base.max_batch_size) if self.max_batch_size is None else (
            self.max_batch_size.low, self.max_batch_size.high)
        return [1 << k for k in range(high.bit_length()) if low <= 1 << k <= high]

    def suggest(self, trial: optuna.Trial, base: ModelConfig) -> ServerParams:
        """Ask the trial for one valid set of server settings for ``base``."""
        instances = trial.suggest_int("instance_count", self.instance_count.low, self.instance_count.high)
        can_batch = base.max_batch_size > 0
        if not can_batch or not trial.suggest_categorical("dynamic_batching", list(self.dynamic_batching)):
            return ServerParams(dynamic_batching=False, max_batch_size=base.max_batch_size, instance_count=instances)
        max_batch = int(trial.suggest_categorical("max_batch_size", self.batch_sizes(base)))
        delay_range = self.max_queue_delay_microseconds
        # Log scale cannot hold 0: values in [low/2, low) stand for "no delay", just below the smallest delay.
        delay = trial.suggest_int("max_queue_delay_microseconds", delay_range.low // 2, delay_range.high, log=True)
        preferred = trial.suggest_categorical("preferred_batch_size", list(self.preferred_batch_size))
        return ServerParams(
            dynamic_batching=True,
            max_batch_size=max_batch,
            max_queue_delay_microseconds=delay if delay >= delay_range.low else 0,
            preferred_batch_size=_preferred(preferred, max_batch),
            instance_count=instances,
        )

    def resolve(self, point: dict[str, Any], base: ModelConfig) -> ServerParams:
        """The server settings that sampled values stand for, as ``suggest`` would make them."""
        return self.suggest(FixedTrial(point), base)

    def suggest_concurrency(self, trial: optuna.Trial) -> int:
        return trial.suggest_int("concurrency", self.concurrency.low, self.concurrency.high, log=True)

    def concurrency_levels(self) -> list[int]:
        """The powers of two within the concurrency range, and its bounds: the steps of a concurrency sweep."""
        low, high = self.concurrency.low, self.concurrency.high
        return sorted({low, high} | {1 << k for k in range(high.bit_length()) if low <= 1 << k <= high})

    def clamp_concurrency(self, concurrency: int) -> int:
        return max(self.concurrency.low, min(self.concurrency.high, concurrency))

    def point(self, params: ServerParams, base: ModelConfig, concurrency: int | None = None) -> dict[str, Any] | None:
        """The sampled values that give ``params`` (snapped into the space: the baseline may lie outside it), for
        ``Study.enqueue_trial``; None where the space cannot hold them (batching in a space without it, or back)."""
        can_batch = base.max_batch_size > 0
        if can_batch and params.dynamic_batching not in self.dynamic_batching:
            return None
        point: dict[str, Any] = {"instance_count": min(max(params.instance_count, self.instance_count.low),
                                                       self.instance_count.high)}
        if concurrency is not None:
            point["concurrency"] = self.clamp_concurrency(concurrency)
        if not can_batch:
            return point
        point["dynamic_batching"] = params.dynamic_batching
        if not params.dynamic_batching:
            return point
        sizes = self.batch_sizes(base)
        batch = min(sizes, key=lambda size: abs(math.log2(size / max(params.max_batch_size, 1))))
        wanted = "half" if batch > 1 and params.preferred_batch_size == (batch // 2,) else "max"
        preferred = wanted if wanted in self.preferred_batch_size else self.preferred_batch_size[0]
        delays = self.max_queue_delay_microseconds
        delay = min(max(params.max_queue_delay_microseconds, delays.low // 2), delays.high)
        return {**point, "max_batch_size": batch, "max_queue_delay_microseconds": delay,
                "preferred_batch_size": preferred}

    def delay_steps(self, delay: int) -> tuple[int, int]:
        """The batcher delays one step (1 / ``DELAY_STEPS`` of the sampled log range) longer and shorter than
        ``delay``, within that range: at its ends a step stays where it is."""
        delays = self.max_queue_delay_microseconds
        low = delays.low // 2
        factor = (delays.high / low) ** (1 / DELAY_STEPS)
        return min(round(delay * factor), delays.high), max(round(delay / factor), low)

    def neighbours(self, point: dict[str, Any], base: ModelConfig) -> list[dict[str, Any]]:
        """The points one step from ``point`` (as ``point`` returns it), each moving one setting: an instance more
        or fewer, the next batch size up or down, a batcher delay 1 / ``DELAY_STEPS`` of its log range longer or
        shorter, the other preferred batch size, and twice or half the concurrency where it is sampled."""
        steps: list[dict[str, Any]] = []
        for count in (point["instance_count"] + 1, point["instance_count"] - 1):
            if self.instance_count.low <= count <= self.instance_count.high:
                steps.append({**point, "instance_count": count})
        if "concurrency" in point:
            steps += [{**point, "concurrency": c} for c in (self.clamp_concurrency(point["concurrency"] * 2),
                                                            self.clamp_concurrency(point["concurrency"] // 2))
                      if c != point["concurrency"]]
        if not point.get("dynamic_batching"):
            return steps
        sizes = self.batch_sizes(base)
        index = sizes.index(point["max_batch_size"])
        steps += [{**point, "max_batch_size": sizes[i]} for i in (index + 1, index - 1) if 0 <= i < len(sizes)]
        delay = point["max_queue_delay_microseconds"]
        steps += [{**point, "max_queue_delay_microseconds": moved} for moved in self.delay_steps(delay)
                  if moved != delay]
        steps += [{**point, "preferred_batch_size": choice} for choice in self.preferred_batch_size
                  if choice != point["preferred_batch_size"]]
        return steps


def _preferred(choice: str, max_batch: int) -> tuple[int, ...]:
    return (max(1, max_batch // 2),) if choice == "half" else (max_batch,)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _choices(name: str, value: Any, allowed: tuple[Any, ...]) -> tuple[Any, ...]:
    choices = _as_list(value)
    bad = [c for c in choices if c not in allowed or isinstance(c, bool) != isinstance(allowed[0], bool)]
    if not choices or bad:
        raise ValueError(f"{name}: choose from {', '.join(map(str, allowed))}, got {value!r}")
    return tuple(dict.fromkeys(choices))


def _range(name: str, value: Any, default: IntRange | None, low_floor: int) -> IntRange:
    if not isinstance(value, dict) or set(value) - {"low", "high"}:
        raise ValueError(f"{name}: expected a mapping with low and/or high, got {value!r}")
    low = value.get("low", default.low if default else low_floor)
    high = value.get("high", default.high if default else None)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"{name}: low and high must be whole numbers, got {value!r}")
    if not low_floor <= low <= high:
        raise ValueError(f"{name}: need {low_floor} <= low <= high, got low={low} high={high}")
    return IntRange(low, high)
