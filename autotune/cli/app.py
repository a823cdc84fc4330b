"""The ``autotune`` commands: each parses its options into typed values and makes one call into the library.

Errors the user can fix, and interruptions, become one line on stderr and an exit code (``one_line_errors``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import optuna
import typer

from autotune.cli.options import (
    ClientProcesses,
    InputData,
    LoadKind,
    MaxInFlight,
    MaxWindows,
    ModelRepository,
    RequestDistribution,
    RequestIntervals,
    RequestRate,
    Shapes,
    Storage,
    StudyName,
    Url,
    Warmup,
    Window,
    arrivals,
    concurrency_levels,
    load_options,
    schedules,
)
from autotune.cli.servers import choose_model, cpu, restarting_crashed_servers, serving
from autotune.cli.workers import run_workers
from autotune.errors import AutotuneError
from autotune.interruptions import Terminated, sigterm_interrupts
from autotune.load.loop import LoadGenerator
from autotune.load.schedule import Schedule
from autotune.records import CONFIRM_ROUNDS, StudySettings
from autotune.report.dashboard import serve
from autotune.report.points import perf_line
from autotune.report.summary import best_config, export, study_json, summary
from autotune.search import ConcurrencySearch, SamplerName, SearchSpace, check_sampler
from autotune.study.open import load_study
from autotune.study.session import Budget, Search, tune
from autotune.study.storage import DEFAULT_STORAGE, mask_password, open_storage
from autotune.triton.model_config import override, to_pbtxt
from autotune.triton.server import ModelServer, server_times
from autotune.units import format_ms, parse_duration

app = typer.Typer(
    help="Bayesian auto-tuner for NVIDIA Triton Inference Server model configurations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _about() -> None:
    """Find the model configuration and client concurrency with the most throughput under a p95 latency limit."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"autotune: error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn what the user can fix, and interruptions (Ctrl-C, SIGTERM, from start-up on), into one line on stderr
    and an exit code."""
    try:
        with sigterm_interrupts():
            yield
    except AutotuneError as error:
        raise _fail(str(error)) from None
    except Terminated:
        raise _fail("terminated; a trial cut short is recorded as failed, rerun to resume", 143) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; a trial cut short is recorded as failed, rerun to resume", 130) from None


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
    window: Window = "0.5s",
    warmup: Warmup = "0.5s",
    max_windows: MaxWindows = 6,
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
        "winner on those runs (the best single measurement is flattered by noise); 0 skips.")] = CONFIRM_ROUNDS,
    sampler: Annotated[SamplerName, typer.Option(
        help="Optuna sampler: tpe (multivariate TPE), gp (Gaussian process; needs the gp extra, PyTorch) or "
        "random (a yardstick). tpe and gp learn where the p95 limit holds; after the Triton guide's rule of thumb "
        "and its batcher delay ladders (with the fewest and the most instances) they take turns with steps from "
        "the best config so far (one setting moved one step); a best that read clearly more with more requests in "
        "flight is also tried on twice the instances.")] = "tpe",
    concurrency_search: Annotated[ConcurrencySearch, typer.Option(
        help="sample: concurrency is one more sampled setting. sweep: each trial doubles it on its config, "
        "without reloads, from where the best config so far peaked (or the batcher's fill level), while p95 holds "
        "and throughput still grows; past the limit it halves, then tries one point between. A config over the "
        "limit where it starts, reading under 0.9 of the best, cannot win and is cut short.")] = "sweep",
    load: Annotated[LoadKind, typer.Option(
        help="concurrency: maximise throughput with clients that keep requests in flight (closed loop). rate: "
        "maximise the request rate a config sustains (completes at least 95 % of it, p95 within the limit, no "
        "errors) with requests sent on a schedule whatever the replies (open loop, as production traffic "
        "arrives); each trial doubles the rate from where it could beat the best, then bisects to within 10 %.")
    ] = "concurrency",
    distribution: RequestDistribution = "constant",
    request_intervals: Annotated[Path | None, typer.Option(
        help="With --load rate: arrivals shaped by perf_analyzer's --request-intervals file (one gap in "
        "microseconds per line), scaled to each rate the sweep tries.")] = None,
    max_in_flight: MaxInFlight = 512,
    gpus: Annotated[str | None, typer.Option(
        help="GPU ids, e.g. 0,1: one worker with its own embedded server per GPU (CUDA_VISIBLE_DEVICES), "
        "all on one study.")] = None,
) -> None:
    """Tune a model: each trial reloads it with new settings, measures it, and keeps the best feasible one."""
    with one_line_errors():
        if gpus is not None:
            if url is not None:
                raise AutotuneError("--gpus starts an embedded server per GPU; with --url, run one autotune per server")
            run_workers([gpu.strip() for gpu in gpus.split(",") if gpu.strip()])
            return
        limit_ms = parse_duration(max_p95, "--max-p95") * 1e3
        settings, inputs = load_options(window, warmup, max_windows, client_processes, shapes, input_data)
        search_space = SearchSpace.from_yaml(space) if space is not None else None
        check_sampler(sampler)
        budget = Budget(trials, parse_duration(timeout, "--timeout") if timeout else None, patience)
        search = Search(sampler, concurrency_search, seed,
                        arrivals=arrivals(load, distribution, request_intervals, concurrency_search),
                        max_in_flight=max_in_flight)
        started = time.monotonic()

        def attempt() -> optuna.Study:
            with serving(url, model_repository) as (server_url, embedded):
                name = choose_model(server_url, model or (search_space.model if search_space else None))
                server = ModelServer(server_url, name, explain=embedded.last_error if embedded else None)
                load = LoadGenerator(server_url, name, settings, inputs)
                load.requests()  # inputs that cannot be made fail here, before the study starts
                return tune(server, load, search_space or _default_space(name),
                            study_name=study_name or f"{name}-p95-{format_ms(limit_ms)}", storage=storage,
                            settings=StudySettings(name, limit_ms, search.load), budget=budget.since(started),
                            search=search,
                            confirm_rounds=confirm_rounds, quiet=json_output,
                            hardware={"cpu": cpu()} if embedded else {})

        study = restarting_crashed_servers(attempt)
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
    concurrency: Annotated[str | None, typer.Option(
        help="Requests in flight, one point each. Default: 1,4,16, unless an open loop is asked for.")] = None,
    request_rate: RequestRate = None,
    request_intervals: RequestIntervals = None,
    distribution: RequestDistribution = "constant",
    max_in_flight: MaxInFlight = 512,
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
    """Measure a model as configured, or with --set overrides, at each concurrency or request rate, as perf_analyzer
    would.

    Uses the same load loop as optimize. The model is put back as it was afterwards.
    """
    with one_line_errors():
        rates = schedules(request_rate, request_intervals, distribution)
        if rates and concurrency is not None:
            raise AutotuneError("choose --concurrency or an open loop (--request-rate, --request-intervals), not both")
        levels = [] if rates else concurrency_levels(concurrency or "1,4,16")
        settings, inputs = load_options(window, warmup, max_windows, client_processes, shapes, input_data)
        with serving(url, model_repository) as (server_url, embedded):
            name = choose_model(server_url, model)
            server = ModelServer(server_url, name, explain=embedded.last_error if embedded else None)
            try:
                config = server.original
                for assignment in overrides or []:
                    config = override(config, assignment)
                server.apply(config)
                load = LoadGenerator(server_url, name, settings, inputs)
                points = []
                for point in rates or levels:
                    before = server.statistics()
                    measured = (load.measure_rate(point, max_in_flight) if isinstance(point, Schedule)
                                else load.measure(point))
                    points.append((measured, server_times(before, server.statistics())))
                    if not json_output:
                        typer.echo(perf_line(measured))
                    if measured.client_cost.saturated and all(not m.client_cost.saturated for m, _ in points[:-1]):
                        typer.echo(measured.client_cost.advice(measured.load), err=True)
            finally:
                server.restore()
                server.close()
        if json_output:
            typer.echo(json.dumps({"model": name, "url": server_url if embedded is None else "embedded",
                                   "config": to_pbtxt(config),
                                   "points": [{**m.as_dict(), **times} for m, times in points]}, indent=2))


def _default_space(model: str) -> SearchSpace:
    path = Path("studies") / f"{model}.yaml"
    return SearchSpace.from_yaml(path) if path.exists() else SearchSpace()


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
    with one_line_errors():
        study = load_study(study_name, storage)
        typer.echo(json.dumps(study_json(study, mask_password(storage), None), indent=2))


@app.command("export")
def export_command(
    output: Annotated[Path, typer.Option(help="Where to write the config.pbtxt.")],
    study_name: StudyName = None,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Write the best feasible trial's configuration as a ready-to-deploy config.pbtxt."""
    with one_line_errors():
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
    with one_line_errors():
        study = load_study(study_name, storage)
        from autotune.report.plots import write_report  # matplotlib loads slowly: only for this command

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
    with one_line_errors():
        opened = open_storage(storage, create=False)
        typer.echo(f"optuna-dashboard for {mask_password(storage)} at http://{host}:{port}/ (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            serve(opened, host=host, port=port)
