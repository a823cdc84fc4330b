"""The open loop on a real server: requests leave on schedule whatever the replies, and each latency counts from
the request's scheduled time."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from autotune.load.loop import LoadGenerator, LoadSettings
from autotune.load.schedule import Schedule
from autotune.load.windows import Measurement
from autotune.triton.embedded import EmbeddedServer
from autotune.triton.server import ModelServer

QUICK = LoadSettings(warmup_s=0.2, window_s=0.3, max_windows=4)
# The test model "slow" answers each request after 50 ms, one at a time: it serves 20 requests a second at most.
SLOW_SERVICE_S = 0.05


def measured_on(url: str, model: str, schedule: Schedule, cap: int = 512,
                settings: LoadSettings = QUICK) -> tuple[Measurement, int]:
    """An open-loop point on ``model``, and how many requests the server served meanwhile."""
    server = ModelServer(url, model)
    before = server.statistics()["success_count"]
    try:
        measurement = LoadGenerator(url, model, settings).measure_rate(schedule, cap)
        return measurement, server.statistics()["success_count"] - before
    finally:
        server.restore()
        server.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_an_open_loop_offers_its_rate_and_a_server_with_room_keeps_up(triton: EmbeddedServer, processes: int) -> None:
    children = os.times().children_user
    measurement, served = measured_on(triton.url, "mlp", Schedule(200.0), settings=replace(QUICK, processes=processes))
    assert (os.times().children_user > children) == (processes > 1), "client processes share the schedule"
    assert measurement.concurrency == 0 and measurement.offered_rate == 200.0
    assert measurement.errors == 0 and measurement.cap_waits == 0
    assert measurement.throughput == pytest.approx(200.0, rel=0.1)
    assert measurement.due_rate == pytest.approx(200.0, rel=0.02), "what fell due in the windows, from every process"
    assert measurement.requests <= served, "every reply counted was one the server served"
    assert measurement.send_lag_p50_ms < 5.0


def test_latency_counts_from_the_scheduled_time_so_a_server_that_falls_behind_shows_its_queue(
        triton: EmbeddedServer) -> None:
    # Twice what "slow" can serve, at most 2 in flight: a closed loop at 2 reads 50-100 ms a request. The open loop's
    # requests wait for room on schedule, so each one's latency holds the queue before it, growing by a second a
    # second.
    measurement, _ = measured_on(triton.url, "slow", Schedule(2 / SLOW_SERVICE_S), cap=2)
    assert measurement.cap_waits > 0
    assert measurement.fell_behind == "the server"
    assert measurement.throughput == pytest.approx(1 / SLOW_SERVICE_S, rel=0.25)
    assert measurement.p50_ms > 6 * SLOW_SERVICE_S * 1e3


def test_a_server_stall_shows_in_the_latencies_of_every_request_due_during_it(triton: EmbeddedServer) -> None:
    # The server stops answering for half a second of 1.2 s of windows. An open loop at 200/s keeps sending: the 100
    # requests due in the stall wait up to 0.5 s, a third of its requests. A closed loop at 1 in flight sends
    # nothing while its one request waits: one slow request among hundreds, and a p95 that never saw the stall
    # (coordinated omission).
    assert triton.pid is not None
    everything = LoadSettings(warmup_s=0.2, window_s=0.3, max_windows=4)

    def stalled(measure: Callable[[LoadGenerator], Measurement]) -> Measurement:
        server = ModelServer(triton.url, "mlp")
        load = LoadGenerator(triton.url, "mlp", everything)
        load.requests()
        stop = threading.Timer(0.5, os.kill, (triton.pid, signal.SIGSTOP))
        resume = threading.Timer(1.0, os.kill, (triton.pid, signal.SIGCONT))
        stop.start(), resume.start()
        try:
            return measure(load)
        finally:
            stop.cancel(), resume.cancel()
            os.kill(triton.pid, signal.SIGCONT)
            server.restore()
            server.close()

    opened = stalled(lambda load: load.measure_rate(Schedule(200.0), 512, enough=lambda _: False))
    closed = stalled(lambda load: load.measure(1, enough=lambda _: False))
    assert opened.windows == closed.windows == everything.max_windows
    assert opened.p95_ms > 200.0, "a third of the open loop's requests were due during the stall"
    assert opened.send_lag_p99_ms < 50.0, "and they left on time: the open loop waits for no reply"
    assert closed.p95_ms < 100.0, "the closed loop held back the requests that would have seen it"
