"""The statistics of a point's measurement windows: pure functions, no server."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotune.load.windows import STABLE_WINDOWS, Window, stable, summarise


def window(latencies_ms: list[float], errors: int = 0, duration: float = 1.0, first_error: str = "") -> Window:
    return Window(np.asarray(latencies_ms) / 1e3, errors, first_error, duration)


def test_a_point_is_stable_once_its_last_three_windows_agree_on_throughput_and_p95() -> None:
    steady = [window([2.0] * 100), window([2.1] * 105), window([1.9] * 95)]
    assert stable(steady, tolerance=0.10)
    assert not stable(steady[:2], tolerance=0.10), "fewer than three windows are never stable"
    assert not stable([*steady[:2], window([2.0] * 130)], tolerance=0.10), "throughput 30 % off its mean"
    assert not stable([*steady[:2], window([3.0] * 100)], tolerance=0.10), "p95 off its mean"
    assert not stable([*steady[:2], window([])], tolerance=0.10), "a window without replies has no p95"


def test_the_figures_come_from_every_request_of_the_last_three_windows() -> None:
    early = window([50.0] * 10, errors=2, first_error="early trouble")
    counted = [window([1.0] * 50), window([2.0] * 40), window([3.0] * 10, duration=0.5)]
    measured = summarise(8, [early, *counted], tolerance=0.10)
    assert len(counted) == STABLE_WINDOWS
    assert measured.concurrency == 8 and measured.windows == 4
    assert measured.requests == 100
    assert measured.throughput == pytest.approx(100 / 2.5)
    assert (measured.p50_ms, measured.p95_ms) == (pytest.approx(1.5), pytest.approx(3.0))
    assert measured.p50_ms <= measured.p90_ms <= measured.p95_ms <= measured.p99_ms
    # Errors count from every window, the first one's message with them.
    assert (measured.errors, measured.first_error) == (2, "early trouble")
    assert not measured.stable


def test_a_point_without_a_single_reply_has_no_finite_latency() -> None:
    measured = summarise(2, [window([]), window([]), window([])], tolerance=0.10)
    assert measured.requests == 0 and measured.throughput == 0.0
    assert all(math.isinf(p) for p in (measured.p50_ms, measured.p90_ms, measured.p95_ms, measured.p99_ms))
