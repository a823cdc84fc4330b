"""What a point's measurement windows add up to: pure functions over the latencies each window collected.

A point's figures come from every request of its windows, with latencies kept exactly, not binned. How well they
are known is read off the windows as independent samples: each figure's 90 % confidence interval is the mean of
the windows' values plus or minus Student's t times their standard error. The interval narrows as windows are
added, so a point on a noisy machine still ends once it has been looked at long enough, where a rule that wants
the last few windows to agree may never be met.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import numpy as np

from autotune.load.cpu import ClientCost, CpuTimes

# Windows a point needs before its figures can be called known; one more gives the interval an error at all.
MIN_WINDOWS = 2
# An open loop kept up with its schedule where it completed at least this share of the requests that fell due in its
# windows (not of the rate it offered: at 64 requests/s, a Poisson schedule's windows of half a second hold 32 on
# average, give or take 6).
KEPT_UP = 0.95
# Requests that left their schedule later than this at p99 mean the client fell behind (its timing thread keeps
# within 0.5-1.2 ms at p99 where it keeps up, benchmarks/README.md).
CLIENT_LATE_MS = 2.0
# Who fell behind an open loop's schedule (``Measurement.fell_behind``).
SERVER, CLIENT = "the server", "the client"
# What only an open loop's point has.
_OPEN_LOOP = ("offered_rate", "due_rate", "sent_p95_ms", "send_lag_p50_ms", "send_lag_p99_ms", "cap_waits")
# Student's t for a two-sided 90 % interval, by degrees of freedom (windows - 1); beyond the table, its last value.
_T90 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812)


class Collected(NamedTuple):
    """What one client process collected up to a window boundary (latencies in seconds), and the CPU it had used
    by then; an open loop's also how late each of those requests left its schedule, in seconds, how many waited
    for room under its cap of requests in flight, and how many fell due."""

    latencies: np.ndarray
    errors: int
    first_error: str
    cpu: CpuTimes
    lags: np.ndarray = np.empty(0)
    cap_waits: int = 0
    due: int = 0


@dataclass(frozen=True)
class Measurement:
    """What one point measured: client-side figures in infer/s and milliseconds.

    ``throughput_error`` and ``p95_error`` are the half-widths of the figures' 90 % confidence intervals, as shares
    of the figures (infinite with fewer than two windows with replies); ``warmup_s`` is how long the point warmed
    up before its windows; the ``client_`` figures are the load generator's own cost over the windows
    (``cpu.ClientCost``): CPU microseconds per request in user mode and in the kernel, and its busiest process's
    share of one core. An open loop's point (``concurrency`` 0) also has the rate it offered, the rate at which
    requests fell due in its windows (the offered rate, give or take a schedule's randomness), its p95 counted from
    when each request left rather than from its schedule (as perf_analyzer counts), how late its requests left
    their schedule at p50 and p99, and how many waited for room under its cap of requests in flight.
    """

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
    throughput_error: float = math.inf
    p95_error: float = math.inf
    warmup_s: float = 0.0
    client_user_us: float = math.nan
    client_system_us: float = math.nan
    client_core_share: float = math.nan
    offered_rate: float = math.nan
    due_rate: float = math.nan
    sent_p95_ms: float = math.nan
    send_lag_p50_ms: float = math.nan
    send_lag_p99_ms: float = math.nan
    cap_waits: int = 0

    def as_dict(self) -> dict[str, object]:
        """The fields by name; a closed loop's without the open loop's."""
        fields = asdict(self)
        return fields if self.open_loop else {k: v for k, v in fields.items() if k not in _OPEN_LOOP}

    @property
    def client_cost(self) -> ClientCost:
        return ClientCost(self.client_user_us, self.client_system_us, self.client_core_share)

    def with_client_cost(self, cost: ClientCost) -> Measurement:
        return replace(self, client_user_us=cost.user_us, client_system_us=cost.system_us,
                       client_core_share=cost.core_share)

    @property
    def open_loop(self) -> bool:
        """Whether requests were sent on a schedule (``concurrency`` 0) rather than kept in flight."""
        return self.concurrency == 0

    @property
    def load(self) -> str:
        """The load it was measured under, in words: "concurrency 16", "500 requests/s"."""
        return f"{self.offered_rate:g} requests/s" if self.open_loop else f"concurrency {self.concurrency}"

    @property
    def kept_up(self) -> bool:
        """Whether an open loop's server kept up with its schedule: no request waited for room under the cap on
        requests in flight, and it completed at least ``KEPT_UP`` of the requests that fell due. A client that left
        its requests late may still have been kept up with: their latencies, counted from the schedule, say how
        much that cost."""
        return not self.cap_waits and self.throughput >= KEPT_UP * self.due_rate

    @property
    def fell_behind(self) -> str:
        """Who fell behind an open loop's schedule: "the server" where requests piled up to the cap on those in
        flight (the sends after them leave late too); "the client" where its requests left late (over
        ``CLIENT_LATE_MS`` at p99) by as much as the server then took for them (their p95 from when they left), so
        that the wait was the client's, not the server's queue; "the server" again where it completed less than
        ``KEPT_UP`` of the requests that fell due; or "" where neither did, as for every closed loop."""
        if self.cap_waits:
            return SERVER
        if self.send_lag_p99_ms > CLIENT_LATE_MS and self.send_lag_p99_ms >= self.sent_p95_ms:
            return CLIENT
        return "" if not self.open_loop or self.kept_up else SERVER

    @property
    def shortfall(self) -> float:
        """How far an open loop's server fell short of keeping up with its schedule (``kept_up``): the share of the
        requests due under ``KEPT_UP`` that it did not complete, at or below zero where it kept up; where requests
        waited for room under the cap, at least ``1 - KEPT_UP`` however many it completed."""
        short = KEPT_UP - self.throughput / self.due_rate if self.due_rate else 1.0
        return max(short, 1 - KEPT_UP) if self.cap_waits else short

    @property
    def p95_interval_ms(self) -> tuple[float, float]:
        """The p95's 90 % confidence interval in milliseconds."""
        spread = self.p95_ms * self.p95_error
        return self.p95_ms - spread, self.p95_ms + spread


@dataclass(frozen=True)
class Window:
    """The requests that completed within one window (latencies in seconds), and the errors."""

    latencies: np.ndarray
    errors: int
    first_error: str
    duration: float
    lags: np.ndarray = field(default_factory=lambda: np.empty(0))
    cap_waits: int = 0
    due: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.duration

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95)) if len(self.latencies) else float("inf")


def relative_error(values: Sequence[float]) -> float:
    """The half-width of the 90 % confidence interval of the values' mean, as a share of the mean."""
    mean = float(np.mean(values)) if len(values) else math.inf
    if len(values) < 2 or not math.isfinite(mean) or mean == 0:
        return math.inf
    t = _T90[min(len(values) - 2, len(_T90) - 1)]
    return t * float(np.std(values, ddof=1)) / math.sqrt(len(values)) / mean


def known(measured: Measurement, tolerance: float) -> bool:
    """Whether a point's figures are known: at least ``MIN_WINDOWS`` windows, its throughput within ``tolerance``
    and its p95 within 1.5 times that (a tail is noisier), both at 90 % confidence."""
    return (measured.windows >= MIN_WINDOWS and measured.throughput_error <= tolerance
            and measured.p95_error <= 1.5 * tolerance)


def summarise(concurrency: int, windows: Sequence[Window], tolerance: float) -> Measurement:
    """The point's figures from all its windows, and how well they are known."""
    latencies_ms = np.concatenate([w.latencies for w in windows]) * 1e3 if windows else np.empty(0)
    p50, p90, p95, p99 = (
        np.percentile(latencies_ms, [50, 90, 95, 99]) if len(latencies_ms) else [float("inf")] * 4
    )
    answered = [w for w in windows if len(w.latencies)]
    lags_ms = np.concatenate([w.lags for w in windows]) * 1e3 if windows else np.empty(0)
    lag_p50, lag_p99 = np.percentile(lags_ms, [50, 99]) if len(lags_ms) else [math.nan] * 2
    # An open loop's windows hold each completed request's lateness beside its latency: their difference is the
    # latency from when it left.
    sent_p95 = np.percentile(latencies_ms - lags_ms, 95) if len(lags_ms) == len(latencies_ms) > 0 else math.nan
    duration = sum(w.duration for w in windows)
    measured = Measurement(
        concurrency=concurrency,
        throughput=len(latencies_ms) / duration if windows else 0.0,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        requests=len(latencies_ms),
        errors=sum(w.errors for w in windows),
        windows=len(windows),
        stable=False,
        first_error=next((w.first_error for w in windows if w.first_error), ""),
        throughput_error=relative_error([w.throughput for w in windows]) if answered else math.inf,
        p95_error=relative_error([w.p95 for w in answered]) if len(answered) == len(windows) else math.inf,
        send_lag_p50_ms=float(lag_p50),
        send_lag_p99_ms=float(lag_p99),
        sent_p95_ms=float(sent_p95),
        cap_waits=sum(w.cap_waits for w in windows),
        due_rate=sum(w.due for w in windows) / duration if windows else math.nan,
    )
    return replace(measured, stable=known(measured, tolerance))
