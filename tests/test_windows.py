"""The statistics of a point's measurement windows: pure functions, no server."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from autotune.load.windows import Window, known, relative_error, summarise


def window(latencies_ms: list[float], errors: int = 0, duration: float = 1.0, first_error: str = "") -> Window:
    return Window(np.asarray(latencies_ms) / 1e3, errors, first_error, duration)


def test_a_figures_error_is_students_t_interval_of_the_window_mean_as_a_share_of_it() -> None:
    # Mean 100, sample standard deviation 10, three windows: t(2) = 2.920 at 90 %, error 2.920 x 10 / sqrt(3) / 100.
    assert relative_error([90.0, 100.0, 110.0]) == pytest.approx(2.920 * 10 / math.sqrt(3) / 100)
    assert relative_error([100.0]) == math.inf, "one window has no spread to read"
    assert relative_error([0.0, 0.0]) == math.inf


def test_a_noisy_point_becomes_known_as_windows_are_added_where_the_same_spread_over_three_is_not() -> None:
    # Windows alternating 10 % either side of their mean: never within 10 % over any three, but the interval of
    # their mean narrows with every window.
    noisy = [window([2.0] * (90 if i % 2 else 110)) for i in range(8)]
    assert not summarise(4, noisy[:3], tolerance=0.10).stable
    assert not known(summarise(4, noisy[:4], tolerance=0.10), tolerance=0.10)
    assert summarise(4, noisy, tolerance=0.10).stable


def test_a_point_is_known_once_throughput_and_p95_are_within_their_tolerances() -> None:
    steady = [window([2.0] * 100), window([2.1] * 101), window([1.9] * 99)]
    assert summarise(8, steady, tolerance=0.10).stable
    assert not summarise(8, steady[:1], tolerance=0.10).stable, "one window is never known"
    assert not summarise(8, [*steady[:2], window([2.0] * 130)], tolerance=0.10).stable, "throughput 30 % off"
    assert not summarise(8, [*steady[:2], window([3.0] * 100)], tolerance=0.10).stable, "p95 off"
    assert not summarise(8, [*steady[:2], window([])], tolerance=0.10).stable, "a window without replies has no p95"


def test_the_figures_come_from_every_request_of_every_window() -> None:
    counted = [window([1.0] * 50, errors=2, first_error="early trouble"), window([2.0] * 40),
               window([3.0] * 10, duration=0.5)]
    measured = summarise(8, counted, tolerance=0.10)
    assert measured.concurrency == 8 and measured.windows == 3
    assert measured.requests == 100
    assert measured.throughput == pytest.approx(100 / 2.5)
    assert (measured.p50_ms, measured.p95_ms) == (pytest.approx(1.5), pytest.approx(3.0))
    assert measured.p50_ms <= measured.p90_ms <= measured.p95_ms <= measured.p99_ms
    assert (measured.errors, measured.first_error) == (2, "early trouble")
    assert measured.throughput_error == pytest.approx(relative_error([50.0, 40.0, 20.0]))
    low, high = measured.p95_interval_ms
    assert low < measured.p95_ms < high
    assert not measured.stable


def test_a_point_without_a_single_reply_has_no_finite_latency() -> None:
    measured = summarise(2, [window([]), window([]), window([])], tolerance=0.10)
    assert measured.requests == 0 and measured.throughput == 0.0
    assert all(math.isinf(p) for p in (measured.p50_ms, measured.p90_ms, measured.p95_ms, measured.p99_ms))
    assert math.isinf(measured.throughput_error) and not measured.stable


def test_an_open_loop_kept_up_where_it_completed_what_fell_due_however_few_a_random_schedule_sent() -> None:
    # 64 requests/s offered, Poisson: three half-second windows that held 27 requests due where 32 were expected.
    windows = [Window(np.full(27, 0.002), 0, "", 0.5, np.full(27, 1e-4), 0, 27) for _ in range(3)]
    measured = replace(summarise(0, windows, tolerance=0.10), offered_rate=64.0)
    assert measured.throughput == measured.due_rate == 54.0
    assert measured.sent_p95_ms == pytest.approx(1.9), "from when each request left: 2 ms, less 0.1 ms late"
    assert measured.fell_behind == "" and measured.shortfall < 0
    behind = replace(measured, throughput=0.9 * measured.due_rate)
    assert behind.fell_behind == "the server" and behind.shortfall == pytest.approx(0.05)
    late = replace(measured, send_lag_p99_ms=5.0)
    assert late.fell_behind == "the client" and late.kept_up, "its latencies, from the schedule, say what it cost"
    piled_up = replace(measured, cap_waits=3)
    assert piled_up.fell_behind == "the server" and piled_up.shortfall == pytest.approx(0.05)
