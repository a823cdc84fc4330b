"""When an open loop's requests leave: a constant rate, Poisson arrivals, or perf_analyzer's intervals file.

A schedule is a list of send times fixed before the load starts, never moved by how fast replies come back: a
closed loop that waits for replies hides the queueing that production traffic meets (coordinated omission). Several
client processes share one schedule, each taking every n-th request of it from one start time, so the offered load
is the same however it is spread: a process that starts late joins the schedule where it stands instead of
starting its own, which for a constant rate over two processes would send requests in pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from autotune.errors import AutotuneError

Distribution = Literal["constant", "poisson"]
# Send times are generated this many at a time, ahead of the sender.
CHUNK = 1024


@dataclass(frozen=True)
class Schedule:
    """Requests at ``rate`` per second, ``constant``-ly spaced or as a Poisson process (exponential gaps from a
    generator seeded with ``seed``), or, when ``intervals_s`` is given, those gaps in turn, looped as perf_analyzer
    loops its ``--request-intervals`` file."""

    rate: float = 0.0
    distribution: Distribution = "constant"
    intervals_s: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.intervals_s and not (self.rate > 0 and np.isfinite(self.rate)):
            raise AutotuneError(f"a request rate must be a positive number of requests per second, not {self.rate:g}")

    @classmethod
    def from_file(cls, path: Path) -> Schedule:
        """perf_analyzer's ``--request-intervals`` format: one gap in microseconds per line."""
        try:
            lines = path.read_text().split()
        except OSError as error:
            raise AutotuneError(f"cannot read the request intervals {path}: {error.strerror}") from None
        try:
            gaps = tuple(float(line) / 1e6 for line in lines)
        except ValueError as error:
            raise AutotuneError(f"{path}: each line must be an interval in microseconds ({error})") from None
        if not gaps or any(not (gap >= 0 and np.isfinite(gap)) for gap in gaps) or sum(gaps) <= 0:
            raise AutotuneError(f"{path}: the intervals must be microseconds, none negative, and not all zero")
        return cls(intervals_s=gaps)

    @property
    def offered_rate(self) -> float:
        """Requests per second over the long run."""
        return len(self.intervals_s) / sum(self.intervals_s) if self.intervals_s else self.rate

    def at(self, rate: float) -> Schedule:
        """This schedule's pattern at ``rate`` requests per second: an intervals file's gaps scaled alike, so that
        an open loop's rate sweep keeps the traffic's shape."""
        if self.intervals_s:
            scale = self.offered_rate / rate
            return replace(self, intervals_s=tuple(gap * scale for gap in self.intervals_s))
        return replace(self, rate=rate)

    @property
    def arrivals(self) -> str:
        """The pattern in words, as a study records it: "constant", "poisson", "intervals"."""
        return "intervals" if self.intervals_s else self.distribution

    def send_times(self, part: int = 0, parts: int = 1, joined_s: float = 0.0) -> Iterator[np.ndarray]:
        """Seconds after the load's start at which client ``part`` of ``parts`` sends, in chunks, without end; from
        ``joined_s`` on, the seconds after the start at which the client was ready."""
        random = np.random.default_rng(self.seed)
        cycle = np.asarray(self.intervals_s)
        position, start = 0, 0.0
        while True:
            if self.intervals_s:
                gaps = np.take(cycle, np.arange(position, position + CHUNK), mode="wrap")
            elif self.distribution == "poisson":
                gaps = random.exponential(1.0 / self.rate, CHUNK)
            else:
                gaps = np.full(CHUNK, 1.0 / self.rate)
            times = start + np.cumsum(gaps)
            # Request n of the whole schedule is client (n % parts)'s.
            mine = times[(part - position) % parts::parts]
            yield mine[mine >= joined_s]
            position, start = position + CHUNK, float(times[-1])
