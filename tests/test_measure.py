"""``autotune measure``: perf_analyzer's table or JSON, config overrides, input data; the model is put back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import model_configs
from test_cli_errors import autotune_error

from autotune.triton.embedded import EmbeddedServer
from autotune.triton.model_config import ModelConfig, params_of
from autotune.triton.server import ModelServer

QUICK = ["--window", "0.3s", "--warmup", "0.2s", "--max-windows", "3"]


def measure(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "autotune", "measure", *QUICK, *args], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def loaded_config(url: str, model: str) -> ModelConfig | None:
    """The config the server runs for ``model``, or None when it is not loaded (and it stays so)."""
    server = ModelServer(url, model)
    try:
        return server.original if server.was_loaded else None
    finally:
        server.restore()
        server.close()


def test_prints_one_perf_analyzer_line_per_concurrency(triton: EmbeddedServer, tmp_path: Path) -> None:
    result = measure("--url", triton.url, "--model", "mlp", "--concurrency", "1,4", cwd=tmp_path)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, level in zip(lines, (1, 4), strict=True):
        assert re.fullmatch(rf"Concurrency: {level}, throughput: \d+\.\d infer/sec, latency p95 \d+ usec( \(.*\))?",
                            line), line


def test_an_open_loop_prints_one_perf_analyzer_line_per_request_rate(triton: EmbeddedServer, tmp_path: Path) -> None:
    result = measure("--url", triton.url, "--model", "mlp", "--request-rate", "100,200", "--distribution", "poisson",
                     cwd=tmp_path)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, rate in zip(lines, (100, 200), strict=True):
        assert re.fullmatch(rf"Request Rate: {rate}, throughput: \d+\.\d infer/sec, latency p95 \d+ usec "
                            r"\(\d+ from each send\), sent p50 \d+\.\d\d ms / p99 \d+\.\d\d ms late( \(.*\))?",
                            line), line


def test_an_open_loop_on_perf_analyzers_intervals_file_in_json(triton: EmbeddedServer, tmp_path: Path) -> None:
    (tmp_path / "intervals.txt").write_text("1000\n9000\n")  # 200 requests a second, in pairs
    (point,) = json.loads(measure("--url", triton.url, "--model", "mlp", "--request-intervals", "intervals.txt",
                                  "--json", cwd=tmp_path).stdout)["points"]
    assert point["concurrency"] == 0 and point["offered_rate"] == pytest.approx(200.0)
    assert point["send_lag_p50_ms"] >= 0 and point["cap_waits"] == 0 and point["requests"] > 0


def test_overrides_are_measured_and_the_model_is_put_back(triton: EmbeddedServer, tmp_path: Path) -> None:
    holder = ModelServer(triton.url, "mlp")  # loaded, as a production model would be
    before = holder.running_config()
    configs = model_configs(triton.model_repository)
    result = measure("--url", triton.url, "--model", "mlp", "--concurrency", "8", "--json",
                     "--set", "dynamic_batching.max_queue_delay_microseconds=2000",
                     "--set", "instance_group.count=2", cwd=tmp_path)
    document = json.loads(result.stdout)
    (point,) = document["points"]
    assert "max_queue_delay_microseconds: 2000" in document["config"]
    assert "count: 2" in document["config"]
    assert point["concurrency"] == 8
    assert point["errors"] == 0
    assert 0 < point["p50_ms"] <= point["p90_ms"] <= point["p95_ms"] <= point["p99_ms"]
    # The batcher waited up to 2 ms: the server saw batches of more than one request, and queueing.
    assert point["server_avg_batch_size"] > 1
    assert point["server_queue_ms"] > 0
    assert params_of(holder.running_config()) == params_of(before)
    assert model_configs(triton.model_repository) == configs, "and its config.pbtxt is never written"
    holder.restore()
    holder.close()


def test_a_dynamic_input_is_sized_with_shape(triton: EmbeddedServer, tmp_path: Path) -> None:
    message = autotune_error("measure", "--url", triton.url, "--model", "dynamic", *QUICK, cwd=tmp_path)
    assert "input INPUT has dynamic shape [-1]: give its size with --shape INPUT:3" in message
    result = measure("--url", triton.url, "--model", "dynamic", "--concurrency", "2", "--shape", "INPUT:16",
                     "--json", cwd=tmp_path)
    assert json.loads(result.stdout)["points"][0]["requests"] > 0
    assert loaded_config(triton.url, "dynamic") is None, "a model autotune loaded is unloaded again"


def test_input_data_in_perf_analyzers_format(triton: EmbeddedServer, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"INPUT": {"content": [1, 2, 3], "shape": [3]}},
                                         {"INPUT": {"content": [4, 5, 6, 7], "shape": [4]}}]}))
    result = measure("--url", triton.url, "--model", "dynamic", "--concurrency", "1", "--input-data", str(data),
                     "--json", cwd=tmp_path)
    assert json.loads(result.stdout)["points"][0]["errors"] == 0


def test_a_config_triton_refuses(triton: EmbeddedServer, tmp_path: Path) -> None:
    message = autotune_error("measure", "--url", triton.url, "--model", "picky", "--set", "dynamic_batching={}",
                             cwd=tmp_path)
    assert "Triton refused the configuration of picky" in message
    assert loaded_config(triton.url, "picky") is None


def test_bad_arguments(triton: EmbeddedServer, tmp_path: Path) -> None:
    assert "--set 'batch=8': ModelConfig has no field 'batch'" in autotune_error(
        "measure", "--url", triton.url, "--model", "mlp", "--set", "batch=8", cwd=tmp_path)
    assert "--concurrency 'many'" in autotune_error(
        "measure", "--url", triton.url, "--model", "mlp", "--concurrency", "many", cwd=tmp_path)
    assert "--concurrency '1,100000': at most 65536 requests in flight" in autotune_error(
        "measure", "--url", triton.url, "--model", "mlp", "--concurrency", "1,100000", cwd=tmp_path)
    assert "--request-rate '0': expected positive requests per second" in autotune_error(
        "measure", "--url", triton.url, "--model", "mlp", "--request-rate", "0", cwd=tmp_path)
    assert "choose --concurrency or an open loop" in autotune_error(
        "measure", "--url", triton.url, "--model", "mlp", "--request-rate", "100", "--concurrency", "4", cwd=tmp_path)
    (tmp_path / "intervals.txt").write_text("1000\nsoon\n")
    assert "intervals.txt: each line must be an interval in microseconds" in autotune_error(
        "measure", "--url", triton.url, "--model", "mlp", "--request-intervals", "intervals.txt", cwd=tmp_path)
    assert "--input-data nowhere.json: no such file" in autotune_error(
        "measure", "--url", triton.url, "--model", "mlp", "--input-data", "nowhere.json", cwd=tmp_path)
