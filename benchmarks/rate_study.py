"""The open loop's study, live: the highest request rate that ``optimize --load rate`` finds on each shipped model,
beside the rate that the closed-loop study's pick sustains.

    python benchmarks/rate_study.py [--models mlp wide_mlp] [--max-p95 20] [--trials 20] [--seed 1] [--rounds 3]
                                    [--distribution poisson] [--perf-analyzer PATH]

1. Studies. For each model, ``autotune optimize --load rate --distribution poisson`` and ``autotune optimize`` (the
   closed loop) run one after the other with the same limit, seed, trials and space (``studies/MODEL.yaml``), each on
   its own embedded server, their wall time the whole command's; their databases stay in
   ``benchmarks/results/studies/`` (not committed).
2. The yardstick. On one embedded server, each pick and the model as shipped are swept again for the highest rate
   they sustain, by the study's own rate sweep from its first rate (64/s, doubling, then bisecting to within 10 %)
   with 1 s windows, round-robin, ``--rounds`` times; a config's score is its median rate. Then perf_analyzer
   (2.51, ``--request-rate-range`` with ``--async``, Poisson) measures every config, ``--rounds`` times round-robin,
   at the rate the rate study's pick was crowned at: whether another client sees that rate sustained, within the
   limit. A rate marked "+" is one above which the client fell behind its schedule: the config may sustain more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen_vs_perf_analyzer import install_perf_analyzer
from open_loop import _RateAnalyzer

from autotune import EmbeddedServer, LoadGenerator, LoadSettings, ModelServer, ServerParams, apply
from autotune.load.policy import Meter
from autotune.load.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
YARDSTICK = LoadSettings(warmup_s=1.0, window_s=1.0, max_windows=8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "wide_mlp"])
    parser.add_argument("--max-p95", type=float, default=20.0, metavar="MS")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distribution", choices=("constant", "poisson"), default="poisson")
    parser.add_argument("--perf-analyzer", type=Path, help="a perf_analyzer binary (default: install one)")
    args = parser.parse_args()
    perf_analyzer, environment = install_perf_analyzer(args.perf_analyzer)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; limit {args.max_p95:g} ms, {args.trials} trials, seed {args.seed}, "
          f"{args.distribution} arrivals")
    with tempfile.TemporaryDirectory() as tmp:
        picks = {model: {load: _study(model, load, args, Path(tmp)) for load in ("rate", "concurrency")}
                 for model in args.models}
        for model, by_load in picks.items():
            for load, pick in by_load.items():
                print(f"{model}, --load {load}: {pick['wall_s']:.0f} s, picked {pick['best']['config']} "
                      f"({_stands(pick['best'])})")
        with EmbeddedServer(ROOT / "model_repository") as server:
            analyzer = _RateAnalyzer(perf_analyzer, environment, server.url, Path(tmp) / "perf.csv")
            for model, by_load in picks.items():
                _yardstick(server.url, model, by_load, args, analyzer)
    return 0


def _study(model: str, load: str, args: argparse.Namespace, tmp: Path) -> dict:
    storage = ROOT / "benchmarks" / "results" / "studies" / f"rate_study-{model}-{load}-{args.seed}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    storage.unlink(missing_ok=True)
    space = ROOT / "studies" / f"{model}.yaml"
    command = [sys.executable, "-m", "autotune", "optimize", "--model", model, "--max-p95", f"{args.max_p95:g}ms",
               "--trials", str(args.trials), "--seed", str(args.seed), "--space", str(space),
               "--storage", f"sqlite:///{storage}", "--output", str(tmp / "config.pbtxt"), "--json", "--load", load,
               *(["--distribution", args.distribution] if load == "rate" else [])]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        sys.exit(f"{model} --load {load} failed: {done.stderr[-2000:]}")
    return {**json.loads(done.stdout), "wall_s": time.monotonic() - started}


def _stands(best: dict) -> str:
    if "offered_rate" in best:
        return f"sustains {best.get('deploy_rate', best['offered_rate']):.0f} requests/s, p95 {best['p95_ms']:.2f} ms"
    return (f"{best['throughput']:.0f} infer/s at concurrency {best.get('deploy_concurrency', best['concurrency'])}, "
            f"p95 {best['p95_ms']:.2f} ms")


def _yardstick(url: str, model: str, by_load: dict[str, dict], args: argparse.Namespace,
               analyzer: _RateAnalyzer) -> None:
    server = ModelServer(url, model)
    configs = {"as shipped": server.original,
               **{f"{load} pick": apply(server.original, ServerParams.from_dict(pick["best"]["config"]))
                  for load, pick in by_load.items()}}
    load = LoadGenerator(url, model, YARDSTICK)
    meter = Meter(load, args.max_p95, YARDSTICK.warmup_s, [1], arrivals=Schedule(1.0, args.distribution))
    rates: dict[str, list[str]] = {name: [] for name in configs}
    try:
        for round_ in range(args.rounds):
            for name in (list(configs) if round_ % 2 == 0 else list(configs)[::-1]):
                reading = meter.rate_trial(server.apply(configs[name]))
                sustained = meter.sustained(reading.measurement)
                # "+": the client fell behind above it, so the config may sustain more
                rates[name].append(f"{reading.measurement.offered_rate if sustained else 0.0:.0f}"
                                   f"{'+' if reading.capped else ''}")
        best = by_load["rate"]["best"]
        at = best.get("deploy_rate", best["offered_rate"])
        print(f"\n### {model}, p95 limit {args.max_p95:g} ms, {args.distribution} arrivals\n")
        print(f"| config | highest rate sustained, {args.rounds} sweeps (median) | vs the rate pick | "
              f"perf_analyzer at {at:.0f}/s, {args.rounds} runs: infer/s (median), p95 ms (each, median) |")
        print("|---|---|---|---|")
        # One perf_analyzer run near a config's capacity can read 16 ms where the next reads 63: as many runs as
        # sweeps, round-robin.
        yardstick: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            for name in (list(configs) if round_ % 2 == 0 else list(configs)[::-1]):
                server.apply(configs[name])
                yardstick[name].append(analyzer.measure(model, at, args.distribution))
        top = statistics.median(float(r.rstrip("+")) for r in rates["rate pick"])
        for name in configs:
            median = statistics.median(float(r.rstrip("+")) for r in rates[name])
            throughput = statistics.median(t for t, _ in yardstick[name])
            p95s = [p for _, p in yardstick[name]]
            print(f"| {name} | {', '.join(rates[name])} ({median:.0f}) | {median / top:.2f} | {throughput:.0f}, "
                  f"{', '.join(f'{p:.2f}' for p in p95s)} ({statistics.median(p95s):.2f}) |")
    finally:
        server.restore()
        server.close()


if __name__ == "__main__":
    raise SystemExit(main())
