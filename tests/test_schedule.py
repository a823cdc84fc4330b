"""An open loop's schedule: when requests leave, for one client process or spread over several. No server."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autotune.cli.options import schedules
from autotune.errors import AutotuneError
from autotune.load.schedule import Schedule
from autotune.load.windows import Measurement, Window, summarise


def first(schedule: Schedule, count: int, part: int = 0, parts: int = 1, joined_s: float = 0.0) -> np.ndarray:
    """The first ``count`` send times of client ``part`` of ``parts``, ready ``joined_s`` after the start."""
    times = np.empty(0)
    for chunk in schedule.send_times(part, parts, joined_s):
        times = np.concatenate([times, chunk])
        if len(times) >= count:
            return times[:count]
    raise AssertionError("a schedule has no end")


def test_a_constant_rate_sends_at_even_gaps() -> None:
    times = first(Schedule(250.0), 3000)
    assert np.diff(times) == pytest.approx(np.full(2999, 0.004))
    assert times[0] == pytest.approx(0.004)


def test_poisson_arrivals_have_exponential_gaps_at_the_rate_and_repeat_with_the_seed() -> None:
    times = first(Schedule(1000.0, "poisson", seed=3), 20000)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1e-3, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05), "an exponential gap's spread equals its mean"
    assert np.array_equal(times, first(Schedule(1000.0, "poisson", seed=3), 20000))
    assert not np.array_equal(times, first(Schedule(1000.0, "poisson", seed=4), 20000))


@pytest.mark.parametrize("schedule", [Schedule(300.0), Schedule(300.0, "poisson"),
                                      Schedule(intervals_s=(0.001, 0.004))])
def test_client_processes_share_one_schedule_each_taking_every_nth_request(schedule: Schedule) -> None:
    whole = first(schedule, 3000)
    parts = [first(schedule, 1000, part, 3) for part in range(3)]
    for part, times in enumerate(parts):
        assert np.array_equal(times, whole[part::3])
    assert np.array_equal(np.sort(np.concatenate(parts)), whole)


@pytest.mark.parametrize("schedule", [Schedule(300.0), Schedule(intervals_s=(0.001, 0.004))])
def test_a_client_process_that_starts_late_joins_the_schedule_where_it_stands(schedule: Schedule) -> None:
    whole = first(schedule, 6000)
    early, late = first(schedule, 2000, 0, 2), first(schedule, 1000, 1, 2, joined_s=2.5)
    assert late[0] >= 2.5 and np.isin(late, whole[1::2]).all(), "its own requests of the one schedule, none past"
    both = np.concatenate([early, late])
    span = (both >= late[0]) & (both <= min(early[-1], late[-1]))
    merged = np.sort(both[span])
    assert np.array_equal(merged, whole[(whole >= merged[0]) & (whole <= merged[-1])]), "no two requests together"


def test_an_intervals_file_is_perf_analyzers_microseconds_a_line_looped(tmp_path: Path) -> None:
    (tmp_path / "intervals.txt").write_text("1000\n3000\n\n2000\n")
    schedule = Schedule.from_file(tmp_path / "intervals.txt")
    times = first(schedule, 3000)
    assert np.diff(times[:7]) == pytest.approx([0.003, 0.002, 0.001, 0.003, 0.002, 0.001])
    assert schedule.offered_rate == pytest.approx(500.0)


@pytest.mark.parametrize(("text", "says"), [("1000\nfast\n", "each line must be an interval in microseconds"),
                                            ("1000\n-5\n", "none negative"), ("", "not all zero"),
                                            ("0\n0\n", "not all zero")])
def test_a_malformed_intervals_file_is_refused_with_its_name(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "intervals.txt").write_text(text)
    with pytest.raises(AutotuneError, match=says) as refused:
        Schedule.from_file(tmp_path / "intervals.txt")
    assert "intervals.txt" in str(refused.value)
    with pytest.raises(AutotuneError, match="cannot read the request intervals"):
        Schedule.from_file(tmp_path / "nowhere.txt")


@pytest.mark.parametrize("rates", ["0", "-5", "100,0", "inf", "many", ","])
def test_a_request_rate_must_be_positive_requests_per_second(rates: str) -> None:
    with pytest.raises(AutotuneError, match="--request-rate"):
        schedules(rates, None, "constant")


def test_the_open_loop_flags_become_one_schedule_per_point(tmp_path: Path) -> None:
    assert schedules("500,1000", None, "poisson") == [Schedule(500.0, "poisson"), Schedule(1000.0, "poisson")]
    assert schedules(None, None, "constant") == [], "no rate: a closed loop"
    (tmp_path / "intervals.txt").write_text("1000\n")
    assert schedules(None, tmp_path / "intervals.txt", "constant") == [Schedule(intervals_s=(0.001,))]
    with pytest.raises(AutotuneError, match="not both"):
        schedules("500", tmp_path / "intervals.txt", "constant")
    with pytest.raises(AutotuneError, match="--distribution 'bursty'"):
        schedules("500", None, "bursty")


def open_point(throughput: float, offered: float, lags_ms: list[float], cap_waits: int = 0) -> Measurement:
    """A one-second open-loop point: ``throughput`` replies of 5 ms from their schedule, sent ``lags_ms`` late in
    turn, of ``offered`` due."""
    lags = np.resize(np.asarray(lags_ms) / 1e3, int(throughput))
    window = Window(np.full(int(throughput), 0.005), 0, "", 1.0, lags, cap_waits, int(offered))
    return replace(summarise(0, [window], 0.1), offered_rate=offered)


def test_an_open_point_says_who_fell_behind_its_schedule() -> None:
    assert open_point(995, 1000, [0.1] * 100).fell_behind == ""
    assert open_point(995, 1000, [0.1] * 90 + [5.0] * 10).fell_behind == "the client", "its p99 left 5 ms late"
    assert open_point(800, 1000, [0.1] * 100).fell_behind == "the server", "it completed 80 % of the requests due"
    assert open_point(995, 1000, [0.1] * 100, cap_waits=3).fell_behind == "the server", "requests piled up"
    closed = summarise(4, [Window(np.full(100, 0.005), 0, "", 1.0)], 0.1)
    assert closed.fell_behind == "" and math.isnan(closed.send_lag_p99_ms)
