"""Triton Model Analyzer 1.58, the incumbent, run the way ``../shared/design.md`` found to work on a CPU machine:
its own venv (it pins an old Optuna), local launch mode on the ``tritonserver`` that autotune embeds, and the same
search bounds and p95 limit as autotune's study. ``study_speed.py`` runs it beside autotune and re-measures its pick.

Model Analyzer restarts the server for every config it measures and measures each with perf_analyzer (here: time
windows of ``WINDOW_MS``, stable within ``STABILITY`` percent, as the yardstick measures).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from autotune import ServerParams
from autotune.triton.embedded import _distribution, _prepare_workspace
from autotune.triton.model_config import params_of, read_pbtxt

VENV = Path.home() / ".cache" / "autotune" / "ma-venv"
PACKAGES = ["triton-model-analyzer==1.58.0", "tritonclient[all]==2.51.0"]
WINDOW_MS = 2000
STABILITY = 25
# The delays its optuna mode may choose from (it takes a list): autotune's range, on a log scale.
DELAYS = [100, 300, 1000, 2000, 4000, 8000, 16000]


@dataclass(frozen=True)
class Outcome:
    """Model Analyzer's pick: the config, the concurrency it measured it at, and its own reading."""

    config: dict[str, object]
    concurrency: int
    throughput: float
    wall_s: float


def install() -> Path:
    """The ``model-analyzer`` command, installed into its own venv on first use."""
    binary = VENV / "bin" / "model-analyzer"
    if not binary.exists():
        print(f"installing Triton Model Analyzer into {VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)
    return binary


def profile(mode: str, model: str, repository: Path, space: dict, limit_ms: float, trials: int, perf_analyzer: Path,
            perf_environment: dict[str, str], work: Path) -> Outcome:
    """Run ``model-analyzer profile`` in ``mode`` (quick or optuna) on one model, timed from start to end."""
    binary = install()
    work = work / f"ma-{mode}-{model}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dist, libs = _distribution()
    server = _prepare_workspace(dist, work / "server")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    library_path = os.pathsep.join(filter(None, [str(libs), perf_environment.get("LD_LIBRARY_PATH", "")]))
    instances = space.get("instance_count", {}).get("high", 4)
    config = {
        "model_repository": str(repository),
        "output_model_repository_path": str(work / "output"),
        "override_output_model_repository": True,
        "export_path": str(work / "export"),
        "checkpoint_directory": str(work / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": str(server / "bin" / "tritonserver"),
        "triton_output_path": str(work / "tritonserver.log"),
        "triton_server_flags": {"backend-directory": str(server / "backends")},
        "triton_server_environment": {"LD_LIBRARY_PATH": library_path, "PATH": path},
        "perf_analyzer_path": str(perf_analyzer),
        # On 2 cores perf_analyzer passes Model Analyzer's 80 % CPU guard, which would drop its measurements.
        "perf_analyzer_cpu_util": 1000,
        # The yardstick's perf_analyzer settings (study_speed.py): at its default 10 % stability perf_analyzer
        # rarely settles on this machine, and Model Analyzer then triples its windows.
        "perf_analyzer_flags": {"measurement-mode": "time_windows", "measurement-interval": WINDOW_MS,
                                "stability-percentage": STABILITY},
        "inference_output_fields": ["model_name", "batch_size", "concurrency", "model_config_path",
                                    "instance_group", "max_batch_size", "satisfies_constraints", "perf_throughput",
                                    "perf_latency_p95"],
        "run_config_search_mode": mode,
        "run_config_search_max_concurrency": space.get("concurrency", {}).get("high", 64),
        "run_config_search_max_instance_count": instances,
        "run_config_search_max_model_batch_size": space.get("max_batch_size", {}).get("high", 32),
        "profile_models": {model: {
            "cpu_only": True,
            "constraints": {"perf_latency_p95": {"max": limit_ms}},
            **({"model_config_parameters": {"dynamic_batching": {"max_queue_delay_microseconds": DELAYS}}}
               if mode == "optuna" else {}),
        }},
    }
    if mode == "optuna":
        config.update(optuna_min_trials=trials, optuna_max_trials=trials, min_percentage_of_search_space=1,
                      max_percentage_of_search_space=100)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    environment = {**os.environ, "PATH": path, "LD_LIBRARY_PATH": library_path}
    started = time.monotonic()
    done = subprocess.run([str(binary), "profile", "-f", str(work / "config.yaml")], cwd=work, env=environment,
                          capture_output=True, text=True, timeout=3600)
    wall_s = time.monotonic() - started
    (work / "model-analyzer.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"Model Analyzer ({mode}) on {model} failed, see {work / 'model-analyzer.log'}: "
                 f"{(done.stderr or done.stdout)[-1500:]}")
    return _best(model, work, limit_ms, wall_s)


def _best(model: str, work: Path, limit_ms: float, wall_s: float) -> Outcome:
    """The measurement with the most throughput that held the limit, from Model Analyzer's inference table."""
    table = next((work / "export" / "results").glob("metrics-model-inference.csv"))
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    throughput = next(name for name in rows[0] if name.startswith("Throughput"))
    held = [row for row in rows if float(row["p95 Latency (ms)"]) <= limit_ms] or rows
    best = max(held, key=lambda row: float(row[throughput]))
    variant = best["Model Config Path"]
    params: ServerParams = params_of(read_pbtxt(work / "output" / variant / "config.pbtxt"))
    return Outcome(params.as_dict(), int(best["Concurrency"]), float(best[throughput]), wall_s)
