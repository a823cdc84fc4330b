"""The load generator's own cost: CPU per request of its processes over a point's windows, and the share of a core
the busiest one used.

A Python client costs more per request than perf_analyzer's C++ one, and where it shares the server's cores, or
saturates its own, it reads less throughput and more latency than the server gives. Each measurement says how much
CPU the client used, so that a reading the client bounded can be told from one the server did.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

# A client process busier than this share of one core starts to delay its own requests; Model Analyzer keeps
# perf_analyzer under 80 % CPU for the same reason.
SATURATED = 0.8


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds one process has used so far, all its threads together (gRPC's poller included)."""

    user_s: float
    system_s: float

    @classmethod
    def now(cls) -> CpuTimes:
        times = os.times()
        return cls(times.user, times.system)


@dataclass(frozen=True)
class ClientCost:
    """What the client's processes used over a point's windows: CPU per request, in microseconds, in user mode and
    in the kernel, and the busiest process's share of one core."""

    user_us: float
    system_us: float
    core_share: float

    @classmethod
    def between(cls, start: Sequence[CpuTimes], end: Sequence[CpuTimes], requests: int, seconds: float) -> ClientCost:
        """The cost from each process's times at the windows' start and end."""
        used = [(e.user_s - s.user_s, e.system_s - s.system_s) for s, e in zip(start, end, strict=True)]
        per_request = 1e6 / max(requests, 1)
        return cls(user_us=sum(u for u, _ in used) * per_request, system_us=sum(s for _, s in used) * per_request,
                   core_share=max(u + s for u, s in used) / seconds if seconds > 0 else 0.0)

    @property
    def saturated(self) -> bool:
        return self.core_share > SATURATED

    def advice(self, load: str) -> str:
        """A one-line warning for a saturated client at ``load`` ("concurrency 16", "500 requests/s"), with what to
        do about it."""
        return (f"autotune: warning: the load generator used {self.core_share:.0%} of a core at {load}, so it may "
                "read less than the server gives: spread it with --client-processes, run it on another host (--url), "
                "or keep the server off its core (taskset)")
