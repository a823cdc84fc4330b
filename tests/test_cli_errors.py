"""Bad input gets one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotune.cli.servers import MAX_RESTARTS, restarting_crashed_servers
from autotune.errors import AutotuneError
from autotune.triton.embedded import EmbeddedServerCrashed


def autotune_error(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "autotune", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("autotune: error: ")
    return lines[0]


@pytest.mark.parametrize("limit", ["fast", "200", "200 parsecs", "-1ms"])
def test_a_limit_without_a_valid_unit(tmp_path: Path, limit: str) -> None:
    assert "--max-p95" in autotune_error("optimize", "--max-p95", limit, cwd=tmp_path)


def test_malformed_yaml(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("concurrency: {low: 1, high: [8\n")
    message = autotune_error("optimize", "--max-p95", "10ms", "--space", "space.yaml", cwd=tmp_path)
    assert "space.yaml: malformed YAML" in message


def test_an_unreachable_server(tmp_path: Path) -> None:
    message = autotune_error("optimize", "--max-p95", "10ms", "--url", "127.0.0.1:1", cwd=tmp_path)
    assert "cannot reach a Triton server at 127.0.0.1:1" in message


def test_an_unknown_model_lists_the_repositorys_models(repository: Path, tmp_path: Path) -> None:
    message = autotune_error("optimize", "--max-p95", "10ms", "--model", "resnet", "--model-repository",
                             str(repository), cwd=tmp_path)
    assert "unknown model 'resnet'" in message
    assert "mlp" in message and "wide_mlp" in message


def test_a_missing_model_repository(tmp_path: Path) -> None:
    message = autotune_error("optimize", "--max-p95", "10ms", "--model-repository", "nowhere", cwd=tmp_path)
    assert "model repository nowhere is not a directory" in message


def test_a_storage_url_that_cannot_be_opened(triton, tmp_path: Path) -> None:
    message = autotune_error("optimize", "--max-p95", "10ms", "--url", triton.url,
                             "--storage", "postgresql://tuner:secret@127.0.0.1:1/studies", cwd=tmp_path)
    assert "cannot open storage postgresql://tuner:***@127.0.0.1:1/studies" in message
    assert "secret" not in message


def test_a_full_disk_is_one_line(triton, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here")
    try:
        message = autotune_error("optimize", "--max-p95", "10ms", "--url", triton.url,
                                 "--storage", f"sqlite:///{disk}/studies.db", cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert f"cannot open storage sqlite:///{disk}/studies.db: database or disk is full" in message


def test_a_storage_whose_driver_is_missing_names_what_to_install(tmp_path: Path) -> None:
    message = autotune_error("best", "--storage", "mysql://tuner:secret@127.0.0.1/studies", cwd=tmp_path)
    assert message == ("autotune: error: cannot open storage mysql://tuner:***@127.0.0.1/studies: "
                       "no database driver; install its SQLAlchemy driver")


def test_resuming_a_study_with_another_limit(triton, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'db'}"
    optuna.create_study(study_name="mine", storage=storage).set_user_attr("max_p95_ms", 50.0)
    message = autotune_error("optimize", "--max-p95", "10ms", "--url", triton.url, "--storage", storage,
                             "--study", "mine", "--model", "mlp", cwd=tmp_path)
    assert "study 'mine' was run with max_p95_ms = 50.0, not 10.0" in message


def test_open_loop_flags_that_do_not_fit_together(tmp_path: Path) -> None:
    assert "--distribution and --request-intervals shape an open loop: add --load rate" in autotune_error(
        "optimize", "--max-p95", "10ms", "--distribution", "poisson", cwd=tmp_path)
    assert "--concurrency-search sample is for a closed loop" in autotune_error(
        "optimize", "--max-p95", "10ms", "--load", "rate", "--concurrency-search", "sample", cwd=tmp_path)
    (tmp_path / "intervals.txt").write_text("")
    assert "intervals.txt: the intervals must be microseconds" in autotune_error(
        "optimize", "--max-p95", "10ms", "--load", "rate", "--request-intervals", "intervals.txt", cwd=tmp_path)


def test_a_timeout_without_a_unit(tmp_path: Path) -> None:
    assert "--timeout" in autotune_error("optimize", "--max-p95", "10ms", "--timeout", "10", cwd=tmp_path)


def test_the_embedded_server_is_restarted_after_three_crashes_and_not_after_a_fourth(
    capsys: pytest.CaptureFixture[str],
) -> None:
    attempts: list[int] = []

    def crashing() -> str:
        attempts.append(len(attempts))
        raise EmbeddedServerCrashed("the embedded Triton server exited with signal 11")

    with pytest.raises(AutotuneError, match="crash number 4 in this run, so autotune gives up: rerun to resume"):
        restarting_crashed_servers(crashing)
    assert len(attempts) == MAX_RESTARTS + 1 == 4
    assert capsys.readouterr().err.count("starting a new one and resuming the study") == 3

    outcomes = iter([EmbeddedServerCrashed("signal 6"), "the study"])

    def crashing_once() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert restarting_crashed_servers(crashing_once) == "the study"
