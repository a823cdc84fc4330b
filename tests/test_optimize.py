"""``autotune optimize`` end to end, as a user runs it, against real Triton servers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import wsgiref.simple_server
from collections.abc import Iterator
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from conftest import loaded_models, model_configs, wait_for_a_reload
from optuna.trial import TrialState

from autotune.params import ServerParams
from autotune.records import BASE_CONFIG_KEY, CONFIG_KEY, RESTORE_PENDING_KEY, counted, trial_params
from autotune.study.open import left_by
from autotune.triton.embedded import EmbeddedServer
from autotune.triton.model_config import apply, params_of, read_pbtxt, to_pbtxt
from autotune.triton.server import ModelServer

MEASURE = ["--window", "0.3s", "--warmup", "0.2s", "--max-windows", "3"]
QUICK = [*MEASURE, "--confirm-rounds", "0"]


def autotune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autotune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def small_space(tmp_path: Path, **overrides: str) -> Path:
    lines = {"concurrency": "{low: 1, high: 8}", "instance_count": "{low: 1, high: 2}", **overrides}
    path = tmp_path / "space.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in lines.items()))
    return path


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def dashboard_trials(storage: str, name: str) -> list[dict]:
    """The study's trials as optuna-dashboard's HTTP API serves them."""
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage),
                                               handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/api/studies"
    try:
        with urllib.request.urlopen(base) as reply:
            (study_id,) = [s["study_id"] for s in json.load(reply)["study_summaries"] if s["study_name"] == name]
        with urllib.request.urlopen(f"{base}/{study_id}") as reply:
            return json.load(reply)["trials"]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_the_default_run_tunes_the_demo_model_and_exports_a_config_tritonserver_loads(
    repository: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    configs = model_configs(repository)
    result = autotune("optimize", "--max-p95", "50ms", "--trials", "4", "--model-repository", str(repository),
                      "--storage", storage, "--space", str(small_space(tmp_path)), "--json", *MEASURE,
                      "--confirm-rounds", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert model_configs(repository) == configs, "the repository's config.pbtxt files are never written unasked"
    report = json.loads(result.stdout)
    assert report["study"] == "mlp-p95-50ms"
    assert report["trials"]["complete"] + report["trials"]["fail"] == 4
    assert report["baseline"]["config"] == {"dynamic_batching": False, "max_batch_size": 32, "instance_count": 1}
    best = report["best"]
    assert best["p95_ms"] <= 50 and best["errors"] == 0
    assert {"throughput", "p50_ms", "p95_ms", "p99_ms", "concurrency", "config"} <= set(best)
    study = load(storage, "mlp-p95-50ms")
    confirmed = study.user_attrs["confirmed"]
    # The 3 best feasible configurations, each once, as first measured: a trial that repeated earlier settings
    # took their figures instead of measuring them again.
    first_of_config: dict[str, optuna.trial.FrozenTrial] = {}
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE and trial.user_attrs["p95_ms"] <= 50 and not trial.user_attrs["errors"]:
            first_of_config.setdefault(json.dumps(trial.user_attrs["config"], sort_keys=True), trial)
    top3 = sorted(first_of_config.values(), key=lambda t: -t.value)[:3]
    assert [run["trial"] for run in confirmed["trials"]] == [t.number for t in top3]
    assert all(len(run["throughput"]) == 1 for run in confirmed["trials"])
    assert best["trial"] == confirmed["winner"], "the winner of the re-measurement is exported"
    swept = load(storage, "mlp-p95-50ms").trials[best["trial"]].user_attrs["sweep"]
    assert best["concurrency"] in [concurrency for concurrency, _, _ in swept], "concurrency comes from the sweep"
    exported = Path(tmp_path / report["output"])
    assert exported == tmp_path / "studies" / "mlp-p95-50ms" / "config.pbtxt"

    deploy = tmp_path / "deploy"
    shutil.copytree(repository / "mlp", deploy / "mlp")
    shutil.copy(exported, deploy / "mlp" / "config.pbtxt")
    with EmbeddedServer(deploy) as server:
        model = ModelServer(server.url, "mlp")
        running = params_of(model.running_config())
        model.close()
    assert running.as_dict() == best["config"]


def test_concurrency_can_be_sampled_as_one_more_setting_instead_of_swept(
    triton: EmbeddedServer, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    result = autotune("optimize", "--max-p95", "50ms", "--trials", "3", "--url", triton.url, "--storage", storage,
                      "--space", str(small_space(tmp_path)), "--concurrency-search", "sample", "--sampler", "random",
                      *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load(storage, "mlp-p95-50ms").trials
    assert all("sweep" not in t.user_attrs for t in trials)
    assert all(t.params["concurrency"] == t.user_attrs["concurrency"] for t in trials)


def test_an_open_loop_study_finds_the_highest_rate_each_config_sustains_and_says_so(
    triton: EmbeddedServer, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    result = autotune("optimize", "--max-p95", "20ms", "--trials", "2", "--url", triton.url, "--storage", storage,
                      "--space", str(small_space(tmp_path)), "--load", "rate", "--distribution", "poisson",
                      *MEASURE, "--confirm-rounds", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load(storage, "mlp-p95-20ms")
    assert study.user_attrs["load"] == "rate, poisson" and study.metric_names == ["requests/sec sustained"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    for trial in complete:
        rates = [rate for rate, _, _ in trial.user_attrs["sweep"]]
        assert trial.value == trial.user_attrs["offered_rate"] in rates
        assert trial.user_attrs["concurrency"] == 0 and len(trial.constraints) == 3
        assert trial.user_attrs["throughput"] >= 0.95 * trial.user_attrs["due_rate"], "it completed what fell due"
    assert [rate for rate, _, _ in complete[0].user_attrs["sweep"][:2]] == [64, 128], "the baseline doubles from 64/s"
    assert re.search(r"^Best \(trial \d\): sustains \d+ requests/s at p95 [\d.]+ ms", result.stdout, re.M)
    assert "requests/s under poisson arrivals" in result.stdout
    exported = (tmp_path / "studies/mlp-p95-20ms/config.pbtxt").read_text()
    assert "under an open loop (poisson arrivals)" in exported and "requests/s at p95" in exported
    refused = autotune("optimize", "--max-p95", "20ms", "--trials", "3", "--url", triton.url, "--storage", storage,
                       *QUICK, cwd=tmp_path)
    assert refused.returncode == 2
    assert "was run with load = rate, poisson, not concurrency; choose another --study" in refused.stderr


def test_a_rerun_resumes_the_study_and_leaves_the_model_as_it_was(triton: EmbeddedServer, tmp_path: Path) -> None:
    holder = ModelServer(triton.url, "mlp")
    before = holder.running_config()
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    common = ["--max-p95", "50ms", "--url", triton.url, "--storage", storage, "--study", "resume",
              "--space", str(small_space(tmp_path)), "--seed", "7", *QUICK]
    first = autotune("optimize", "--trials", "3", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    first_trials = [(t.number, t.params) for t in load(storage, "resume").trials]

    second = autotune("optimize", "--trials", "5", *common, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    trials = load(storage, "resume").trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [(t.number, t.params) for t in trials[:3]] == first_trials
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert holder.running_config() == before
    holder.restore()
    holder.close()


def test_the_p95_limit_is_a_constraint_both_optuna_and_the_dashboard_read(
    triton: EmbeddedServer, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    space = small_space(tmp_path, concurrency="{low: 1, high: 32}")
    result = autotune("optimize", "--max-p95", "4ms", "--trials", "5", "--url", triton.url, "--storage", storage,
                      "--space", str(space), "--seed", "3", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Pruned trials (a first window far over the limit) carry their constraints too.
    complete = load(storage, "mlp-p95-4ms").get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert complete
    shown = {t["number"]: t for t in dashboard_trials(storage, "mlp-p95-4ms")}
    for trial in complete:
        p95_excess, errors = trial.constraints.values()
        assert p95_excess == pytest.approx(trial.user_attrs["p95_ms"] - 4.0, abs=1e-3)
        assert errors == trial.user_attrs["errors"]
        assert shown[trial.number]["constraints"] == [p95_excess, errors]


def test_a_config_the_server_refuses_fails_its_trial_and_the_study_goes_on(
    triton: EmbeddedServer, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    space = small_space(tmp_path, dynamic_batching="[true]", max_batch_size="{low: 1, high: 8}")
    result = autotune("optimize", "--model", "picky", "--max-p95", "1s", "--trials", "6", "--url", triton.url,
                      "--storage", storage, "--space", str(space), "--seed", "1", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = load(storage, "picky-p95-1000ms").trials
    assert counted(trials) == 6
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the seeded study should have asked for a max_batch_size that picky refuses"
    assert all("picky refuses" in t.user_attrs["fail_reason"] for t in failed)
    assert "picky refuses" in result.stderr
    assert "picky" not in loaded_models(triton.url)


@pytest.mark.parametrize(
    ("signum", "code", "message", "database"),
    [(signal.SIGINT, 130, "interrupted", "sqlite"), (signal.SIGTERM, 143, "terminated", "postgresql")],
)
def test_a_signal_records_the_trial_as_failed_restores_the_model_and_a_rerun_finishes(
    triton: EmbeddedServer, tmp_path: Path, request: pytest.FixtureRequest,
    signum: int, code: int, message: str, database: str,
) -> None:
    sqlite = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = sqlite if database == "sqlite" else request.getfixturevalue("postgres_url")  # may skip: before a load
    holder = ModelServer(triton.url, "mlp")
    before = holder.running_config()
    study_name = f"interrupted-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--trials", "3", "--url", triton.url,
            "--storage", storage, "--study", study_name, "--space", str(small_space(tmp_path)), *QUICK]
    # As from a terminal: a shell running the suite in the background hands its children SIGINT ignored.
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The signal comes once a trial has loaded settings of its own, so that there is something to restore.
    wait_for_a_reload(holder, before, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"autotune: error: {message}")
    assert "Traceback" not in stderr
    *measured, interrupted = [t for t in load(storage, study_name).trials if t.state.is_finished()]
    assert interrupted.state == TrialState.FAIL and interrupted.params, "a trial with settings of its own"
    assert all(t.state != TrialState.FAIL for t in measured)
    assert holder.running_config() == before

    rerun = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # The interrupted trial does not use up one of the three: the rerun measures on until three are done.
    trials = load(storage, study_name).trials
    assert counted(trials) == 3 and [t.state for t in trials].count(TrialState.FAIL) == 1
    assert holder.running_config() == before
    holder.restore()
    holder.close()


def test_a_hung_server_is_one_line_within_a_minute_and_its_trial_is_left_for_a_rerun(
    repository: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    with EmbeddedServer(repository) as hung:
        holder = ModelServer(hung.url, "mlp")
        before = holder.running_config()
        process = subprocess.Popen(
            [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--trials", "5", "--url", hung.url,
             "--storage", storage, "--space", str(small_space(tmp_path)), *QUICK],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_a_reload(holder, before, process)  # hung in a trial of its own settings
        holder.close()
        assert hung.pid is not None
        os.kill(hung.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            _, stderr = process.communicate(timeout=120)
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        waited = time.monotonic() - stopped
        assert process.returncode == 2, stderr
        assert stderr.strip().splitlines()[-1].startswith(f"autotune: error: the Triton server at {hung.url} stopped "
                                                          "answering")
        assert "Traceback" not in stderr
        assert waited < 60, "nothing waits for the server for ever, nor for a model load's timeout"
        (left,) = [t for t in load(storage, "mlp-p95-50ms").trials if t.state == TrialState.FAIL]
        assert "fail_reason" not in left.user_attrs, "it does not count toward --trials: a rerun measures it again"
        # The model still runs the trial's settings once the server answers; a rerun puts back the study's base.
        holder = ModelServer(hung.url, "mlp")
        assert params_of(holder.running_config()) == trial_params(left)
        rerun = autotune("optimize", "--max-p95", "50ms", "--trials", "1", "--url", hung.url, "--storage", storage,
                         "--space", str(small_space(tmp_path)), *QUICK, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert "autotune: warning: mlp still runs trial " in rerun.stderr
        assert params_of(holder.running_config()) == params_of(before)
        assert load(storage, "mlp-p95-50ms").user_attrs[RESTORE_PENDING_KEY] is None, "and says it is done"
        holder.close()


def test_a_rerun_puts_back_only_what_a_restore_that_did_not_finish_left() -> None:
    base = read_pbtxt(Path(__file__).resolve().parent.parent / "model_repository/mlp/config.pbtxt")
    settings = ServerParams(dynamic_batching=True, max_batch_size=8, max_queue_delay_microseconds=500,
                            preferred_batch_size=(8,), instance_count=2)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(BASE_CONFIG_KEY, to_pbtxt(base))
    trial = study.ask()
    trial.set_user_attr(CONFIG_KEY, settings.as_dict())
    study.tell(trial, 1000.0)
    running = apply(base, settings)
    assert left_by(study, running, "127.0.0.1:8001") is None, "a trial's settings the user deployed are theirs"
    study.set_user_attr(RESTORE_PENDING_KEY, "127.0.0.1:8001")
    left = left_by(study, running, "127.0.0.1:8001")
    assert left is not None and left.trial.number == 0 and params_of(left.base) == params_of(base)
    assert left_by(study, running, "127.0.0.1:9001") is None, "another server's model was put back"
    assert left_by(study, base, "127.0.0.1:8001") is None, "the model already runs the config the study began from"


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` cannot be written while this lasts, not even by root (``chattr +i``), even through open files."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this file system cannot make a file immutable (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_storage_that_cannot_be_written_mid_study_is_one_line_restores_the_model_and_a_rerun_finishes(
    triton: EmbeddedServer, tmp_path: Path
) -> None:
    holder = ModelServer(triton.url, "mlp")
    before = holder.running_config()
    database = tmp_path / "studies.db"
    storage = f"sqlite:///{database}"
    args = [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--trials", "3", "--url", triton.url,
            "--storage", storage, "--space", str(small_space(tmp_path)), *QUICK]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_a_reload(holder, before, process)
    with immutable(database):
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, stderr
        assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
        assert stderr.strip().splitlines()[-1].startswith(f"autotune: error: storage {storage} failed: ")
        assert "rerun to resume" in stderr
        assert holder.running_config() == before, "the model is put back, whatever the storage does"
    rerun = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert counted(load(storage, "mlp-p95-50ms").trials) == 3
    assert holder.running_config() == before
    holder.restore()
    holder.close()


def test_a_server_lost_mid_study_is_one_line_and_its_trial_is_left_for_a_rerun(
    repository: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    with EmbeddedServer(repository) as doomed:
        process = subprocess.Popen(
            [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--trials", "5", "--url", doomed.url,
             "--storage", storage, "--space", str(small_space(tmp_path)), *QUICK],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = ""
        while process.stderr and not started.startswith("Tuning mlp") and (line := process.stderr.readline()):
            started = line
        time.sleep(1.0)
        doomed.stop()
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, started + stderr
    assert stderr.strip().splitlines()[-1].startswith(f"autotune: error: lost the Triton server at {doomed.url}")
    assert "Traceback" not in stderr
    (lost,) = [t for t in load(storage, "mlp-p95-50ms").trials if t.state == TrialState.FAIL]
    assert "fail_reason" not in lost.user_attrs, "it does not count toward --trials: a rerun measures it again"


def test_a_crashed_embedded_server_is_replaced_and_the_study_goes_on(repository: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    process = subprocess.Popen(
        [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--trials", "3",
         "--model-repository", str(repository), "--storage", storage, "--space", str(small_space(tmp_path)), *QUICK],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = ""
    while process.stderr and not started.startswith("Tuning mlp") and (line := process.stderr.readline()):
        started = line
    (server,) = [pid for pid, name in _descendants(process.pid).items() if name == "tritonserver"]
    time.sleep(1.0)
    os.kill(server, signal.SIGSEGV)  # as Triton's Python backend has been seen to crash it
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, started + stderr
    (warning,) = [line for line in stderr.splitlines() if line.startswith("autotune: warning:")]
    assert warning.startswith("autotune: warning: the embedded Triton server crashed"), warning
    assert "starting a new one and resuming the study" in warning
    log = Path(re.search(r"log kept at (\S+):", warning).group(1))
    assert "Signal (11)" in log.read_text(), "the crashed server's log is kept for the user to read"
    trials = load(storage, "mlp-p95-50ms").trials
    assert counted(trials) == 3
    (lost,) = [t for t in trials if t.state == TrialState.FAIL]
    assert "fail_reason" not in lost.user_attrs, "the trial the crash took down does not count"
    shutil.rmtree(log.parent)


def test_ctrl_c_with_the_embedded_server_records_the_trial_and_stops_the_server_with_its_model_processes(
    repository: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    process = subprocess.Popen(
        [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--trials", "3",
         "--model-repository", str(repository), "--storage", storage, "--space", str(small_space(tmp_path)), *QUICK],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = ""
    while process.stderr and not started.startswith("Tuning mlp") and (line := process.stderr.readline()):
        started = line
    holder = ModelServer(re.search(r"Tuning mlp on (\S+):", started).group(1), "mlp")
    before = holder.running_config()
    wait_for_a_reload(holder, before, process)  # interrupted in a trial with settings of its own
    holder.close()
    family = _descendants(process.pid)
    assert {"tritonserver", "triton_python_b"} <= set(family.values()), family
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("autotune: error: interrupted")
    assert "Traceback" not in stderr
    deadline = time.monotonic() + 10  # the model processes exit as their server does, within moments
    while any(_alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [family[pid] for pid in family if _alive(pid)], "the server and its model processes stop with it"
    # The last trial (a natural crash of Triton's Python backend may have failed an earlier one, uncounted).
    interrupted = [t for t in load(storage, "mlp-p95-50ms").trials if t.state.is_finished()][-1]
    assert interrupted.state == TrialState.FAIL and interrupted.params, "the running trial, with its settings"


def test_sigterm_while_the_embedded_server_starts_stops_it_with_its_workspace_and_is_one_line(
    repository: Path, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--model-repository", str(repository),
         "--storage", f"sqlite:///{tmp_path / 'studies.db'}", *QUICK],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while "tritonserver" not in _descendants(process.pid).values():
        assert process.poll() is None and time.monotonic() < deadline, "the server should have been started"
        time.sleep(0.02)
    (server,) = [pid for pid, name in _descendants(process.pid).items() if name == "tritonserver"]
    workspace = _workspace(server)
    process.send_signal(signal.SIGTERM)  # before the server answers: no trial has started
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("autotune: error: terminated"), stderr
    assert "Traceback" not in stderr
    assert not _alive(server) and not workspace.exists(), "the server stops at once, and its workspace goes"


def test_the_embedded_server_and_its_model_processes_do_not_outlive_autotune_and_the_next_clears_up(
    repository: Path, tmp_path: Path
) -> None:
    args = [sys.executable, "-m", "autotune", "optimize", "--max-p95", "50ms", "--trials", "50",
            "--model-repository", str(repository), "--storage", f"sqlite:///{tmp_path / 'db'}", *QUICK]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    started = _descendants(process.pid)  # the sample that shows the model's process: a reload can end it a moment on
    while time.monotonic() < deadline and "triton_python_b" not in started.values():
        time.sleep(0.2)
        started = _descendants(process.pid)
    assert {"tritonserver", "triton_python_b"} <= set(started.values()), started
    (server,) = [pid for pid, name in started.items() if name == "tritonserver"]
    workspace = _workspace(server)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in started):
        time.sleep(0.2)
    assert not [started[pid] for pid in started if _alive(pid)]
    assert workspace.exists(), "a killed autotune cannot remove the server's workspace"
    EmbeddedServer(repository).stop()
    assert not workspace.exists(), "the next embedded server does"


def _workspace(server: int) -> Path:
    """The embedded server's workspace, three folders above its executable. The kernel gives an exec'd process
    its new name before its command line, so a server just found by name may not have one yet."""
    deadline = time.monotonic() + 10
    while not (command := Path(f"/proc/{server}/cmdline").read_bytes()):
        assert time.monotonic() < deadline, "the server's command line was never set"
        time.sleep(0.01)
    return Path(command.split(b"\0")[0].decode()).parents[2]


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, by id, with its (kernel-truncated) name."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            parents[int(entry.name)] = (int(rest[1]), name)
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, (parent, name) in parents.items():
            if parent == current and child not in found:
                found[child] = name
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
