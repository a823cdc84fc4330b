"""The asyncio gRPC load loop: keeps N requests in flight and measures throughput and latency percentiles; or,
open, sends them on a schedule (``open_loop``).

It works like perf_analyzer's concurrency mode: a warm-up (ended early once latencies stop falling), then
measurement windows on a fixed clock until the figures are known (``windows.known``: their confidence intervals
narrow enough, or whatever rule the caller gives) or a window cap is reached; a window with replies but fewer than
``MIN_WINDOW_REQUESTS`` runs on for a few window lengths, as perf_analyzer's count windows do. Then no request
is sent any more and those in flight may finish for up to one window; only what is left after that is
cancelled, so one point never takes longer than its warm-up plus one window more than it measured. Cancelling
is the exception on purpose: Triton's gRPC frontend (2.51, the embedded one) can abort when a request is
cancelled as it completes. Latencies are kept exactly and percentiles taken over every request of the windows.
A request belongs to the window in which it completes.

The per-request cost is kept small: each request is serialised once before the load starts and sent as raw
bytes on gRPC channels without retries, so no protobuf is built or parsed per request, and the event loop is
uvloop's where it exists (5 to 14 % more requests per second than asyncio's own, see ``benchmarks/``). Where one
Python process cannot keep up with the server, ``processes`` spreads the requests in flight over several; within
a process, at most six share a connection, as perf_analyzer's do.
Each request stays a unary call, as users' clients send them: one long-lived ``ModelStreamInfer`` stream per
request slot would cost the client less, but it costs the server less too, and Triton 2.51's Python backend
crashed under streamed load (``benchmarks/README.md``). What each client process collects carries its CPU times,
so that a measurement says what the client itself cost (``cpu.ClientCost``).

The module runs past 300 lines because the closed load, its clock of windows and its client processes share
private records (``_Closed``, ``_Open``, ``_Warm``); apart, each would have to export them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np
from tritonclient.utils import InferenceServerException

from autotune.errors import AutotuneError
from autotune.interruptions import safe_point
from autotune.load.cpu import ClientCost, CpuTimes
from autotune.load.inputs import InputSpec, build_requests, tensor_specs
from autotune.load.open_loop import OpenLoad
from autotune.load.schedule import Schedule
from autotune.load.windows import Collected, Measurement, Window, summarise
from autotune.triton.client import connect

try:
    from uvloop import new_event_loop
except ImportError:  # uvloop does not exist on Windows: asyncio's own loop does the same, a little slower
    from asyncio import new_event_loop

T = TypeVar("T")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Retries make gRPC buffer every call; a load generator must see failures, not hide them. A local subchannel
# pool gives each channel a connection of its own instead of sharing one per target across the process.
CHANNEL_OPTIONS = [("grpc.enable_retries", 0), ("grpc.max_send_message_length", -1),
                   ("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
# Triton's C++ client, and so perf_analyzer, shares one connection among at most 6 clients (its
# TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT); the load loop spreads its requests in flight the same way.
REQUESTS_PER_CONNECTION = 6
# A window closes on the clock once it holds this many completions, at most LONGEST_WINDOW window lengths late.
# Twenty make a p95 the second-slowest of them; perf_analyzer's count windows hold 50.
MIN_WINDOW_REQUESTS = 20
LONGEST_WINDOW = 4
# A server that does not describe the model within this long is hung: a stopped process answers nothing.
METADATA_TIMEOUT_S = 10.0
# A warm-up ends at the first slice this long whose median latency is over SETTLED_DROP of the slice before's.
WARMUP_SLICE_S = 0.1
SETTLED_DROP = 0.8


Collect = Callable[[float], list[Collected]]


@dataclass(frozen=True)
class LoadSettings:
    """How long and how carefully to measure one point, and with how many client processes."""

    warmup_s: float = 0.5
    window_s: float = 0.5
    max_windows: int = 6
    stability: float = 0.10
    request_timeout_s: float = 30.0
    processes: int = 1


class _Load:
    """``concurrency`` coroutines sending requests back to back; completions are kept with their end time.

    Coroutine ``i`` sends on connection ``i // REQUESTS_PER_CONNECTION``, as perf_analyzer's clients do: with a
    dynamic batcher at concurrency 16, all requests on one connection read 6 to 7 % under perf_analyzer, and
    2 to 4 % shared this way (``benchmarks/README.md``).
    """

    def __init__(self, url: str, requests: list[bytes], concurrency: int, timeout_s: float) -> None:
        connections = -(-concurrency // REQUESTS_PER_CONNECTION)
        self._channels = [grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) for _ in range(connections)]
        self._infers = [channel.unary_unary(MODEL_INFER) for channel in self._channels]
        self._requests = requests
        self._timeout_s = timeout_s
        self._ends: list[float] = []
        self._latencies: list[float] = []
        self._error_ends: list[float] = []
        self.first_error = ""
        self._stopping = False
        self._tasks = [asyncio.create_task(self._send(i)) for i in range(concurrency)]

    async def _send(self, offset: int) -> None:
        requests, timeout = self._requests, self._timeout_s
        infer = self._infers[offset // REQUESTS_PER_CONNECTION]
        step = offset
        while not self._stopping:
            start = time.perf_counter()
            try:
                await infer(requests[step % len(requests)], timeout=timeout)
            except grpc.aio.AioRpcError as error:
                self._error_ends.append(time.perf_counter())
                self.first_error = self.first_error or error.details() or str(error.code())
                await asyncio.sleep(0.01)  # a failing server answers at once: do not spin on it
                continue
            end = time.perf_counter()
            self._ends.append(end)
            self._latencies.append(end - start)
            step += 1

    def collect(self, until: float) -> Collected:
        """Latencies of the requests that completed by ``until`` (and are not yet collected), and errors."""
        done = np.searchsorted(self._ends, until, side="right")
        latencies = np.asarray(self._latencies[:done])
        del self._ends[:done], self._latencies[:done]
        failed = int(np.searchsorted(self._error_ends, until, side="right"))
        del self._error_ends[:failed]
        return Collected(latencies, failed, self.first_error, CpuTimes.now())

    async def close(self, grace_s: float) -> None:
        """Send nothing more, let the requests in flight finish for up to ``grace_s``, cancel the rest."""
        self._stopping = True
        _, unfinished = await asyncio.wait(self._tasks, timeout=grace_s)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close()


@dataclass(frozen=True)
class _Closed:
    """A client process's share of a closed loop: this many requests in flight."""

    concurrency: int


@dataclass(frozen=True)
class _Open:
    """A client process's share of an open loop: every ``parts``-th request of the schedule started at ``epoch``,
    from ``part`` on."""

    schedule: Schedule
    part: int
    parts: int
    epoch: float
    cap: int


def _start(url: str, requests: list[bytes], share: _Closed | _Open, settings: LoadSettings) -> _Load | OpenLoad:
    if isinstance(share, _Open):
        return OpenLoad(url, requests, share.schedule, share.part, share.parts, share.epoch, share.cap,
                        settings.request_timeout_s, CHANNEL_OPTIONS, MODEL_INFER)
    return _Load(url, requests, share.concurrency, settings.request_timeout_s)


@dataclass(frozen=True)
class _Rules:
    """When a point ends: a window that condemns it, or figures that are enough."""

    stop_early: Callable[[Measurement], bool] | None
    enough: Callable[[Measurement], bool]


_RUNNER: asyncio.Runner | None = None


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on this process's one load-loop event loop.

    grpc.aio delivers completions to the loop it first ran on, and a cancelled request can complete after its
    point ended: a fresh loop per point would leave those completions a closed loop to land on.
    """
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = asyncio.Runner(loop_factory=new_event_loop)
    return _RUNNER.run(coroutine)


def _split(concurrency: int, processes: int) -> list[int]:
    """Requests in flight per process, as even as possible; never a process with none."""
    processes = max(1, min(processes, concurrency))
    return [concurrency // processes + (i < concurrency % processes) for i in range(processes)]


class LoadGenerator:
    """Measures one model on one server at a given concurrency."""

    def __init__(self, url: str, model: str, settings: LoadSettings = LoadSettings(),
                 inputs: InputSpec | None = None) -> None:
        self.url = url
        self.model = model
        self.settings = settings
        self.inputs = inputs or InputSpec()
        self._requests: list[bytes] | None = None

    def requests(self) -> list[bytes]:
        """The serialised requests for the model, built on first use from what the server reports.

        They are kept: they depend on the model's inputs and on whether it batches at all (``max_batch_size`` 0 or
        not), and no search changes either.
        """
        if self._requests is None:
            self._requests = self._build_requests()
        return self._requests

    def _build_requests(self) -> list[bytes]:
        client = connect(self.url)
        try:
            metadata = client.get_model_metadata(self.model, as_json=True, client_timeout=METADATA_TIMEOUT_S)
            config = client.get_model_config(self.model, as_json=True, client_timeout=METADATA_TIMEOUT_S)["config"]
            batching = int(config.get("max_batch_size", 0)) > 0
        except InferenceServerException as error:
            raise AutotuneError(f"cannot read model {self.model!r} from {self.url}: {error.message()}") from None
        finally:
            client.close()
        return build_requests(self.model, tensor_specs(metadata, batching), batching, self.inputs)

    def measure(self, concurrency: int, stop_early: Callable[[Measurement], bool] | None = None,
                warmup_s: float | None = None, enough: Callable[[Measurement], bool] | None = None) -> Measurement:
        """Measure at ``concurrency``. ``stop_early`` sees each window on its own; True condemns the point there.
        ``enough`` sees the figures so far after each window; True ends the point (by default: once they are known
        within the settings' stability, ``windows.known``).

        ``warmup_s`` replaces the settings' warm-up, e.g. with a short settle when the server is already warm.
        """
        shares = [_Closed(share) for share in _split(concurrency, self.settings.processes)]
        rules = _Rules(stop_early, enough or (lambda measured: measured.stable))
        return self._measure(shares, concurrency, rules, warmup_s)

    def measure_rate(self, schedule: Schedule, cap: int, warmup_s: float | None = None,
                     enough: Callable[[Measurement], bool] | None = None,
                     stop_early: Callable[[Measurement], bool] | None = None) -> Measurement:
        """Measure an open loop: requests sent on ``schedule`` whatever the replies, at most ``cap`` in flight;
        the rules as for ``measure``. The point's ``concurrency`` is 0 and its ``offered_rate`` the schedule's."""
        parts = max(1, min(self.settings.processes, cap))
        epoch = time.perf_counter()
        shares = [_Open(schedule, part, parts, epoch, -(-cap // parts)) for part in range(parts)]
        rules = _Rules(stop_early, enough or (lambda measured: measured.stable))
        measured = self._measure(shares, 0, rules, warmup_s)
        return replace(measured, offered_rate=schedule.offered_rate)

    def _measure(self, shares: list[_Closed] | list[_Open], level: int, rules: _Rules,
                 warmup_s: float | None) -> Measurement:
        requests = self.requests()
        warmup = self.settings.warmup_s if warmup_s is None else warmup_s
        if len(shares) == 1:
            return _run(self._measure_here(requests, shares[0], level, rules, warmup))
        return self._measure_in_processes(requests, shares, level, rules, warmup)

    async def _measure_here(self, requests: list[bytes], share: _Closed | _Open, level: int, rules: _Rules,
                            warmup_s: float) -> Measurement:
        load = _start(self.url, requests, share, self.settings)
        try:
            return await self._windows(level, lambda until: [load.collect(until)], rules, warmup_s)
        finally:
            await load.close(self.settings.window_s)

    def _measure_in_processes(self, requests: list[bytes], shares: list[_Closed] | list[_Open], level: int,
                              rules: _Rules, warmup_s: float) -> Measurement:
        context = multiprocessing.get_context("spawn")
        pipes = [context.Pipe() for _ in shares]
        workers = [context.Process(target=_worker, args=(child, self.url, requests, share, self.settings),
                                   daemon=True)
                   for (_, child), share in zip(pipes, shares, strict=True)]
        for worker in workers:
            worker.start()
        try:
            for parent, _ in pipes:
                parent.recv()  # ready: its load is running

            def collect(until: float) -> list[Collected]:
                for parent, _ in pipes:
                    parent.send(until)
                return [parent.recv() for parent, _ in pipes]

            return _run(self._windows(level, collect, rules, warmup_s))
        except EOFError:
            codes = ", ".join(str(worker.exitcode) for worker in workers)
            raise AutotuneError(f"a load-generator client process died (exit codes {codes})") from None
        finally:
            for parent, _ in pipes:
                with contextlib.suppress(OSError):
                    parent.send(None)
            for worker in workers:
                worker.join(timeout=self.settings.window_s + 5)
                if worker.is_alive():
                    worker.kill()

    async def _windows(self, concurrency: int, collect: Collect, rules: _Rules, warmup_s: float) -> Measurement:
        """Warm up, then close one window after another on a fixed clock until the figures are enough."""
        settings = self.settings
        started = time.perf_counter()
        warm = await _warm_up(collect, started, warmup_s)
        boundary = warm.at
        windows: list[Window] = []
        while True:
            opened, parts = boundary, []
            # A window that has replies but fewer than MIN_WINDOW_REQUESTS runs on, up to LONGEST_WINDOW window
            # lengths, so that a slow point's p95 is a percentile of something. One without any (a stall, a model
            # that never answers) closes on time.
            while not parts or (0 < sum(len(p.latencies) + p.errors for p in parts) < MIN_WINDOW_REQUESTS
                                and boundary - opened < LONGEST_WINDOW * settings.window_s - 1e-9):
                boundary += settings.window_s
                await asyncio.sleep(max(0.0, boundary - time.perf_counter()))
                parts += collect(boundary)
                safe_point()
            windows.append(Window(np.concatenate([p.latencies for p in parts]), sum(p.errors for p in parts),
                                  next((p.first_error for p in parts if p.first_error), ""), boundary - opened,
                                  np.concatenate([p.lags for p in parts]), sum(p.cap_waits for p in parts),
                                  sum(p.due for p in parts)))
            so_far = replace(summarise(concurrency, windows, settings.stability), warmup_s=warm.at - started)
            cost = ClientCost.between(warm.cpu, [p.cpu for p in parts[-len(warm.cpu):]], so_far.requests,
                                      boundary - warm.at)
            so_far = so_far.with_client_cost(cost)
            if rules.stop_early is not None and rules.stop_early(summarise(concurrency, windows[-1:], 0.0)):
                return replace(so_far, cut_short=True)
            if windows[-1].errors or rules.enough(so_far) or len(windows) >= settings.max_windows:
                return so_far


class _Warm(NamedTuple):
    """When a warm-up ended, and the CPU each client process had used by then."""

    at: float
    cpu: list[CpuTimes]


async def _warm_up(collect: Collect, started: float, longest_s: float) -> _Warm:
    """Send load for at most ``longest_s`` and drop what it measured; returns when measuring may begin.

    A freshly loaded model answers its first requests slowly (on the demo models the first 0.1 s after a reload
    reads a p95 3 to 5 times the settled one, the next 0.1 s within a third of it): the warm-up ends at the first
    slice of ``WARMUP_SLICE_S`` whose median latency fell by less than ``SETTLED_DROP`` from the slice before.
    """
    boundary, previous = started, math.inf
    parts = collect(boundary)
    while boundary - started < longest_s - 1e-9:
        boundary = min(boundary + WARMUP_SLICE_S, started + longest_s)
        await asyncio.sleep(max(0.0, boundary - time.perf_counter()))
        parts = collect(boundary)
        safe_point()
        latencies = np.concatenate([part.latencies for part in parts])
        median = float(np.median(latencies)) if len(latencies) else math.inf
        if math.isfinite(median) and median > SETTLED_DROP * previous:
            break
        previous = median
    return _Warm(boundary, [part.cpu for part in parts])


def _worker(pipe: Connection, url: str, requests: list[bytes], share: _Closed | _Open,
            settings: LoadSettings) -> None:
    """A client process: runs its share of the load and answers the controller's window boundaries."""

    async def serve() -> None:
        load = _start(url, requests, share, settings)
        loop = asyncio.get_running_loop()
        pipe.send("ready")
        try:
            while (until := await loop.run_in_executor(None, pipe.recv)) is not None:
                pipe.send(load.collect(until))
        finally:
            await load.close(settings.window_s)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the controller to take, at a window's end
    with contextlib.suppress(EOFError), asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve())
