"""How a trial is measured, decided in one place: warm-up or settle, one point, a concurrency sweep or an open
loop's rate sweep (``rate_sweep``), when a window condemns a config, when a point's figures are enough for the
study, when a trial cannot win, and a second try for a freshly loaded model that gave no reply at all.

``Meter`` drives anything that satisfies ``Load`` (autotune's ``LoadGenerator``, or a fake in tests and in the
replay benchmark). It remembers one thing between calls: whether the loaded config has served load since it was
loaded, so that a config measured again without a reload gets a short settle instead of a full warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from autotune.load.rate_sweep import FIRST_RATE, RateSweep
from autotune.load.schedule import Schedule
from autotune.load.windows import MIN_WINDOWS, Measurement

# Warm-up of a point on a config the server already serves warm (no reload): enough for the new load to settle.
SETTLE_S = 0.1
# A sweep stops once doubling the requests in flight gains less than this: the server is saturated.
SATURATION_GAIN = 0.05
# Below the batch it waits to fill, a batcher waits its delay out on every batch: where the delay is this share of
# the limit or more, that wait, not the load, sets the latency (live: a 9 ms delay under 10 ms read 16 ms below its
# batch); where it is less, fewer requests in flight still wait less (a 100 us delay under 10 ms: p95 19.8 ms at 16
# in flight, 5 ms at 8), and a re-measurement that holds at the batch breaks the limit again (2 ms: 3 runs of 3).
WAITS_OUT = 0.5
# Below the fill level of a batcher that waits out its delay, a sweep that halves goes on only while each halving
# leaves p95 under this share.
BELOW_FILL_GAIN = 0.9
# A point or trial whose throughput is clearly under this share of the study's best feasible one cannot win: the
# machine's noise between two readings of one config is within a tenth most of the time.
CANNOT_WIN = 0.9


class Load(Protocol):
    """Measures one point of the loaded config, closed or open: ``LoadGenerator`` is one."""

    def measure(self, concurrency: int, stop_early: Callable[[Measurement], bool] | None = None,
                warmup_s: float | None = None, enough: Callable[[Measurement], bool] | None = None
                ) -> Measurement: ...

    def measure_rate(self, schedule: Schedule, cap: int, warmup_s: float | None = None,
                     enough: Callable[[Measurement], bool] | None = None,
                     stop_early: Callable[[Measurement], bool] | None = None) -> Measurement: ...


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep, as a trial records it: ``at`` its concurrency, or an open loop's offered rate."""

    at: float
    throughput: float
    p95_ms: float

    @classmethod
    def of(cls, measured: Measurement) -> SweepPoint:
        return cls(measured.offered_rate if measured.open_loop else measured.concurrency, measured.throughput,
                   measured.p95_ms)

    def as_record(self) -> list[float]:
        return [self.at, round(self.throughput, 2), round(self.p95_ms, 3)]


@dataclass(frozen=True)
class Reading:
    """A trial's measurement: the point that stands for it, the sweep's points in the order measured (none when one
    concurrency was measured), the seconds spent warming up for it, whether the sweep was still gaining at the
    highest concurrency it may visit or a rate sweep's client fell behind (the space or the client, not the server,
    ended it), and whether it was cut short because it could not beat the study's best."""

    measurement: Measurement
    sweep: tuple[SweepPoint, ...]
    warmup_s: float
    capped: bool = False
    cannot_win: bool = False


@dataclass
class Meter:
    """Measures trials of one model under a p95 limit.

    ``levels`` are the concurrencies a sweep may visit, lowest first; ``warmup_s`` is the full warm-up that a config
    gets before its first point after a reload. With ``arrivals``, trials are measured open-loop: requests sent in
    that pattern at the rates a rate sweep chooses, at most ``max_in_flight`` at a time.
    """

    load: Load
    max_p95_ms: float
    warmup_s: float
    levels: Sequence[int]
    tolerance: float = 0.10  # how well a point's throughput must be known (its p95: 1.5 times as loosely)
    arrivals: Schedule | None = None
    max_in_flight: int = 512
    _warm: bool = False  # the loaded config has served load since it was loaded

    def trial(self, reloaded: bool, fill: int, concurrency: int | None = None, start: int = 1,
              to_beat: float = -math.inf, delay_ms: float = 0.0) -> Reading:
        """Measure the loaded config at ``concurrency``, or sweep it when None, from ``start`` requests in flight or
        its batcher's ``fill`` level, whichever is higher; ``to_beat`` is the study's best feasible throughput and
        ``delay_ms`` its batcher's delay.

        A freshly loaded model's first replies can stall past the warm-up on a busy machine (another server loading
        beside it): a measurement with not a single reply nor error is taken once more, fully warmed up, which tells
        a stall from a model that never answers.
        """
        delay_is_floor = waits_out(delay_ms, self.max_p95_ms)
        return self._twice(lambda warmup_s: self._measure(warmup_s, fill, delay_is_floor, concurrency, start, to_beat),
                           reloaded)

    def rate_trial(self, reloaded: bool, to_beat: float = -math.inf) -> Reading:
        """Sweep the loaded config open-loop for the highest rate it sustains (``rate_sweep``), from where it could
        beat the study's best sustained rate ``to_beat``; a second try as for ``trial``."""
        return self._twice(lambda warmup_s: self._rate_sweep(warmup_s, to_beat), reloaded)

    def again(self, at: float, reloaded: bool) -> Measurement:
        """One more measurement of the loaded config at ``at`` requests in flight (or per second, open-loop), never
        cut short, until its throughput is known and its p95 known or clearly on one side of the limit: a
        re-measurement of a winner."""
        if self.arrivals is not None:
            return self.load.measure_rate(self.arrivals.at(at), self.max_in_flight, self._warmup(reloaded),
                                          self.enough())
        return self.load.measure(int(at), warmup_s=self._warmup(reloaded), enough=self.enough())

    def sustained(self, measured: Measurement) -> bool:
        """An open loop's point that held the limit without errors, and whose server kept up with its schedule
        (``Measurement.kept_up``). Requests that the client sent late count from their scheduled time, so lateness
        that breaks the limit breaks it here too, and lateness that does not, does not."""
        return self.feasible(measured) and measured.kept_up

    def enough(self, to_beat: float = -math.inf) -> Callable[[Measurement], bool]:
        """When a point's figures so far are enough for the study to act on.

        Its throughput must be known within ``tolerance`` and its p95 within 1.5 times that, at 90 % confidence,
        except where less decides as well: a p95 whose interval lies wholly over the limit (the point breaks it,
        whatever its throughput), one wholly under it (only the throughput is still needed), or a throughput whose
        interval lies wholly under ``CANNOT_WIN`` of ``to_beat`` (the point cannot be the study's best).
        """
        def enough(measured: Measurement) -> bool:
            if measured.windows < MIN_WINDOWS:
                return False
            low, high = measured.p95_interval_ms
            throughput_high = measured.throughput * (1 + measured.throughput_error)
            return (measured.stable or low > self.max_p95_ms or throughput_high < CANNOT_WIN * to_beat
                    or (high <= self.max_p95_ms and measured.throughput_error <= self.tolerance))

        return enough

    def hopeless(self, window: Measurement) -> bool:
        """A window with errors, or whose median request is over the limit (so its p95 is too, however noisy the
        tail), condemns the config: measuring on would waste the budget.

        A window without a single reply condemns nothing: a freshly loaded model's first replies can stall past the
        warm-up (lazy initialisation, a busy machine), and a point whose windows all stay empty fails anyway.
        """
        return window.errors > 0 or (window.requests > 0 and window.p50_ms > self.max_p95_ms)

    def feasible(self, measured: Measurement) -> bool:
        return not (measured.cut_short or measured.errors or measured.p95_ms > self.max_p95_ms)

    def _twice(self, measure: Callable[[float], Reading], reloaded: bool) -> Reading:
        reading = measure(self._warmup(reloaded))
        if reading.measurement.requests == reading.measurement.errors == 0:
            again = measure(self.warmup_s)
            reading = replace(again, warmup_s=reading.warmup_s + again.warmup_s)
        return reading

    def _warmup(self, reloaded: bool) -> float:
        """The next point's warm-up: full on a config that has not served load since it was loaded, else a settle.

        A point is measured right after this, which leaves the config warm.
        """
        warm = self._warm and not reloaded
        self._warm = True
        return SETTLE_S if warm else self.warmup_s

    def _measure(self, warmup_s: float, fill: int, delay_is_floor: bool, concurrency: int | None, start: int,
                 to_beat: float) -> Reading:
        if concurrency is not None:
            measured = self.load.measure(concurrency, self.hopeless, warmup_s, self.enough(to_beat))
            return Reading(measured, (), measured.warmup_s)
        return _Sweep(self, warmup_s, to_beat).run(fill, start, delay_is_floor)

    def _rate_sweep(self, warmup_s: float, to_beat: float) -> Reading:
        arrivals = self.arrivals
        assert arrivals is not None, "a rate sweep needs the open loop's arrivals"

        def measure(rate: float, point_warmup_s: float) -> Measurement:
            return self.load.measure_rate(arrivals.at(rate), self.max_in_flight, point_warmup_s,
                                          self.enough(to_beat), self.hopeless)

        can_win = math.isfinite(to_beat)
        found = RateSweep(measure, self.sustained, warmup_s, SETTLE_S).run(
            CANNOT_WIN * to_beat if can_win else FIRST_RATE, must_sustain=can_win)
        return Reading(found.standing, tuple(SweepPoint.of(p) for p in found.points),
                       sum(p.warmup_s for p in found.points), found.client_bound, found.cannot_win)


def waits_out(delay_ms: float, max_p95_ms: float) -> bool:
    """Whether a batcher with this delay, held below the batch it waits to fill, waits long enough to set the
    latency under ``max_p95_ms`` itself (``WAITS_OUT``)."""
    return delay_ms >= WAITS_OUT * max_p95_ms


class _Sweep:
    """One concurrency sweep of the loaded config (``Meter.trial``).

    It starts at the higher of ``start`` (where the study's best config peaked) and the batcher's fill level (below
    it a dynamic batcher cannot fill a batch and waits out its delay), snapped down to a level, and doubles while
    the config holds the limit and still gains throughput. A start that breaks the limit halves instead, until a
    point holds it; below the fill level of a batcher that waits its delay out (``waits_out``), only while halving
    still cuts p95 by a tenth, since there the delay, not the load, sets the latency. Between the highest point that
    held the limit and the lowest one above it that broke it, one point at their geometric mean is tried: the answer
    often sits between two powers of two. Neither a reload nor a full warm-up is needed between points, so one trial
    learns a config's useful range from a few points.

    Throughput only falls as fewer requests are in flight, so a start that breaks the limit while reading clearly
    under the study's best cannot win: the sweep ends there (``cannot_win``). For the same reason the point between
    is tried only where the broken point above it read as much as could win.
    """

    def __init__(self, meter: Meter, warmup_s: float, to_beat: float) -> None:
        self.meter = meter
        self.warmup_s = warmup_s
        self.to_beat = to_beat
        self.points: list[Measurement] = []

    def measure(self, concurrency: int) -> Measurement:
        point_warmup_s = SETTLE_S if self.points else self.warmup_s
        measured = self.meter.load.measure(concurrency, self.meter.hopeless, point_warmup_s,
                                           self.meter.enough(self.to_beat))
        self.points.append(measured)
        return measured

    def can_win(self, measured: Measurement) -> bool:
        return measured.throughput >= CANNOT_WIN * self.to_beat

    def run(self, fill: int, start: int, delay_is_floor: bool) -> Reading:
        """Sweep from ``start`` or ``fill``; ``delay_is_floor``: below ``fill`` the batcher's delay sets the latency."""
        levels, feasible = list(self.meter.levels), self.meter.feasible
        index = max([0, *(i for i, level in enumerate(levels) if level <= max(start, fill))])
        measured = self.measure(levels[index])
        capped = cannot_win = False
        if feasible(measured):
            best = measured
            for level in levels[index + 1:]:
                measured = self.measure(level)
                if not feasible(measured) or measured.throughput < best.throughput * (1 + SATURATION_GAIN):
                    break
                best = measured
            else:
                capped = True
        elif not measured.errors and not self.can_win(measured):
            cannot_win = True
        elif not measured.errors:
            for level in reversed(levels[:index]):
                previous = self.points[-1]
                if delay_is_floor and previous.concurrency < fill and len(self.points) > 1 and (
                        previous.p95_ms > BELOW_FILL_GAIN * self.points[-2].p95_ms):
                    break  # the batcher's delay is the floor: halving no longer helps
                measured = self.measure(level)
                if feasible(measured) or measured.errors:
                    break
        self._bisect()
        return Reading(self._standing(), tuple(SweepPoint.of(p) for p in self.points),
                       sum(p.warmup_s for p in self.points), capped, cannot_win)

    def _bisect(self) -> None:
        """One point between the highest feasible concurrency and the lowest above it that broke the limit."""
        feasible = self.meter.feasible
        held = [p.concurrency for p in self.points if feasible(p)]
        if not held or any(p.errors for p in self.points):
            return
        above = [p for p in self.points if not feasible(p) and p.concurrency > max(held)]
        if not above:
            return
        broken = min(above, key=lambda p: p.concurrency)
        if not self.can_win(broken):
            return  # the point between reads less than the broken one, which could not win
        low, high = max(held), broken.concurrency
        middle = round(math.sqrt(low * high))
        if low < middle < high:
            self.measure(middle)

    def _standing(self) -> Measurement:
        """The knee: the fewest requests in flight that read within ``SATURATION_GAIN`` of the best feasible point's
        throughput, since more in flight past saturation buys only latency (and, where the client shares the
        server's cores, costs throughput that this client does not see). When no point is feasible, the one closest
        to feasibility (errors last, then by p95)."""
        feasible = [p for p in self.points if self.meter.feasible(p)]
        if feasible:
            best = max(p.throughput for p in feasible)
            return min((p for p in feasible if p.throughput * (1 + SATURATION_GAIN) >= best),
                       key=lambda p: p.concurrency)
        return min(self.points, key=lambda p: (p.errors > 0, p.cut_short, p.p95_ms))
