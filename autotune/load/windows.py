"""What a point's measurement windows add up to: pure functions over the latencies each window collected.

A point is stable once its last ``STABLE_WINDOWS`` windows agree: the spread of their throughputs within the
stability tolerance of their mean, that of their p95s within 1.5 times it. Its figures come from every request of
those windows, with latencies kept exactly, not binned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

STABLE_WINDOWS = 3


@dataclass(frozen=True)
class Measurement:
    """What one point measured: client-side figures in infer/s and milliseconds."""

    concurrency: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    errors: int
    windows: int
    stable: bool
    first_error: str = ""
    cut_short: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    """The requests that completed within one window (latencies in seconds), and the errors."""

    latencies: np.ndarray
    errors: int
    first_error: str
    duration: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.duration

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95)) if len(self.latencies) else float("inf")


def stable(windows: Sequence[Window], tolerance: float) -> bool:
    """Whether the last ``STABLE_WINDOWS`` windows agree: their throughputs spread by at most ``tolerance`` of
    their mean (coefficient of variation), their p95s by at most 1.5 times that (a tail is noisier)."""
    counted = windows[-STABLE_WINDOWS:]
    if len(counted) < STABLE_WINDOWS:
        return False
    for values, allowed in (([w.throughput for w in counted], tolerance), ([w.p95 for w in counted], 1.5 * tolerance)):
        mean = float(np.mean(values))
        if not np.isfinite(mean) or mean == 0 or float(np.std(values)) > allowed * mean:
            return False
    return True


def summarise(concurrency: int, windows: Sequence[Window], tolerance: float) -> Measurement:
    """The point's figures from its last ``STABLE_WINDOWS`` windows; errors from all of them."""
    counted = windows[-STABLE_WINDOWS:]
    latencies_ms = np.concatenate([w.latencies for w in counted]) * 1e3
    p50, p90, p95, p99 = (
        np.percentile(latencies_ms, [50, 90, 95, 99]) if len(latencies_ms) else [float("inf")] * 4
    )
    return Measurement(
        concurrency=concurrency,
        throughput=len(latencies_ms) / sum(w.duration for w in counted),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        requests=len(latencies_ms),
        errors=sum(w.errors for w in windows),
        windows=len(windows),
        stable=stable(counted, tolerance),
        first_error=next((w.first_error for w in windows if w.first_error), ""),
    )
