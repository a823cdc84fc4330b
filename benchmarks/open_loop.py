"""autotune's open loop held against queueing theory and against perf_analyzer's request-rate mode.

    python benchmarks/open_loop.py [--perf-analyzer PATH] [--part theory|agreement] [--no-pin]

Part 1, theory: a model whose service is a fixed 4 ms sleep (one instance, no batching) is an M/D/1 queue under
Poisson arrivals, whose mean wait in the queue is rho / (2 mu (1 - rho)). Its service time is read from Triton's
own statistics at 1 in flight; then Poisson arrivals at 50 % and 80 % of its capacity, 40 s each, give the mean wait
(Triton's queue time per request) and the p95 a client sees, against the theory, beside a closed loop at 1 in
flight, which runs the server busier and sees no queue at all.

Part 2, agreement: three server configs of ``mlp``, each at three rates (30, 60 and 85 % of what a closed loop at
16 in flight reaches), constant and Poisson, measured by perf_analyzer (``--request-rate-range``,
``--request-distribution``) and by autotune's open loop, in turn, ``--repeats`` times each (the medians count: one
run's p95 moves 10-20 % between runs on a small shared machine), 2 s windows. autotune's p95 is shown twice: from
each request's schedule (its own figure, which holds the client's lateness) and from its send (perf_analyzer's).

Server and clients are pinned apart as in ``loadgen_vs_perf_analyzer.py`` (``--no-pin`` lets them share).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from loadgen_vs_perf_analyzer import (
    CONFIGS,
    WINDOW_MS,
    install_perf_analyzer,
    pinned_server,
    repository_for,
    split_cores,
)

from autotune import LoadGenerator, LoadSettings, ModelServer, apply
from autotune.load.schedule import Distribution, Schedule
from autotune.triton.server import server_times

THEORY_MODEL = "sleep_4000us"
LOADS = (0.5, 0.8)
LONG = LoadSettings(warmup_s=2.0, window_s=5.0, max_windows=8)
AGREEMENT = LoadSettings(warmup_s=1.0, window_s=WINDOW_MS / 1000, max_windows=8)
SHARES = (0.3, 0.6, 0.85)
CAP = 512


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", type=Path, help="a perf_analyzer binary (default: install one)")
    parser.add_argument("--no-pin", action="store_true", help="let server and clients share every core")
    parser.add_argument("--part", choices=("all", "theory", "agreement"), default="all")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each agreement point by each tool (median)")
    args = parser.parse_args()
    server_cores, client_cores = split_cores(not args.no_pin)
    perf_analyzer, environment = install_perf_analyzer(args.perf_analyzer)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; server on cores {server_cores}, clients on cores {client_cores}")
    with tempfile.TemporaryDirectory() as tmp, pinned_server(repository_for(Path(tmp) / "repo"), server_cores) as url:
        if args.part in ("all", "theory"):
            theory(url)
        if args.part in ("all", "agreement"):
            agreement(url, _RateAnalyzer(perf_analyzer, environment, url, Path(tmp) / "perf.csv"), args.repeats)
    return 0


def theory(url: str) -> None:
    server = ModelServer(url, THEORY_MODEL)
    load = LoadGenerator(url, THEORY_MODEL, LONG)
    try:
        before = server.statistics()
        closed = load.measure(1, enough=lambda _: False)
        times = server_times(before, server.statistics())
        service_ms = sum(times[f"server_compute_{stage}_ms"] for stage in ("input", "infer", "output"))
        mu = 1e3 / service_ms
        print("\n## Part 1: an M/D/1 queue (Poisson arrivals, a fixed 4 ms sleep, 1 instance, no batching)\n")
        print(f"service time from Triton's statistics: {service_ms:.3f} ms (capacity {mu:.1f} requests/s)\n")
        print("| load | offered /s | throughput /s | service ms | M/D/1 mean wait ms | Triton's mean queue ms | "
              "ratio | client p50 ms | client p95 ms | sent late p50 / p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| closed loop, 1 in flight | | {closed.throughput:.1f} | {service_ms:.3f} | 0 | "
              f"{times['server_queue_ms']:.3f} | | {closed.p50_ms:.2f} | {closed.p95_ms:.2f} | |", flush=True)
        for rho in LOADS:
            before = server.statistics()
            measured = load.measure_rate(Schedule(rho * mu, "poisson", seed=1), CAP, enough=lambda _: False)
            times = server_times(before, server.statistics())
            # The theory with the service time the server had under this load, and the load that made.
            under_load_ms = sum(times[f"server_compute_{stage}_ms"] for stage in ("input", "infer", "output"))
            busy = measured.offered_rate * under_load_ms / 1e3
            expected_ms = busy * under_load_ms / (2 * (1 - busy))
            print(f"| {rho:.0%} ({busy:.1%} busy) | {rho * mu:.1f} | {measured.throughput:.1f} | {under_load_ms:.3f} | "
                  f"{expected_ms:.3f} | {times['server_queue_ms']:.3f} | {times['server_queue_ms'] / expected_ms:.3f} "
                  f"| {measured.p50_ms:.2f} | {measured.p95_ms:.2f} | {measured.send_lag_p50_ms:.2f} / "
                  f"{measured.send_lag_p99_ms:.2f} |", flush=True)
    finally:
        server.restore()
        server.close()


class _RateAnalyzer:
    """perf_analyzer in request-rate mode, with the open loop's windows and a 25 % stability rule."""

    def __init__(self, binary: Path, environment: dict[str, str], url: str, report: Path) -> None:
        self.binary, self.environment, self.url, self.report = binary, environment, url, report

    def measure(self, model: str, rate: float, distribution: Distribution) -> tuple[float, float]:
        """Throughput (infer/s) and p95 (ms) at one rate; NaN where its windows never agreed."""
        command = [str(self.binary), "-m", model, "-u", self.url, "-i", "grpc", "--percentile=95",
                   "--request-rate-range", f"{rate:.0f}", "--request-distribution", distribution, "--async",
                   "--measurement-interval", str(WINDOW_MS), "--stability-percentage", "25",
                   "--max-trials", str(AGREEMENT.max_windows), "-f", str(self.report)]
        done = subprocess.run(command, env=self.environment, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return float("nan"), float("nan")
        with self.report.open() as file:
            row = next(csv.DictReader(file))
        return float(row["Inferences/Second"]), float(row["p95 latency"]) / 1e3


def agreement(url: str, tool: _RateAnalyzer, repeats: int) -> None:
    print("\n## Part 2: autotune's open loop against perf_analyzer's request-rate mode (mlp)\n")
    print(f"Each point {repeats} times by each tool, in turn: the medians, each pair's p95 ratio (from send), and "
          "each tool's own spread (its highest p95 of the point over its lowest).\n")
    print("| server config | distribution | rate /s | PA infer/s | autotune infer/s | ratio | PA p95 ms | "
          "autotune p95 ms (from schedule / from send) | ratios | pairs' ratios from send | own spread PA / autotune | "
          "autotune sent p99 late ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    server = ModelServer(url, "mlp")
    inside = sent_inside = total = 0
    try:
        for name, params in CONFIGS.items():
            server.apply(apply(server.original, params(server.original.max_batch_size)))
            load = LoadGenerator(url, "mlp", AGREEMENT)
            saturated = load.measure(16).throughput
            for share in SHARES:
                rate = round(share * saturated, -1)
                for distribution in ("constant", "poisson"):
                    theirs, ours = [], []
                    for _ in range(repeats):
                        theirs.append(tool.measure("mlp", rate, distribution))
                        ours.append(load.measure_rate(Schedule(rate, distribution), CAP))
                    pa_tput, pa_p95 = (float(np.nanmedian(figures)) for figures in zip(*theirs, strict=True))
                    tput, p95, sent_p95, lag_p99 = (float(np.median(figures)) for figures in zip(
                        *((m.throughput, m.p95_ms, m.sent_p95_ms, m.send_lag_p99_ms) for m in ours), strict=True))
                    tput_ratio, p95_ratio, sent_ratio = tput / pa_tput, p95 / pa_p95, sent_p95 / pa_p95
                    pairs = " ".join(f"{m.sent_p95_ms / p:.2f}" for m, (_, p) in zip(ours, theirs, strict=True))
                    spreads = [max(p95s) / min(p95s)
                               for p95s in ([p for _, p in theirs], [m.sent_p95_ms for m in ours])]
                    total += 1
                    inside += abs(tput_ratio - 1) <= 0.05 and abs(p95_ratio - 1) <= 0.10
                    sent_inside += abs(tput_ratio - 1) <= 0.05 and abs(sent_ratio - 1) <= 0.10
                    print(f"| {name} | {distribution} | {rate:.0f} | {pa_tput:.0f} | {tput:.0f} | "
                          f"{tput_ratio:.3f} | {pa_p95:.2f} | {p95:.2f} / {sent_p95:.2f} | "
                          f"{p95_ratio:.3f} / {sent_ratio:.3f} | {pairs} | {spreads[0]:.2f} / {spreads[1]:.2f} | "
                          f"{lag_p99:.2f} |", flush=True)
    finally:
        server.restore()
        server.close()
    print(f"\npoints within 5 % throughput and 10 % p95 of perf_analyzer: {inside} of {total} with the p95 from "
          f"each request's schedule, {sent_inside} of {total} with the p95 from its send (as perf_analyzer counts)")


if __name__ == "__main__":
    sys.exit(main())
