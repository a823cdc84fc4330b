"""An open loop's sweep: the highest request rate a loaded config sustains, found by doubling, then bisecting.

A rate is sustained where the server completed at least ``KEPT_UP`` of the requests due, its p95 held the limit
and no request erred (``Meter.sustained``). The sweep starts where a config could still beat the study's best
(``CANNOT_WIN`` of the best's rate; a study's first trial at ``FIRST_RATE``) and doubles the rate while the config
sustains it, and also while the server keeps up but the p95 breaks the limit: a dynamic batcher waits out its delay
for batches that only more traffic fills, so a config can break the limit at low rates and hold it at high ones.
Where it sustained nothing from its start up, it halves from the start. Then it bisects between the highest rate
sustained and the lowest above it that was not, until the two are within ``RESOLUTION``: readings of one point
move by about a tenth on a busy machine, and finer steps would measure noise.

A config that sustains neither its start nor any rate above it cannot win: a server that falls behind at one rate
falls further behind at any higher one. Where a rate was not sustained and the client had fallen behind its
schedule (its requests left late), the climb ends there and the config is not blamed: it sustains at least the rate
below, and the sweep says that the client bound it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from autotune.load.windows import CLIENT, Measurement

# Where a study's first trial starts, in requests per second: doubling reaches 4096/s in six steps, halving 1/s.
FIRST_RATE = 64.0
LOWEST_RATE = 1.0
# A safety bound, not a guess: a server or client falls behind long before, but a sweep must end where neither does.
HIGHEST_RATE = 2.0**20
# The sweep bisects until the highest sustained rate and the lowest broken one are this close.
RESOLUTION = 0.1


@dataclass(frozen=True)
class RateSearch:
    """What a rate sweep found: its points in the order measured, the one that stands for the config (the highest
    rate sustained, else the point closest to holding the limit), whether the client's pace ended the climb, and
    whether the config failed at a start that it had to sustain to win."""

    points: tuple[Measurement, ...]
    standing: Measurement
    client_bound: bool = False
    cannot_win: bool = False


@dataclass
class RateSweep:
    """One rate sweep of the loaded config (use once). ``measure(rate, warmup_s)`` measures one point; the first
    point warms up for ``warmup_s``, a point after a sustained one only settles for ``settle_s``, and one after a
    point the server fell behind warms up fully again, so that its backlog drains before the windows count."""

    measure: Callable[[float, float], Measurement]
    sustained: Callable[[Measurement], bool]
    warmup_s: float
    settle_s: float
    points: list[Measurement] = field(default_factory=list)

    def run(self, start: float, must_sustain: bool) -> RateSearch:
        """Sweep from ``start`` requests per second; ``must_sustain``: a config that does not sustain ``start``,
        nor any rate above it, cannot win (the start is what the study's best could still be beaten by)."""
        measured = self._measure(start)
        while self._waiting_for_traffic(measured) and measured.offered_rate < HIGHEST_RATE:
            measured = self._measure(2 * measured.offered_rate)
        while self.sustained(measured) and measured.offered_rate < HIGHEST_RATE:
            measured = self._measure(2 * measured.offered_rate)
        self._between_waiting_and_falling_behind()
        if not any(self.sustained(p) for p in self.points):
            if must_sustain and not measured.errors and not self._client_late(measured):
                return RateSearch(tuple(self.points), self._standing(), cannot_win=True)
            measured = self.points[0]
            while not measured.errors and not self.sustained(measured) and measured.offered_rate / 2 >= LOWEST_RATE:
                measured = self._measure(measured.offered_rate / 2)
        self._bisect()
        return RateSearch(tuple(self.points), self._standing(),
                          client_bound=any(self._client_late(p) for p in self.points))

    def _measure(self, rate: float) -> Measurement:
        # Three significant figures: "sustains 939 requests/s", finer is noise.
        rate = float(f"{min(rate, HIGHEST_RATE):.3g}")
        previous = self.points[-1] if self.points else None
        warmup_s = self.warmup_s if previous is None or not self.sustained(previous) else self.settle_s
        measured = self.measure(rate, warmup_s)
        self.points.append(measured)
        return measured

    def _waiting_for_traffic(self, measured: Measurement) -> bool:
        """A rate the server kept up with, nothing erring, but over the limit: a dynamic batcher may be waiting out
        its delay for batches that more traffic would fill sooner (a 20 ms delay breaks a 20 ms limit at any rate
        too low to fill a batch within it), so the sweep tries twice the rate before it concludes anything."""
        return (not self.sustained(measured) and measured.kept_up and not measured.errors
                and not self._client_late(measured))

    def _between_waiting_and_falling_behind(self) -> None:
        """Where doubling stepped from a rate at which a batcher still waited for traffic straight to one the server
        fell behind at, sustaining nothing, the rates it sustains may lie between (``wide_mlp`` with a 20 ms delay
        under a 20 ms limit: p95 23 ms at 1020/s, behind at 2040/s, 17 ms at 1400/s): bisect, moving up while p95
        still falls, down once it rises or the server falls behind, until one is sustained or the two are within
        ``RESOLUTION``. One such rate is enough: mlp's 20 ms batcher read 21.7 ms at 2330/s, fell behind at 4660/s,
        and sustained 2420/s; where it was a queue's last step instead, the bisection costs three short points."""
        waiting = [p for p in self.points if self._waiting_for_traffic(p)]
        if not waiting or any(self.sustained(p) for p in self.points):
            return
        low = max(waiting, key=lambda p: p.offered_rate)
        behind = [p.offered_rate for p in self.points if p.offered_rate > low.offered_rate and not p.kept_up]
        high = min(behind, default=low.offered_rate)
        while high > low.offered_rate * (1 + RESOLUTION):
            measured = self._measure(math.sqrt(low.offered_rate * high))
            if self.sustained(measured):
                return
            if self._waiting_for_traffic(measured) and measured.p95_ms < low.p95_ms:
                low = measured
            else:
                high = measured.offered_rate

    def _client_late(self, measured: Measurement) -> bool:
        return not self.sustained(measured) and measured.fell_behind == CLIENT

    def _bisect(self) -> None:
        """Between the highest rate sustained and the lowest above it the server fell behind at, until they are
        within ``RESOLUTION``; a point the client fell behind at ends it."""
        while True:
            held = [p.offered_rate for p in self.points if self.sustained(p)]
            if not held or any(self._client_late(p) for p in self.points):
                return
            above = [p.offered_rate for p in self.points if not self.sustained(p) and p.offered_rate > max(held)]
            if not above or min(above) <= max(held) * (1 + RESOLUTION):
                return
            self._measure(math.sqrt(max(held) * min(above)))

    def _standing(self) -> Measurement:
        sustained = [p for p in self.points if self.sustained(p)]
        if sustained:
            return max(sustained, key=lambda p: p.offered_rate)
        return min(self.points, key=lambda p: (p.errors > 0, p.cut_short, p.p95_ms, p.offered_rate))
