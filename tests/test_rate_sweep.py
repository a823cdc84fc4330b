"""An open loop's study, without a server: the rate sweep on a queueing server's figures, and what a rate study's
trials, re-measurement and summary record."""

from __future__ import annotations

import math

import pytest
from fakes import QUICK, FakeTarget, QueueingServer, make_tuner

from autotune.load.policy import CANNOT_WIN, SETTLE_S, Meter
from autotune.load.rate_sweep import FIRST_RATE, HIGHEST_RATE, RESOLUTION
from autotune.load.schedule import Schedule
from autotune.records import CONFIRMED_KEY, CONSTRAINTS_KEY, LOAD_KEY, best_trial, is_feasible
from autotune.report.summary import study_json, summary, trial_line

POISSON = Schedule(1.0, "poisson")


def meter(server: QueueingServer, max_p95_ms: float = 100.0) -> Meter:
    return Meter(server, max_p95_ms, QUICK.warmup_s, [1], arrivals=POISSON)


def test_a_first_trial_doubles_from_the_first_rate_then_bisects_below_the_servers_capacity() -> None:
    server = QueueingServer(capacity=1000.0)
    reading = meter(server).rate_trial(reloaded=True)
    assert server.rates == [64, 128, 256, 512, 1020, 723, 859, 936]
    assert reading.measurement.offered_rate == 936, "three significant figures"
    assert 1000 / (1 + RESOLUTION) <= reading.measurement.offered_rate < 1000
    assert [point.at for point in reading.sweep] == [rate for rate, _ in server.points]


@pytest.mark.parametrize("service_ms", [1.0, 200.0], ids=["holding the limit", "over it"])
def test_a_sweep_on_a_server_that_never_falls_behind_ends_at_its_safety_bound(service_ms: float) -> None:
    server = QueueingServer(capacity=math.inf, service_ms=service_ms)
    reading = meter(server).rate_trial(reloaded=True)
    assert max(server.rates) == pytest.approx(HIGHEST_RATE, rel=0.01) and len(server.rates) <= 24
    assert (reading.measurement.offered_rate == max(server.rates)) == (service_ms < 100)


def test_the_p95_limit_binds_before_the_capacity_where_the_queue_grows_past_it() -> None:
    server = QueueingServer(capacity=1000.0)  # p95 = 1 ms / (1 - rate / 1000): 5 ms at 800 requests/s
    reading = meter(server, max_p95_ms=5.0).rate_trial(reloaded=True)
    assert 800 / (1 + RESOLUTION) <= reading.measurement.offered_rate <= 800
    assert reading.measurement.p95_ms <= 5.0


def test_a_point_after_one_the_server_fell_behind_at_warms_up_fully_so_that_its_backlog_drains() -> None:
    server = QueueingServer(capacity=1000.0)
    meter(server).rate_trial(reloaded=True)
    warmups = dict(server.points)
    assert warmups[64.0] == QUICK.warmup_s, "the first point after a reload"
    assert warmups[128.0] == SETTLE_S, "after a sustained point"
    assert warmups[723.0] == QUICK.warmup_s, "after 1020/s, which the server fell behind"


def test_a_config_that_cannot_win_stands_on_the_point_closest_to_holding_the_limit() -> None:
    server = QueueingServer(capacity=1000.0)  # 950/s: kept up, p95 20 ms, then 1900/s: far past its capacity
    reading = meter(server, max_p95_ms=10.0).rate_trial(reloaded=True, to_beat=1055.0)
    assert server.rates == [950, 1900, 1340, 1130, 1040] and reading.cannot_win, "nothing between held either"
    assert reading.measurement.offered_rate == 950, "not an overloaded point it tried later"


def test_a_batcher_that_waits_out_its_delay_at_low_rates_is_swept_up_to_the_rates_that_fill_its_batches() -> None:
    server = QueueingServer(capacity=4000.0, batch=32, delay_ms=20.0)  # 21 ms at 64/s, under 20 ms from 2000/s
    reading = meter(server, max_p95_ms=20.0).rate_trial(reloaded=True)
    assert server.rates[:7] == [64, 128, 256, 512, 1020, 2040, 4080]
    assert reading.measurement.offered_rate > 2040 and not reading.cannot_win
    cut = QueueingServer(capacity=4000.0, batch=32, delay_ms=20.0)
    assert meter(cut, max_p95_ms=20.0).rate_trial(reloaded=True, to_beat=500.0).measurement.offered_rate > 2040, (
        "a start too slow to fill a batch does not condemn the config")


def test_rates_sustained_between_a_waiting_batcher_and_a_server_behind_are_found_by_bisecting() -> None:
    server = QueueingServer(capacity=1900.0, service_ms=0.5, batch=24, delay_ms=30.0)  # 23.6 ms at 1020/s
    reading = meter(server, max_p95_ms=20.0).rate_trial(reloaded=True)
    assert server.rates[4:7] == [1020, 2040, 1440], "doubling stepped over the rates it sustains"
    assert reading.measurement.offered_rate >= 1440 and reading.measurement.p95_ms <= 20.0


def test_a_long_batcher_delay_over_the_limit_at_the_start_is_not_condemned_before_the_rates_above_it() -> None:
    server = QueueingServer(capacity=3500.0, service_ms=0.5, batch=48, delay_ms=30.0)  # 21.7 ms at 2330/s
    reading = meter(server, max_p95_ms=20.0).rate_trial(reloaded=True, to_beat=2330 / CANNOT_WIN)
    assert server.rates[:3] == [2330, 4660, 3300]
    assert not reading.cannot_win and reading.measurement.offered_rate >= 2770


def test_a_config_that_does_not_sustain_what_could_win_is_cut_short_after_one_point() -> None:
    server = QueueingServer(capacity=1000.0)
    reading = meter(server).rate_trial(reloaded=True, to_beat=2000.0)
    assert server.rates == [round(CANNOT_WIN * 2000)]
    assert reading.cannot_win and reading.measurement.fell_behind == "the server"


def test_a_config_that_sustains_the_start_climbs_past_the_best() -> None:
    server = QueueingServer(capacity=1000.0)
    reading = meter(server).rate_trial(reloaded=True, to_beat=500.0)
    assert server.rates[:3] == [450, 900, 1800]
    assert not reading.cannot_win and reading.measurement.offered_rate > 900


def test_a_client_that_falls_behind_ends_the_climb_and_says_so_instead_of_blaming_the_server() -> None:
    server = QueueingServer(capacity=1000.0, client_limit=300.0)
    reading = meter(server).rate_trial(reloaded=True)
    assert server.rates == [64, 128, 256, 512], "no bisection above a rate the client could not send"
    assert reading.capped and reading.measurement.offered_rate == 256


def test_requests_the_client_sent_late_count_against_the_limit_not_against_the_rate_sustained() -> None:
    server = QueueingServer(capacity=1000.0, late_ms=5.0)  # a client sharing the server's cores, late at p99
    reading = meter(server).rate_trial(reloaded=True)
    assert reading.measurement.offered_rate == 936 and not reading.capped
    tight = QueueingServer(capacity=1000.0, late_ms=5.0)
    assert meter(tight, max_p95_ms=5.5).rate_trial(reloaded=True).measurement.offered_rate < 400


def test_a_server_slower_than_the_first_rate_is_found_by_halving() -> None:
    server = QueueingServer(capacity=20.0, service_ms=50.0)
    reading = meter(server, max_p95_ms=1000.0).rate_trial(reloaded=True)
    assert server.rates[:3] == [64, 32, 16]
    assert 20 / (1 + RESOLUTION) ** 2 <= reading.measurement.offered_rate < 20
    assert FIRST_RATE == 64


def test_a_rate_studys_trials_stand_on_the_rate_they_sustain_and_the_winner_is_re_measured_there() -> None:
    server = QueueingServer(capacity=1000.0)
    tuner = make_tuner(FakeTarget(), server, max_p95_ms=100.0, concurrency_search="sweep", arrivals=POISSON)
    tuner.study.set_user_attr(LOAD_KEY, "rate, poisson")
    tuner.optimize(2)
    first, second = tuner.study.trials
    assert first.value == 936 and first.user_attrs["offered_rate"] == first.value
    assert len(first.system_attrs[CONSTRAINTS_KEY]) == 3 and is_feasible(first)
    assert server.rates[len(first.user_attrs["sweep"])] == round(CANNOT_WIN * first.value), "from where it could win"
    assert trial_line(first, 2, 100.0).startswith("[1/2] trial 0    936 requests/s:")

    server.points.clear()
    tuner.confirm(rounds=2)
    confirmed = tuner.study.user_attrs[CONFIRMED_KEY]
    best = best_trial(tuner.study)
    assert best is not None and confirmed["rate"] == best.value
    assert all(run["kept_up"] == [True, True] for run in confirmed["trials"])
    assert sorted(server.rates) == sorted(round(t.value) for t in (first, second) for _ in range(2))
    text = summary(tuner.study)
    assert f"Best (trial {best.number}): sustains {best.value:.0f} requests/s at p95" in text
    assert "req/s" in text and "concurrency" not in text
    assert study_json(tuner.study, "memory", None)["best"]["offered_rate"] == best.value


def test_a_trial_that_sustains_no_rate_is_infeasible_even_where_its_p95_held() -> None:
    server = QueueingServer(capacity=1e6, completes=0.9)  # a tenth of the requests due never come back
    tuner = make_tuner(FakeTarget(), server, max_p95_ms=100.0, concurrency_search="sweep", arrivals=POISSON)
    tuner.optimize(1)
    trial = tuner.study.trials[0]
    assert server.rates == [64, 32, 16, 8, 4, 2, 1]
    assert trial.user_attrs["p95_ms"] < 100.0 and not is_feasible(trial)
    assert trial_line(trial, 1, 100.0).split(" [")[0].endswith("did not keep up with its schedule")


def test_a_re_measurement_that_falls_behind_the_trials_rate_moves_its_next_run_lower() -> None:
    server = QueueingServer(capacity=1000.0)
    tuner = make_tuner(FakeTarget(), server, max_p95_ms=100.0, concurrency_search="sweep", arrivals=POISSON)
    tuner.optimize(1)
    server.completes = 0.9  # the server now loses a tenth of what falls due, its p95 as low as ever
    tuner.confirm(rounds=2)
    (run,) = tuner.study.user_attrs[CONFIRMED_KEY]["trials"]
    assert run["rate"] == [936, pytest.approx(0.9 * 936)] and run["kept_up"] == [False, False]
    assert all(p95 < 100.0 for p95 in run["p95_ms"])
