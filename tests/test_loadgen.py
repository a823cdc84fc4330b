"""The load loop against a real embedded Triton server."""

import asyncio
import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autotune.interruptions import held
from autotune.load.cpu import ClientCost, CpuTimes
from autotune.load.loop import (
    REQUESTS_PER_CONNECTION,
    WARMUP_SLICE_S,
    LoadGenerator,
    LoadSettings,
    _warm_up,
)
from autotune.load.windows import MIN_WINDOWS, Collected, Measurement
from autotune.triton.embedded import EmbeddedServer
from autotune.triton.server import ModelServer

QUICK = LoadSettings(warmup_s=0.2, window_s=0.3, max_windows=4)
# How late the event loop may close a window on a busy 2-core machine: a scheduler slice, a twentieth of a window.
LOOP_LAG_S = 0.015


def test_a_measurement_counts_what_the_server_served_in_its_windows(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "mlp")
    before = server.statistics()["success_count"]
    started = time.perf_counter()
    # No warm-up: every request the server serves falls in a window, but for those in flight when the last closed
    # and those the load sent in the moment the loop took to close it (its sleep's overshoot, the summary).
    measurement = LoadGenerator(triton.url, "mlp", replace(QUICK, warmup_s=0.0)).measure(concurrency=4)
    elapsed = time.perf_counter() - started
    served = server.statistics()["success_count"] - before
    server.restore()
    server.close()
    assert measurement.errors == 0 and measurement.requests > 10
    assert MIN_WINDOWS <= measurement.windows <= QUICK.max_windows
    assert 0 < measurement.p50_ms <= measurement.p90_ms <= measurement.p95_ms <= measurement.p99_ms
    assert measurement.requests <= served <= measurement.requests + 4 + measurement.throughput * LOOP_LAG_S
    # Its windows last at least their length each, and no longer than the whole call.
    assert served / elapsed <= measurement.throughput <= served / (measurement.windows * QUICK.window_s)


def test_failed_requests_are_counted_with_the_servers_message(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "broken")
    try:
        measurement = LoadGenerator(triton.url, "broken", QUICK).measure(concurrency=2)
    finally:
        server.restore()
        server.close()
    assert measurement.requests == 0
    assert measurement.errors > 0
    assert "broken on purpose" in measurement.first_error


def test_several_client_processes_share_the_load_and_every_reply_is_counted(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "mlp")
    before = server.statistics()
    times = os.times()
    measurement = LoadGenerator(triton.url, "mlp", replace(QUICK, processes=2)).measure(concurrency=5)
    children = cpu_seconds(os.times(), children=True) - cpu_seconds(times, children=True)
    served = server.statistics()["success_count"] - before["success_count"]
    server.restore()
    server.close()
    assert measurement.concurrency == 5
    assert measurement.errors == 0
    assert measurement.requests > 10
    assert served > measurement.requests
    assert 0 < measurement.p50_ms <= measurement.p95_ms <= measurement.p99_ms
    # The client's CPU is the processes' that sent the requests, all of it spent within this call.
    cost = measurement.client_cost
    assert 0 < (cost.user_us + cost.system_us) * measurement.requests / 1e6 <= children


def test_stop_early_sees_each_window_and_cuts_the_point_short(triton: EmbeddedServer) -> None:
    seen = []

    def hopeless(window: Measurement) -> bool:
        seen.append(window)
        return True

    server = ModelServer(triton.url, "mlp")
    measurement = LoadGenerator(triton.url, "mlp", QUICK).measure(concurrency=2, stop_early=hopeless)
    server.restore()
    server.close()
    assert measurement.cut_short
    assert measurement.windows == 1
    assert len(seen) == 1
    assert seen[0].requests == measurement.requests > 0


@pytest.mark.usefixtures("handlers_as_in_a_terminal")
def test_ctrl_c_within_a_run_ends_a_measurement_at_its_next_window(triton: EmbeddedServer) -> None:
    """A run notes Ctrl-C and raises it at a safe point (``interruptions.held``): a window's end, not the point's."""
    server = ModelServer(triton.url, "mlp")
    load = LoadGenerator(triton.url, "mlp", replace(QUICK, max_windows=40))  # 12 s, the stability rule aside
    threading.Timer(0.5, signal.raise_signal, [signal.SIGINT]).start()
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), held():
        load.measure(concurrency=2, enough=lambda _: False)
    elapsed = time.perf_counter() - started
    server.restore()
    server.close()
    assert elapsed < 6, "the measurement stopped at a window's end after the signal"


def test_a_point_lets_its_requests_in_flight_finish_instead_of_cancelling_them(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "slow")
    try:
        LoadGenerator(triton.url, "slow", QUICK).measure(concurrency=2)
        answered = server.statistics()["success_count"]
        time.sleep(0.5)
        # A cancelled request would still run on the server and be counted after the point ended.
        assert server.statistics()["success_count"] == answered
    finally:
        server.restore()
        server.close()


def test_a_point_ends_on_time_cancelling_what_is_still_in_flight_a_window_later(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "sleepy")
    started = time.monotonic()
    try:
        measurement = LoadGenerator(triton.url, "sleepy", QUICK).measure(concurrency=2)
    finally:
        elapsed = time.monotonic() - started
        server.restore()
        server.close()
    # Each request takes 5 s; the point's warm-up, windows and one window's grace last about 1.7 s.
    assert elapsed < 4
    assert measurement.requests == 0
    assert measurement.errors == 0
    assert measurement.windows == QUICK.max_windows


def connections_to(port: int) -> set[str]:
    """This process's established TCP connections to ``port``, by socket inode (read from Linux's /proc)."""
    sockets = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # the descriptor that lists the folder is gone by now
            sockets.add(os.readlink(fd))
    connections = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, state, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if remote_port == port and state == "01" and f"socket:[{inode}]" in sockets:  # 01: ESTABLISHED
                connections.add(inode)
    return connections


def test_requests_in_flight_share_a_connection_six_at_most_as_perf_analyzers_do(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "mlp")  # loads it
    port = int(triton.url.rsplit(":", 1)[1])
    before = connections_to(port)
    opened = []

    def count_connections(window: Measurement) -> bool:
        opened.append(len(connections_to(port) - before))
        return True

    LoadGenerator(triton.url, "mlp", QUICK).measure(2 * REQUESTS_PER_CONNECTION + 1, stop_early=count_connections)
    server.restore()
    server.close()
    assert REQUESTS_PER_CONNECTION == 6
    assert opened == [3]


def test_a_warm_up_ends_at_the_first_slice_whose_latency_no_longer_falls_by_a_fifth() -> None:
    # Nothing as the load starts, then a reload's first slow replies, then settling.
    medians_ms = iter([math.nan, 40.0, 12.0, 9.5, 9.4, 9.4])

    def collect(until: float) -> list[Collected]:
        median = next(medians_ms)
        return [Collected(np.empty(0) if math.isnan(median) else np.full(10, median / 1e3), 0, "", CpuTimes.now())]

    started = time.perf_counter()
    ended = asyncio.run(_warm_up(collect, started, longest_s=1.0))
    assert ended.at - started == pytest.approx(4 * WARMUP_SLICE_S), "9.4 ms is within a fifth of 9.5 ms"
    started = time.perf_counter()
    silent = [Collected(np.empty(0), 0, "", CpuTimes.now())]
    ended = asyncio.run(_warm_up(lambda until: silent, started, longest_s=0.25))
    assert ended.at - started == pytest.approx(0.25), "without a reply the warm-up runs to its longest"


def cpu_seconds(times: os.times_result, children: bool = False) -> float:
    return times.children_user + times.children_system if children else times.user + times.system


def test_a_measurement_says_how_much_cpu_its_client_used_per_request(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "mlp")
    before = os.times()
    measurement = LoadGenerator(triton.url, "mlp", QUICK).measure(concurrency=4)
    used = cpu_seconds(os.times()) - cpu_seconds(before)
    server.restore()
    server.close()
    cost = measurement.client_cost
    assert cost.user_us > 0 and cost.system_us >= 0
    # What the windows used is part of what this process used for the whole point, set-up and warm-up included.
    assert (cost.user_us + cost.system_us) * measurement.requests / 1e6 <= used
    assert 0 < cost.core_share <= used / (measurement.windows * QUICK.window_s)


def test_client_processes_say_how_much_cpu_they_used() -> None:
    start = [CpuTimes(1.0, 0.5), CpuTimes(2.0, 0.0)]
    end = [CpuTimes(1.6, 0.6), CpuTimes(2.2, 0.1)]  # 0.7 s and 0.3 s of CPU over 1 s, for 1000 requests
    cost = ClientCost.between(start, end, requests=1000, seconds=1.0)
    assert (cost.user_us, cost.system_us) == (pytest.approx(800.0), pytest.approx(200.0))
    assert cost.core_share == pytest.approx(0.7), "the busiest process's share of a core"
    assert not cost.saturated and ClientCost.between(start, end, 1000, seconds=0.8).saturated
