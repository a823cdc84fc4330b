"""The open-loop sender: requests leave on a schedule, never waiting for replies, as production traffic arrives.

Each latency runs from the request's scheduled send time, not from when the client got round to sending it: a
server that stalls delays the sends due during the stall, and those requests' latencies show it, where a closed
loop would not have sent them at all (coordinated omission). Requests in flight are unbounded up to ``cap``; a
request due while the cap is reached waits for room, and each such wait is counted. How late each request left its
schedule is kept too, so that a point where the client, not the server, fell behind can be told apart.

It has the closed loop's interface (``collect`` at window boundaries, ``close``), so the same clock of windows,
warm-up and client processes measures both.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np

from autotune.load.cpu import CpuTimes
from autotune.load.schedule import Schedule
from autotune.load.windows import Collected

# perf_analyzer's request-rate mode spreads its schedule over 4 threads by default (--max-threads); the open loop
# spreads its requests over as many connections, round-robin.
CONNECTIONS = 4


class OpenLoad:
    """Sends ``requests`` at the schedule's times after ``epoch`` (a ``time.perf_counter`` reading, one clock for
    every process on the machine) as client ``part`` of ``parts`` of it, at most ``cap`` in flight.

    The event loop's timers tick by the millisecond, which would send requests up to a millisecond late and add
    that to latencies of a millisecond or less; a timing thread sleeps until each send time instead (to a tenth of
    a millisecond) and hands the request to the loop.
    """

    def __init__(self, url: str, requests: list[bytes], schedule: Schedule, part: int, parts: int, epoch: float,
                 cap: int, timeout_s: float, channel_options: list[tuple[str, int]], method: str) -> None:
        self._channels = [grpc.aio.insecure_channel(url, options=channel_options) for _ in range(CONNECTIONS)]
        self._infers = [channel.unary_unary(method) for channel in self._channels]
        self._requests = requests
        self._timeout_s = timeout_s
        self._room = asyncio.Semaphore(cap)
        self._ends: list[float] = []
        self._latencies: list[float] = []
        self._lags: list[float] = []
        self._error_ends: list[float] = []
        self._cap_waits: list[float] = []
        self._dues: list[float] = []
        self.first_error = ""
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sent = 0
        self._stopping = threading.Event()
        self._clock = threading.Thread(target=self._keep_time, args=(asyncio.get_running_loop(), schedule, part,
                                                                     parts, epoch), daemon=True)
        self._clock.start()

    def _keep_time(self, loop: asyncio.AbstractEventLoop, schedule: Schedule, part: int, parts: int,
                   epoch: float) -> None:
        """The timing thread: wakes at each send time (``epoch`` plus the schedule's offset) and has the loop send."""
        for chunk in schedule.send_times(part, parts, joined_s=time.perf_counter() - epoch):
            for offset in chunk:
                due = epoch + float(offset)
                if self._stopping.wait(max(0.0, due - time.perf_counter())):
                    return
                loop.call_soon_threadsafe(self._due, due)

    def _due(self, due: float) -> None:
        if self._stopping.is_set():
            return
        self._dues.append(due)
        if self._room.locked():
            self._cap_waits.append(due)
        task = asyncio.get_running_loop().create_task(self._send(self._sent, due))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        self._sent += 1

    async def _send(self, step: int, due: float) -> None:
        await self._room.acquire()
        infer = self._infers[step % CONNECTIONS]
        lag = time.perf_counter() - due
        try:
            await infer(self._requests[step % len(self._requests)], timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            self._error_ends.append(time.perf_counter())
            self.first_error = self.first_error or error.details() or str(error.code())
            return
        finally:
            self._room.release()
        end = time.perf_counter()
        self._ends.append(end)
        self._latencies.append(end - due)
        self._lags.append(lag)

    def collect(self, until: float) -> Collected:
        """The requests that completed by ``until`` (and are not yet collected): latencies, lags, errors, cap waits;
        and how many fell due by then, which the completions are judged against.

        Each list is appended in time order (completions as they land, sends and cap waits as they are due), so a
        cut at ``until`` is a search.
        """
        done = np.searchsorted(self._ends, until, side="right")
        latencies, lags = np.asarray(self._latencies[:done]), np.asarray(self._lags[:done])
        del self._ends[:done], self._latencies[:done], self._lags[:done]
        failed = int(np.searchsorted(self._error_ends, until, side="right"))
        del self._error_ends[:failed]
        waited = int(np.searchsorted(self._cap_waits, until, side="right"))
        del self._cap_waits[:waited]
        due = int(np.searchsorted(self._dues, until, side="right"))
        del self._dues[:due]
        return Collected(latencies, failed, self.first_error, CpuTimes.now(), lags, waited, due)

    async def close(self, grace_s: float) -> None:
        """Send nothing more, let the requests in flight finish for up to ``grace_s``, cancel the rest."""
        self._stopping.set()
        self._clock.join()
        if self._in_flight:
            _, unfinished = await asyncio.wait(set(self._in_flight), timeout=grace_s)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        for channel in self._channels:
            await channel.close()
