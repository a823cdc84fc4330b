"""How a trial is measured, decided in one place: warm-up or settle, one point or a concurrency sweep, when a
window condemns a config, and a second try for a freshly loaded model that gave no reply at all.

``Meter`` drives anything that satisfies ``Load`` (autotune's ``LoadGenerator``, or a fake in tests and in the
replay benchmark). It remembers one thing between calls: whether the loaded config has served load since it was
loaded, so that a config measured again without a reload gets a short settle instead of a full warm-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from autotune.load.windows import Measurement

# Warm-up of a point on a config the server already serves warm (no reload): enough for the new load to settle.
SETTLE_S = 0.1
# A sweep stops once doubling the requests in flight gains less than this: the server is saturated.
SATURATION_GAIN = 0.05


class Load(Protocol):
    """Measures one point of the loaded config: ``LoadGenerator`` is one."""

    def measure(self, concurrency: int, stop_early: Callable[[Measurement], bool] | None = None,
                warmup_s: float | None = None) -> Measurement: ...


@dataclass(frozen=True)
class SweepPoint:
    """One concurrency of a sweep, as a trial records it."""

    concurrency: int
    throughput: float
    p95_ms: float

    def as_record(self) -> list[float]:
        return [self.concurrency, round(self.throughput, 2), round(self.p95_ms, 3)]


@dataclass(frozen=True)
class Reading:
    """A trial's measurement: the point that stands for it, the sweep's points (none when one concurrency was
    measured), and the seconds spent warming up for it."""

    measurement: Measurement
    sweep: tuple[SweepPoint, ...]
    warmup_s: float


@dataclass
class Meter:
    """Measures trials of one model under a p95 limit.

    ``levels`` are the concurrencies a sweep may visit, lowest first; ``warmup_s`` is the full warm-up that a config
    gets before its first point after a reload.
    """

    load: Load
    max_p95_ms: float
    warmup_s: float
    levels: Sequence[int]
    _warm: bool = False  # the loaded config has served load since it was loaded

    def trial(self, reloaded: bool, fill: int, concurrency: int | None = None) -> Reading:
        """Measure the loaded config at ``concurrency``, or sweep it when None (``fill``: its batcher's fill level).

        A freshly loaded model's first replies can stall past the warm-up on a busy machine (another server loading
        beside it): a measurement with not a single reply nor error is taken once more, fully warmed up, which tells
        a stall from a model that never answers.
        """
        reading = self._measure(self._warmup(reloaded), fill, concurrency)
        if reading.measurement.requests == reading.measurement.errors == 0:
            again = self._measure(self.warmup_s, fill, concurrency)
            reading = replace(again, warmup_s=reading.warmup_s + again.warmup_s)
        return reading

    def again(self, concurrency: int, reloaded: bool) -> Measurement:
        """One more full measurement of the loaded config, never cut short: a re-measurement of a winner."""
        return self.load.measure(concurrency, warmup_s=self._warmup(reloaded))

    def hopeless(self, window: Measurement) -> bool:
        """A window with errors, or whose median request is over the limit (so its p95 is too, however noisy the
        tail), condemns the config: measuring on would waste the budget.

        A window without a single reply condemns nothing: a freshly loaded model's first replies can stall past the
        warm-up (lazy initialisation, a busy machine), and a point whose windows all stay empty fails anyway.
        """
        return window.errors > 0 or (window.requests > 0 and window.p50_ms > self.max_p95_ms)

    def _warmup(self, reloaded: bool) -> float:
        """The next point's warm-up: full on a config that has not served load since it was loaded, else a settle.

        A point is measured right after this, which leaves the config warm.
        """
        warm = self._warm and not reloaded
        self._warm = True
        return SETTLE_S if warm else self.warmup_s

    def _measure(self, warmup_s: float, fill: int, concurrency: int | None) -> Reading:
        if concurrency is not None:
            return Reading(self.load.measure(concurrency, self.hopeless, warmup_s), (), warmup_s)
        return self._sweep(warmup_s, fill)

    def _sweep(self, warmup_s: float, fill: int) -> Reading:
        """Raise the concurrency through ``levels`` on the loaded config while it holds the limit and still gains
        throughput. The best feasible point stands for the trial (the first, when none is); ``warmup_s`` goes before
        the first point and a settle before each other.

        Below ``fill`` requests in flight a dynamic batcher cannot fill a batch and waits out its delay, so latency
        can fall and throughput jump once concurrency reaches it: the sweep does not stop before (errors aside).
        Neither a reload nor a full warm-up is needed between points, so one trial learns a config's useful range.
        """
        first: Measurement | None = None
        best: Measurement | None = None
        points: list[SweepPoint] = []
        spent = 0.0
        for concurrency in self.levels:
            point_warmup_s = SETTLE_S if first else warmup_s
            spent += point_warmup_s
            measured = self.load.measure(concurrency, self.hopeless, point_warmup_s)
            points.append(SweepPoint(concurrency, measured.throughput, measured.p95_ms))
            first = first or measured
            feasible = not (measured.cut_short or measured.errors or measured.p95_ms > self.max_p95_ms)
            gained = best is None or measured.throughput >= best.throughput * (1 + SATURATION_GAIN)
            if feasible and (best is None or measured.throughput > best.throughput):
                best = measured
            if measured.errors or (concurrency >= fill and not (feasible and gained)):
                break
        assert first is not None, "a search space always has a concurrency"
        return Reading(best or first, tuple(points), spent)
