"""autotune's load loop held against perf_analyzer, both run back to back against one embedded Triton server.

    python benchmarks/loadgen_vs_perf_analyzer.py [--perf-analyzer PATH] [--no-pin]
                                                  [--part agreement|rate|overhead|ranking] [--rounds 2]

Part 1 measures the shipped models under three server configs at concurrency 1, 4 and 16 with perf_analyzer,
then autotune, then perf_analyzer again: the two perf_analyzer runs show how much the machine's noise alone
moves a figure. Part 2 measures the highest request rate each tool reaches against a near-free model at
concurrency 16 and 64. Part 3 measures each tool's time per request at concurrency 1 against models that only
sleep (0 to 4 ms, no server CPU): the difference is the client's own round-trip cost. Both tools use windows of
the same length and the same stability rule (p95 and throughput within 10 % over three windows). Part 4
(``ranking.py``, only when asked for) ranks twelve server configs, each at its knee, by both tools.

perf_analyzer ships only in the ``tritonclient==2.51.0`` wheel; without ``--perf-analyzer`` the script installs it
into ``~/.cache/autotune/perf-analyzer`` together with the CUDA runtime library it links against (it needs
Debian's ``libb64-0d`` too). With two or more cores the server runs on the first half and both clients on the
rest (``--no-pin`` turns that off), so that the client that costs more CPU does not look slower for taking
cores from the server.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ranking import RANKING_STABILITY, print_ranking, ranking

from autotune import LoadGenerator, LoadSettings, Measurement, ModelServer, ServerParams, apply

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "autotune" / "perf-analyzer"
WINDOW_MS = 2000
SETTINGS = LoadSettings(warmup_s=1.0, window_s=WINDOW_MS / 1000, max_windows=8)
CONFIGS = {
    "as shipped": lambda mbs: ServerParams(dynamic_batching=False, max_batch_size=mbs),
    "batching 2 ms": lambda mbs: ServerParams(True, mbs, 2000, (mbs,), 1),
    "batching 500 us x2": lambda mbs: ServerParams(True, mbs, 500, (mbs,), 2),
}
CONCURRENCY = (1, 4, 16)
RATE_CONCURRENCY = (16, 64)
SLEEPS_MS = (0.0, 0.5, 1.0, 2.0, 4.0)

SERVE = """
import sys
from pathlib import Path
from autotune import EmbeddedServer
with EmbeddedServer(Path(sys.argv[1])) as server:
    print(server.url, flush=True)
    sys.stdin.read()
"""
NEAR_FREE_CONFIG = """
name: "add_one"
backend: "python"
max_batch_size: 64
input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { }
"""
NEAR_FREE_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() + 1)]) for r in requests]
"""
SLEEPY_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT", data_type: TYPE_FP32, dims: [ 4 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""
SLEEPY_MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({seconds})
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy())]) for r in requests]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", type=Path, help="a perf_analyzer binary (default: install one)")
    parser.add_argument("--no-pin", action="store_true", help="let server and clients share every core")
    parser.add_argument("--part", choices=("all", "agreement", "rate", "overhead", "ranking"), default="all",
                        help="which part to run (all: the first three)")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds of the ranking part")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_cores, client_cores = split_cores(not args.no_pin)
    perf_analyzer, environment = install_perf_analyzer(args.perf_analyzer)
    print(f"{time.strftime('%Y-%m-%d')}, {_cpu()} x {len(cores)}; server on cores {server_cores}, "
          f"clients on cores {client_cores}; windows of {WINDOW_MS} ms")
    with tempfile.TemporaryDirectory() as tmp:
        repository = repository_for(Path(tmp) / "model_repository")
        with pinned_server(repository, server_cores) as url:
            stability = RANKING_STABILITY if args.part == "ranking" else 10
            tool = _PerfAnalyzer(perf_analyzer, environment, url, Path(tmp), stability)
            rows = _agreement(url, tool) if args.part in ("all", "agreement") else []
            rates = _max_rate(url, tool) if args.part in ("all", "rate") else []
            overheads = _overhead(url, tool) if args.part in ("all", "overhead") else []
            ranked = ranking(url, tool, LoadSettings(), args.rounds) if args.part == "ranking" else []
    if rows:
        _print_agreement(rows)
    if rates:
        _print_rates(rates)
    if overheads:
        _print_overheads(overheads)
    if ranked:
        print_ranking(ranked)
    return 0


def split_cores(pin: bool) -> tuple[list[int], list[int]]:
    """The server's cores and the clients' (halves of this machine's, or all for both), this process moved to the
    clients'. Call it before any gRPC thread exists: threads keep the affinity they were born with."""
    cores = sorted(os.sched_getaffinity(0))
    server_cores, client_cores = ((cores[: len(cores) // 2], cores[len(cores) // 2:]) if pin and len(cores) >= 2
                                  else (cores, cores))
    os.sched_setaffinity(0, client_cores)
    return server_cores, client_cores


@contextlib.contextmanager
def pinned_server(repository: Path, cores: list[int]) -> Iterator[str]:
    """An embedded server in a helper process pinned to ``cores``; it stops when its stdin closes."""
    helper = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(repository)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores))
    try:
        url = helper.stdout.readline().strip() if helper.stdout else ""
        if not url:
            sys.exit("the embedded server did not start")
        yield url
    finally:
        if helper.stdin:
            helper.stdin.close()
        helper.wait(timeout=60)


class _PerfAnalyzer:
    def __init__(self, binary: Path, environment: dict[str, str], url: str, tmp: Path, stability: int = 10) -> None:
        self.binary, self.environment, self.url, self.csv = binary, environment, url, tmp / "perf.csv"
        self.stability = stability  # percent: its last three windows within this much of their mean

    def measure(self, model: str, concurrency: int) -> tuple[float, float]:
        """Throughput (infer/s) and p95 (ms) at one concurrency.

        perf_analyzer gives no figures when its windows never agree; it is then asked once more with twice the
        windows, and a point that stays unstable is reported as NaN.
        """
        for max_trials in (SETTINGS.max_windows, 2 * SETTINGS.max_windows):
            command = [str(self.binary), "-m", model, "-u", self.url, "-i", "grpc", "--percentile=95",
                       "--concurrency-range", str(concurrency), "--measurement-interval", str(WINDOW_MS),
                       "--stability-percentage", str(self.stability), "--max-trials", str(max_trials),
                       "-f", str(self.csv)]
            done = subprocess.run(command, env=self.environment, capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                with self.csv.open() as file:
                    row = next(csv.DictReader(file))
                return float(row["Inferences/Second"]), float(row["p95 latency"]) / 1e3
            if "Failed to obtain stable measurement" not in done.stdout + done.stderr:
                sys.exit(f"perf_analyzer failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return float("nan"), float("nan")


def _agreement(url: str, tool: _PerfAnalyzer) -> list[dict[str, object]]:
    rows = []
    for model in ("mlp", "wide_mlp"):
        server = ModelServer(url, model)
        try:
            for name, params in CONFIGS.items():
                server.apply(apply(server.original, params(server.original.max_batch_size)))
                loadgen = LoadGenerator(url, model, SETTINGS)
                for concurrency in CONCURRENCY:
                    first = tool.measure(model, concurrency)
                    ours = loadgen.measure(concurrency)
                    second = tool.measure(model, concurrency)
                    rows.append({"model": model, "config": name, "concurrency": concurrency,
                                 "pa": first, "pa_again": second, "ours": (ours.throughput, ours.p95_ms)})
                    print(_row(rows[-1]), flush=True)
        finally:
            server.restore()
            server.close()
    return rows


def _row(row: dict[str, object]) -> str:
    (pa_tput, pa_p95), (again_tput, again_p95), (tput, p95) = row["pa"], row["pa_again"], row["ours"]
    reference_tput, reference_p95 = np.nanmean([pa_tput, again_tput]), np.nanmean([pa_p95, again_p95])
    return (f"| {row['model']} | {row['config']} | {row['concurrency']} | {pa_tput:.0f} / {again_tput:.0f} | "
            f"{tput:.0f} | {tput / reference_tput:.3f} | {_spread(pa_tput, again_tput):.1%} | "
            f"{pa_p95:.2f} / {again_p95:.2f} | {p95:.2f} | {p95 / reference_p95:.3f} | "
            f"{_spread(pa_p95, again_p95):.1%} |")


def _spread(a: float, b: float) -> float:
    """How far two runs lie apart, relative to their mean."""
    return abs(a - b) / ((a + b) / 2)


def _print_agreement(rows: list[dict[str, object]]) -> None:
    print("\n## Part 1: agreement (perf_analyzer twice, autotune between them)\n")
    print("| model | server config | concurrency | perf_analyzer infer/s (1st / 2nd) | autotune infer/s | "
          "ratio to PA mean | PA vs PA | perf_analyzer p95 ms (1st / 2nd) | autotune p95 ms | ratio to PA mean | "
          "PA vs PA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    measured = [r for r in rows if np.isfinite([r["pa"][0], r["pa_again"][0]]).any()]
    tput_gap = [abs(r["ours"][0] / np.nanmean([r["pa"][0], r["pa_again"][0]]) - 1) for r in measured]
    p95_gap = [abs(r["ours"][1] / np.nanmean([r["pa"][1], r["pa_again"][1]]) - 1) for r in measured]
    tput_noise = [np.nan_to_num(_spread(r["pa"][0], r["pa_again"][0])) for r in measured]
    p95_noise = [np.nan_to_num(_spread(r["pa"][1], r["pa_again"][1])) for r in measured]
    inside = sum(t <= 0.05 and p <= 0.10 for t, p in zip(tput_gap, p95_gap, strict=True))
    explained = sum((t <= 0.05 or t <= tn) and (p <= 0.10 or p <= pn)
                    for t, p, tn, pn in zip(tput_gap, p95_gap, tput_noise, p95_noise, strict=True))
    print(f"\nworst throughput gap to perf_analyzer: {max(tput_gap):.1%} (perf_analyzer against itself: up to "
          f"{max(tput_noise):.1%}); worst p95 gap: {max(p95_gap):.1%} (perf_analyzer against itself: up to "
          f"{max(p95_noise):.1%})")
    print(f"points within 5 % throughput and 10 % p95: {inside} of {len(measured)}; within those bounds or within "
          f"perf_analyzer's own run-to-run spread at that point: {explained} of {len(measured)}"
          + (f"; {len(rows) - len(measured)} points where perf_analyzer never stabilised" if len(measured) < len(rows)
             else ""))


def _max_rate(url: str, tool: _PerfAnalyzer) -> list[tuple[int, str, float, float]]:
    rates = []
    ModelServer(url, "add_one").close()  # loads it
    for concurrency in RATE_CONCURRENCY:
        for processes in (1, 2):
            rates.append((concurrency, "perf_analyzer", *tool.measure("add_one", concurrency)))
            measured: Measurement = LoadGenerator(
                url, "add_one", LoadSettings(warmup_s=1.0, window_s=WINDOW_MS / 1000, processes=processes)
            ).measure(concurrency)
            rates.append((concurrency, f"autotune, {processes} process{'es' if processes > 1 else ''}",
                          measured.throughput, measured.p95_ms))
            print(rates[-2], rates[-1], flush=True)
    return rates


def _print_rates(rates: list[tuple[int, str, float, float]]) -> None:
    print("\n## Part 2: highest request rate against a near-free model (add_one, dynamic batching)\n")
    print("| concurrency | tool | infer/s | p95 ms | ratio to the perf_analyzer run before it |")
    print("|---|---|---|---|---|")
    reference = 0.0
    worst: dict[str, float] = {}
    for concurrency, tool, rate, p95 in rates:
        if tool == "perf_analyzer":
            reference = rate
            print(f"| {concurrency} | {tool} | {rate:.0f} | {p95:.2f} | |")
        else:
            worst[tool] = min(worst.get(tool, float("inf")), rate / reference)
            print(f"| {concurrency} | {tool} | {rate:.0f} | {p95:.2f} | {rate / reference:.3f} |")
    print("\n" + "; ".join(f"worst ratio, {tool}: {ratio:.3f}" for tool, ratio in worst.items()))


def _overhead(url: str, tool: _PerfAnalyzer) -> list[tuple[float, float, float, float]]:
    """Per sleep: ms per request at concurrency 1 of perf_analyzer (mean of the runs before and after), autotune."""
    overheads = []
    for sleep_ms in SLEEPS_MS:
        model = _sleepy_name(sleep_ms)
        ModelServer(url, model).close()  # loads it
        first = tool.measure(model, 1)[0]
        ours = LoadGenerator(url, model, SETTINGS).measure(1).throughput
        second = tool.measure(model, 1)[0]
        overheads.append((sleep_ms, 1e3 / float(np.nanmean([first, second])), 1e3 / ours, _spread(first, second)))
        print(overheads[-1], flush=True)
    return overheads


def _print_overheads(overheads: list[tuple[float, float, float, float]]) -> None:
    print("\n## Part 3: time per request at concurrency 1 against a model that only sleeps\n")
    print("| model sleeps ms | perf_analyzer ms per request | autotune ms per request | throughput ratio | "
          "autotune's extra ms | PA vs PA |")
    print("|---|---|---|---|---|---|")
    for sleep_ms, pa_ms, ours_ms, spread in overheads:
        print(f"| {sleep_ms:g} | {pa_ms:.3f} | {ours_ms:.3f} | {pa_ms / ours_ms:.3f} | {ours_ms - pa_ms:.3f} | "
              f"{spread:.1%} |")


def _sleepy_name(sleep_ms: float) -> str:
    return f"sleep_{round(sleep_ms * 1000)}us"


def repository_for(path: Path) -> Path:
    shutil.copytree(ROOT / "model_repository", path)
    (path / "add_one" / "1").mkdir(parents=True)
    (path / "add_one" / "config.pbtxt").write_text(NEAR_FREE_CONFIG)
    (path / "add_one" / "1" / "model.py").write_text(NEAR_FREE_MODEL)
    for sleep_ms in SLEEPS_MS:
        name = _sleepy_name(sleep_ms)
        (path / name / "1").mkdir(parents=True)
        (path / name / "config.pbtxt").write_text(SLEEPY_CONFIG.format(name=name))
        (path / name / "1" / "model.py").write_text(SLEEPY_MODEL.format(seconds=sleep_ms / 1000))
    return path


def install_perf_analyzer(given: Path | None) -> tuple[Path, dict[str, str]]:
    """perf_analyzer and the environment it runs in: installed on first use, as design notes describe."""
    if ctypes.util.find_library("b64") is None:
        sys.exit("perf_analyzer needs Debian's libb64-0d: apt-get install libb64-0d")
    venv = CACHE / "venv"
    if given is None:
        given = venv / "bin" / "perf_analyzer"
        if not given.exists():
            print(f"installing perf_analyzer into {venv} ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "tritonclient[grpc]==2.51.0",
                            "nvidia-cuda-runtime-cu12"], check=True)
    cudart = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    library_path = ":".join([str(p) for p in cudart] + [os.environ.get("LD_LIBRARY_PATH", "")]).strip(":")
    return given, {**os.environ, "LD_LIBRARY_PATH": library_path}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
