"""The ``autotune`` command line: parses units and paths, wires the pieces together, turns errors into one line."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import optuna
import typer
from optuna_dashboard import save_note
from rich.console import Console
from tritonclient.utils import InferenceServerException

from autotune.dashboard import serve
from autotune.embedded import EmbeddedServer, EmbeddedServerCrashed
from autotune.errors import AutotuneError
from autotune.inputs import InputSpec, parse_shape
from autotune.loadgen import LoadGenerator, LoadSettings, Measurement
from autotune.model_config import override, to_pbtxt
from autotune.progress import TrialProgress
from autotune.report import best_config, export, study_json, study_note, summary
from autotune.server import ModelServer, repository_models, server_times
from autotune.space import MAX_CONCURRENCY, SearchSpace
from autotune.storage import DEFAULT_STORAGE, mask_password, open_storage
from autotune.study import (
    CONFIRM_TOP,
    ConcurrencySearch,
    SamplerName,
    Terminated,
    Tuner,
    check_sampler,
    hardware_differences,
    load_study,
    open_study,
)
from autotune.units import format_ms, parse_duration

DEMO_MODEL = "mlp"
# Fresh embedded servers one optimize run may start after crashes, before it gives up with the crash's error.
MAX_RESTARTS = 3

app = typer.Typer(
    help="Bayesian auto-tuner for NVIDIA Triton Inference Server model configurations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Find the model configuration and client concurrency with the most throughput under a p95 latency limit."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"autotune: error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _server(url: str | None, model_repository: Path) -> Iterator[tuple[str, EmbeddedServer | None]]:
    """The server to work on: ``url``, or an embedded one. Losing it mid-run is one line, with its log if ours."""
    if url is not None:
        with _lost_server(url, None):
            yield url, None
        return
    if not model_repository.is_dir():
        raise AutotuneError(f"model repository {model_repository} is not a directory")
    with EmbeddedServer(model_repository) as embedded, _lost_server(embedded.url, embedded):
        yield embedded.url, embedded


@contextlib.contextmanager
def _lost_server(url: str, embedded: EmbeddedServer | None) -> Iterator[None]:
    try:
        yield
    except InferenceServerException as error:
        crash = embedded.crash_error() if embedded is not None else None
        if crash is not None:
            raise crash from None
        log = f" (server log {embedded.log_path}: {embedded.log_tail()})" if embedded is not None else ""
        raise AutotuneError(f"lost the Triton server at {url}: {error.message()}{log}") from None


def _choose_model(url: str, model: str | None) -> str:
    if model is not None:
        return model
    names = repository_models(url)
    if len(names) == 1:
        return names[0]
    if DEMO_MODEL in names:
        return DEMO_MODEL
    raise AutotuneError(f"the repository holds several models ({', '.join(names)}); choose one with --model")


ModelRepository = Annotated[Path, typer.Option(
    help="Model repository served by the embedded Triton server (ignored with --url).")]
Url = Annotated[str | None, typer.Option(
    help="gRPC host:port of your own Triton server, started with --model-control-mode=explicit. "
    "Default: start the embedded server on loopback.")]
Window = Annotated[str, typer.Option(help="Length of one measurement window.")]
Warmup = Annotated[str, typer.Option(
    help="Load before the first window counts. optimize gives a config that is already warm a 0.1 s settle.")]
MaxWindows = Annotated[int, typer.Option(min=3, help="Windows per point before giving up on stability.")]
Shapes = Annotated[list[str] | None, typer.Option(
    "--shape", help="Size of an input's dynamic dimensions, without the batch one: NAME:d1,d2 (repeatable).")]
InputData = Annotated[Path | None, typer.Option(
    help="Request data instead of random tensors: perf_analyzer's JSON format, or .npz keyed by input name.")]
ClientProcesses = Annotated[int, typer.Option(
    min=1, help="Client processes sharing the requests in flight; raise it when one cannot keep a fast "
    "server busy.")]


def _load_options(window: str, warmup: str, max_windows: int, processes: int, shapes: list[str] | None,
                  input_data: Path | None) -> tuple[LoadSettings, InputSpec]:
    """The load generator's flags, checked before any server starts."""
    settings = LoadSettings(warmup_s=parse_duration(warmup, "--warmup"), window_s=parse_duration(window, "--window"),
                            max_windows=max_windows, processes=processes)
    if input_data is not None and not input_data.is_file():
        raise AutotuneError(f"--input-data {input_data}: no such file")
    return settings, InputSpec(dict(parse_shape(text) for text in shapes or []), input_data)


StudyName = Annotated[str | None, typer.Option("--study", help="Study name. Default: the storage's only study.")]
Storage = Annotated[str, typer.Option(
    help="Optuna storage: sqlite:///FILE, postgresql://USER:PASSWORD@HOST/DB, mysql://..., or journal:FILE.")]


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn what the user can fix, and interruptions, into one line on stderr and an exit code."""
    try:
        yield
    except AutotuneError as error:
        raise _fail(str(error)) from None
    except Terminated:
        raise _fail("terminated; the running trial was recorded as failed, rerun to resume", 143) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; the running trial was recorded as failed, rerun to resume", 130) from None


@app.command(epilog="Example: autotune optimize --url gpu-box:8001 --model resnet50 --max-p95 20ms --trials 40")
def optimize(
    max_p95: Annotated[str, typer.Option(help="p95 latency limit with a unit: 800us, 200ms, 1.5s.")],
    model_repository: ModelRepository = Path("model_repository"),
    model: Annotated[str | None, typer.Option(
        help="Model to tune. Default: the repository's only model, or the demo model 'mlp'.")] = None,
    url: Url = None,
    trials: Annotated[int, typer.Option(min=1, help="Total trials in the study; a rerun tops up to this.")] = 20,
    study_name: Annotated[str | None, typer.Option(
        "--study", help="Study name. Default: MODEL-p95-LIMIT, e.g. mlp-p95-200ms.")] = None,
    storage: Storage = DEFAULT_STORAGE,
    space: Annotated[Path | None, typer.Option(
        help="Search space YAML. Default: studies/MODEL.yaml if present, else built-in bounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampler seed, for repeatable studies.")] = None,
    output: Annotated[Path | None, typer.Option(
        help="Where to write the best config.pbtxt. Default: studies/STUDY/config.pbtxt.")] = None,
    window: Window = "1s",
    warmup: Warmup = "0.5s",
    max_windows: MaxWindows = 8,
    shapes: Shapes = None,
    input_data: InputData = None,
    client_processes: ClientProcesses = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout at the end.")] = False,
    timeout: Annotated[str | None, typer.Option(
        help="Stop this worker after this long, e.g. 10m; the study stays resumable.")] = None,
    patience: Annotated[int | None, typer.Option(
        min=1, help="Stop once this many trials in a row bring no better feasible throughput.")] = None,
    confirm_rounds: Annotated[int, typer.Option(
        min=0, help="At the end, measure the top 3 feasible configs this many more times each and choose the "
        "winner on those runs (the best single measurement is flattered by noise); 0 skips.")] = 2,
    sampler: Annotated[SamplerName, typer.Option(
        help="Optuna sampler: tpe (multivariate TPE), gp (Gaussian process; needs the gp extra, PyTorch) or "
        "random (a yardstick). tpe and gp learn where the p95 limit holds; after the Triton guide's rule of thumb "
        "and its batcher delay ladders (with the fewest and the most instances) they take turns with steps from "
        "the best config so far (one setting moved one step).")] = "tpe",
    concurrency_search: Annotated[ConcurrencySearch, typer.Option(
        help="sample: concurrency is one more sampled setting. sweep: each trial raises it through powers of "
        "two on its config, without reloads, while p95 holds and throughput still grows.")] = "sweep",
    gpus: Annotated[str | None, typer.Option(
        help="GPU ids, e.g. 0,1: one worker with its own embedded server per GPU (CUDA_VISIBLE_DEVICES), "
        "all on one study.")] = None,
) -> None:
    """Tune a model: each trial reloads it with new settings, measures it, and keeps the best feasible one."""
    with _one_line_errors():
        if gpus is not None:
            if url is not None:
                raise AutotuneError("--gpus starts an embedded server per GPU; with --url, run one autotune per server")
            _run_workers([gpu.strip() for gpu in gpus.split(",") if gpu.strip()])
            return
        limit_ms = parse_duration(max_p95, "--max-p95") * 1e3
        settings, inputs = _load_options(window, warmup, max_windows, client_processes, shapes, input_data)
        search_space = SearchSpace.from_yaml(space) if space is not None else None
        check_sampler(sampler)
        budget = Budget(trials, parse_duration(timeout, "--timeout") if timeout else None, patience)
        started = time.monotonic()

        def run() -> optuna.Study:
            with _server(url, model_repository) as (server_url, embedded):
                name = _choose_model(server_url, model or (search_space.model if search_space else None))
                server = ModelServer(server_url, name, explain=embedded.last_error if embedded else None)
                loadgen = LoadGenerator(server_url, name, settings, inputs)
                loadgen.requests()  # inputs that cannot be made fail here, before the study starts
                return _tune(server, loadgen, search_space or _default_space(name),
                             study_name=study_name or f"{name}-p95-{format_ms(limit_ms)}", storage=storage,
                             seed=seed, limit_ms=limit_ms, budget=budget.since(started), quiet=json_output,
                             confirm_rounds=confirm_rounds, search=(sampler, concurrency_search),
                             hardware={"cpu": _cpu()} if embedded else {})

        study = _restarting_crashed_servers(run)
        written = _export_best(study, output or Path("studies") / study.study_name / "config.pbtxt")
        if json_output:
            typer.echo(json.dumps(study_json(study, mask_password(storage), written), indent=2))
        else:
            typer.echo(summary(study, written))


@app.command(epilog="Example: autotune measure --model mlp --concurrency 1,4,16 "
              "--set dynamic_batching.max_queue_delay_microseconds=2000 --set instance_group.count=2")
def measure(
    model_repository: ModelRepository = Path("model_repository"),
    model: Annotated[str | None, typer.Option(
        help="Model to measure. Default: the repository's only model, or the demo model 'mlp'.")] = None,
    url: Url = None,
    concurrency: Annotated[str, typer.Option(help="Requests in flight, one point each: 1,4,16.")] = "1,4,16",
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Model-config field to change for the measurement, in text-format syntax: "
        "dynamic_batching.max_queue_delay_microseconds=2000, instance_group.count=2 (repeatable).")] = None,
    window: Window = "1s",
    warmup: Warmup = "0.5s",
    max_windows: MaxWindows = 8,
    shapes: Shapes = None,
    input_data: InputData = None,
    client_processes: ClientProcesses = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of the table.")] = False,
) -> None:
    """Measure a model as configured, or with --set overrides, at each concurrency, as perf_analyzer would.

    Uses the same load loop as optimize. The model is put back as it was afterwards.
    """
    with _one_line_errors():
        levels = _concurrency_levels(concurrency)
        settings, inputs = _load_options(window, warmup, max_windows, client_processes, shapes, input_data)
        with _server(url, model_repository) as (server_url, embedded):
            name = _choose_model(server_url, model)
            server = ModelServer(server_url, name, explain=embedded.last_error if embedded else None)
            try:
                config = server.original
                for assignment in overrides or []:
                    config = override(config, assignment)
                server.apply(config)
                loadgen = LoadGenerator(server_url, name, settings, inputs)
                points = []
                for level in levels:
                    before = server.statistics()
                    measured = loadgen.measure(level)
                    points.append((measured, server_times(before, server.statistics())))
                    if not json_output:
                        typer.echo(_perf_line(measured))
            finally:
                server.restore()
                server.close()
        if json_output:
            typer.echo(json.dumps({"model": name, "url": server_url if embedded is None else "embedded",
                                   "config": to_pbtxt(config),
                                   "points": [{**m.as_dict(), **times} for m, times in points]}, indent=2))


def _restarting_crashed_servers(run: Callable[[], optuna.Study]) -> optuna.Study:
    """``run`` the study again on a fresh embedded server each time the embedded one crashes, a few times at most.

    Triton's Python backend (2.51, the embedded one) can crash at random under load; the trial it took down is
    recorded as failed and does not count, so the study resumes where it was. A server of the user's own is not
    restarted: that is for its owner to do.
    """
    crashes = 0
    while True:
        try:
            return run()
        except EmbeddedServerCrashed as crash:
            crashes += 1
            if crashes > MAX_RESTARTS:
                raise AutotuneError(f"{crash}; that was its crash number {crashes} in this run, so autotune gives "
                                    "up: rerun to resume the study") from None
            typer.echo(f"autotune: warning: {crash}; starting a new one and resuming the study "
                       f"(restart {crashes} of at most {MAX_RESTARTS})", err=True)


def _concurrency_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise AutotuneError(f"--concurrency {text!r}: expected positive whole numbers, e.g. 1,4,16")
    if max(levels) > MAX_CONCURRENCY:
        raise AutotuneError(f"--concurrency {text!r}: at most {MAX_CONCURRENCY} requests in flight")
    return levels


def _perf_line(measured: Measurement) -> str:
    """One point in perf_analyzer's words, with errors and instability said where there were any."""
    line = (f"Concurrency: {measured.concurrency}, throughput: {measured.throughput:.1f} infer/sec, "
            f"latency p95 {measured.p95_ms * 1e3:.0f} usec")
    if measured.errors:
        line += f", {measured.errors} errors ({measured.first_error})"
    if not measured.stable and not measured.errors:
        line += f" (not stable after {measured.windows} windows)"
    return line


def _run_workers(gpus: list[str]) -> None:
    """Run this same command once per GPU, each worker seeing only its GPU, and pass on the last one's summary.

    The workers share the study through its storage; the one that finishes last reports the whole study.
    """
    if not gpus:
        raise AutotuneError("--gpus: name at least one GPU id, e.g. --gpus 0,1")
    argv = _without_option(sys.argv[1:], "--gpus")
    workers = [subprocess.Popen([sys.executable, "-m", "autotune", *argv], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus]
    # A terminal's Ctrl-C reaches every worker by itself; a SIGTERM sent to this process is passed on.
    signal.signal(signal.SIGTERM, lambda *_: [w.send_signal(signal.SIGTERM) for w in workers])
    finished: list[subprocess.Popen[str]] = []
    try:
        while len(finished) < len(workers):
            finished += [w for w in workers if w not in finished and w.poll() is not None]
            time.sleep(0.2)
    except KeyboardInterrupt:
        for process in workers:
            process.wait()
        raise
    last = finished[-1]
    typer.echo(last.stdout.read() if last.stdout else "", nl=False)
    failed = max(w.returncode for w in workers)
    if failed:
        raise typer.Exit(failed)


def _without_option(args: list[str], name: str) -> list[str]:
    """``args`` less ``name VALUE`` and ``name=VALUE``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept


@dataclass(frozen=True)
class Budget:
    """How much one ``optimize`` may spend: the study's total trials, and this worker's time and patience."""

    trials: int
    timeout_s: float | None = None
    patience: int | None = None

    def since(self, started: float) -> Budget:
        """What is left of this budget when it began at ``started`` (``time.monotonic()``)."""
        if self.timeout_s is None:
            return self
        return replace(self, timeout_s=max(0.0, self.timeout_s - (time.monotonic() - started)))


def _default_space(model: str) -> SearchSpace:
    path = Path("studies") / f"{model}.yaml"
    return SearchSpace.from_yaml(path) if path.exists() else SearchSpace()


def _cpu() -> str:
    """This machine's processor, recorded with studies measured on the embedded server."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'unknown CPU'} x {os.cpu_count()}"


def _tune(server: ModelServer, loadgen: LoadGenerator, space: SearchSpace, *, study_name: str, storage: str,
          seed: int | None, limit_ms: float, budget: Budget, quiet: bool, confirm_rounds: int,
          search: tuple[SamplerName, ConcurrencySearch], hardware: dict[str, str]) -> optuna.Study:
    """Run the study's trials; whatever happens, the model goes back to how the server had it."""
    worker = {"worker_host": socket.gethostname(), "server_url": server.url,
              "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "none")}
    try:
        attrs = {"model": server.model, "max_p95_ms": limit_ms, "space": space.source,
                 "base_config": to_pbtxt(server.original), **server.server_info(), **hardware}
        opened = open_storage(storage, create=True)
        study, created = open_study(study_name, opened, seed, attrs, sampler=search[0])
        differences = hardware_differences(study, attrs)
        if differences:
            typer.echo(f"autotune: warning: this worker's server differs from the study's: {'; '.join(differences)}."
                       " Its trials record worker_host and server_url, so they can be told apart.", err=True)
        guided = search[0] != "random"  # random search is the yardstick: no ladder, no steps
        tuner = Tuner(study, opened, server, loadgen, space, limit_ms, worker, concurrency_search=search[1],
                      local_steps=guided, delay_ladder=guided, rng=np.random.default_rng(seed))
        tuner.enqueue_baseline(created)
        console = Console(stderr=True, soft_wrap=True, quiet=quiet)
        console.print(f"Tuning {server.model} on {server.url}: {budget.trials} trials, p95 limit {limit_ms:g} ms, "
                      f"study {study_name} in {mask_password(storage)}", markup=False, highlight=False)
        try:
            with TrialProgress(study, budget.trials, limit_ms, console) as progress:
                early_stop = tuner.optimize(budget.trials, [progress], budget.timeout_s, budget.patience)
            if early_stop is not None:
                console.print(early_stop, markup=False, highlight=False)
            if confirm_rounds:
                console.print(f"Re-measuring the top {CONFIRM_TOP} feasible configs, {confirm_rounds} rounds ...",
                              markup=False, highlight=False)
                tuner.confirm(confirm_rounds)
        finally:
            save_note(study, study_note(study))
    finally:
        server.restore()
        server.close()
    return study


def _export_best(study: optuna.Study, output: Path) -> Path | None:
    """Write the best trial's config.pbtxt; None when no trial was feasible."""
    found = best_config(study)
    if found is None:
        return None
    export(*found, study, output)
    return output


@app.command()
def best(study_name: StudyName = None, storage: Storage = DEFAULT_STORAGE) -> None:
    """Print the best feasible trial of a study as JSON."""
    with _one_line_errors():
        study = load_study(study_name, storage)
        typer.echo(json.dumps(study_json(study, mask_password(storage), None), indent=2))


@app.command("export")
def export_command(
    output: Annotated[Path, typer.Option(help="Where to write the config.pbtxt.")],
    study_name: StudyName = None,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Write the best feasible trial's configuration as a ready-to-deploy config.pbtxt."""
    with _one_line_errors():
        study = load_study(study_name, storage)
        if _export_best(study, output) is None:
            raise AutotuneError(f"study {study.study_name} has no trial that met its p95 limit without errors")
        typer.echo(f"wrote {output}")


@app.command()
def report(
    study_name: StudyName = None,
    storage: Storage = DEFAULT_STORAGE,
    output: Annotated[Path | None, typer.Option(
        help="Folder for the PNG plots and report.html. Default: studies/STUDY/report.")] = None,
) -> None:
    """Print the summary table and write plots: throughput vs p95 with the limit, vs concurrency, importances."""
    with _one_line_errors():
        study = load_study(study_name, storage)
        from autotune.plots import write_report  # matplotlib loads slowly: only for this command

        files = write_report(study, output or Path("studies") / study.study_name / "report")
        typer.echo(summary(study))
        typer.echo("\n" + "\n".join(f"wrote {path}" for path in files))


@app.command()
def dashboard(
    storage: Storage = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on; the default keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study storage: trials, their metrics and feasibility, the best config."""
    with _one_line_errors():
        opened = open_storage(storage, create=False)
        typer.echo(f"optuna-dashboard for {mask_password(storage)} at http://{host}:{port}/ (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            serve(opened, host=host, port=port)


def run() -> None:
    """Console-script entry point."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    app(prog_name="autotune")

