"""Part 4 of ``loadgen_vs_perf_analyzer.py``: whether autotune's load loop ranks server configs as perf_analyzer does.

    python benchmarks/loadgen_vs_perf_analyzer.py --part ranking [--no-pin] [--rounds 2]

Six server configs of each shipped model (twelve in all) are first swept by perf_analyzer over 1, 2, 4, ... 32
requests in flight, and each stands on its knee there: the fewest in flight within 5 % of its best throughput (the
rule autotune's sweep uses). Then every config is measured at that concurrency by both tools, round-robin over the
configs, ``--rounds`` times: autotune with the load settings ``optimize`` uses by default. The configs are ranked
by their median throughput under each tool; Kendall's tau says how well the two orders agree. Each point also gives
both tools' CPU per request: autotune's from its own measurement (its windows only), perf_analyzer's from the CPU
its process used over the run divided by the requests of the run (its throughput times the run's wall time,
start-up included, which flatters perf_analyzer a little).
"""

from __future__ import annotations

import itertools
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from autotune import LoadGenerator, LoadSettings, ModelServer, ServerParams, apply

RANKED: dict[str, Callable[[int], ServerParams]] = {
    "no batching": lambda mbs: ServerParams(dynamic_batching=False, max_batch_size=mbs),
    "no batching x2": lambda mbs: ServerParams(dynamic_batching=False, max_batch_size=mbs, instance_count=2),
    "batching 100 us": lambda mbs: ServerParams(True, mbs, 100, (mbs,), 1),
    "batching 2 ms": lambda mbs: ServerParams(True, mbs, 2000, (mbs,), 1),
    "batching 500 us x2": lambda mbs: ServerParams(True, mbs, 500, (mbs,), 2),
    "batching 8 ms, half batches": lambda mbs: ServerParams(True, mbs, 8000, (max(1, mbs // 2),), 1),
}
LEVELS = (1, 2, 4, 8, 16, 32)
KNEE = 0.05
# perf_analyzer's stability rule here, as in study_speed.py's yardstick: at its default of 10 % most points of a
# knee sweep ran to their window cap and were asked again, and the part took over an hour.
RANKING_STABILITY = 25


class Tool(Protocol):
    """What the ranking needs of perf_analyzer: throughput and p95 at one concurrency (``_PerfAnalyzer``)."""

    def measure(self, model: str, concurrency: int) -> tuple[float, float]: ...


@dataclass
class Point:
    """One config of one model at its knee, and both tools' readings of it."""

    model: str
    config: str
    concurrency: int
    pa: list[tuple[float, float]] = field(default_factory=list)  # throughput, p95 ms
    pa_cpu_us: list[float] = field(default_factory=list)
    ours: list[tuple[float, float]] = field(default_factory=list)
    ours_cpu_us: list[float] = field(default_factory=list)

    def median(self, runs: list[tuple[float, float]], index: int) -> float:
        return statistics.median(run[index] for run in runs)


def ranking(url: str, tool: Tool, settings: LoadSettings, rounds: int) -> list[Point]:
    """Each config at its knee under perf_analyzer, then measured by both tools round-robin."""
    points = [Point(model, name, _knee(url, tool, model, name)) for model in ("mlp", "wide_mlp") for name in RANKED]
    for round_ in range(rounds):
        for point in points if round_ % 2 == 0 else points[::-1]:
            server = ModelServer(url, point.model)
            try:
                server.apply(apply(server.original, RANKED[point.config](server.original.max_batch_size)))
                reading, cpu_us = _perf_analyzer_cost(tool, point.model, point.concurrency)
                point.pa.append(reading)
                point.pa_cpu_us.append(cpu_us)
                measured = LoadGenerator(url, point.model, settings).measure(point.concurrency)
                point.ours.append((measured.throughput, measured.p95_ms))
                point.ours_cpu_us.append(measured.client_user_us + measured.client_system_us)
            finally:
                server.restore()
                server.close()
            print(f"  {point.model} {point.config} at {point.concurrency}: perf_analyzer {point.pa[-1][0]:.0f}/s "
                  f"p95 {point.pa[-1][1]:.2f} ms, autotune {point.ours[-1][0]:.0f}/s p95 {point.ours[-1][1]:.2f} ms",
                  flush=True)
    return points


def _knee(url: str, tool: Tool, model: str, name: str) -> int:
    """The fewest requests in flight within ``KNEE`` of the config's best throughput under perf_analyzer, doubling
    until it gains less than that."""
    server = ModelServer(url, model)
    try:
        server.apply(apply(server.original, RANKED[name](server.original.max_batch_size)))
        readings: dict[int, float] = {}
        for level in LEVELS:
            readings[level] = tool.measure(model, level)[0]
            if len(readings) > 1 and readings[level] < (1 + KNEE) * max(list(readings.values())[:-1]):
                break
    finally:
        server.restore()
        server.close()
    best = max(readings.values())
    return min(level for level, throughput in readings.items() if throughput >= best / (1 + KNEE))


def _perf_analyzer_cost(tool: Tool, model: str, concurrency: int) -> tuple[tuple[float, float], float]:
    """perf_analyzer's reading, and the CPU microseconds per request its process used over the run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    reading = tool.measure(model, concurrency)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return reading, cpu_s / max(reading[0] * wall_s, 1.0) * 1e6


def kendall_tau(first: list[float], second: list[float]) -> float:
    """Kendall's tau-a of two rankings of the same items: concordant minus discordant pairs, over all pairs."""
    pairs = list(itertools.combinations(range(len(first)), 2))
    signs = [(first[i] - first[j]) * (second[i] - second[j]) for i, j in pairs]
    return (sum(s > 0 for s in signs) - sum(s < 0 for s in signs)) / len(pairs)


def print_ranking(points: list[Point]) -> None:
    print("\n## Part 4: ranking of server configs, each at its knee under perf_analyzer, both tools round-robin\n")
    print("| model | server config | concurrency | PA infer/s | autotune infer/s | ratio | PA p95 ms | autotune p95 ms "
          "| ratio | PA CPU us/request | autotune CPU us/request |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in points:
        pa_tput, ours_tput = p.median(p.pa, 0), p.median(p.ours, 0)
        pa_p95, ours_p95 = p.median(p.pa, 1), p.median(p.ours, 1)
        print(f"| {p.model} | {p.config} | {p.concurrency} | {pa_tput:.0f} | {ours_tput:.0f} | "
              f"{ours_tput / pa_tput:.3f} | {pa_p95:.2f} | {ours_p95:.2f} | {ours_p95 / pa_p95:.3f} | "
              f"{statistics.median(p.pa_cpu_us):.0f} | {statistics.median(p.ours_cpu_us):.0f} |")
    measured = [p for p in points if all(run[0] == run[0] for run in p.pa)]  # NaN: perf_analyzer never settled
    pa = [p.median(p.pa, 0) for p in measured]
    ours = [p.median(p.ours, 0) for p in measured]
    tau = kendall_tau(pa, ours)
    same_top = pa.index(max(pa)) == ours.index(max(ours))
    optimistic = [f"{p.model} {p.config}" for p in measured
                  for (_, pa_p95), (_, ours_p95) in zip(p.pa, p.ours, strict=True) if ours_p95 < 0.95 * pa_p95]
    print(f"\nKendall tau {tau:.2f} over {len(measured)} configs; same top config: {same_top}; runs where autotune's "
          f"p95 read more than 5 % under perf_analyzer's: {len(optimistic)}"
          + (f" ({', '.join(optimistic)})" if optimistic else ""))
