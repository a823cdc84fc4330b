"""The command line's shared options, and their parsing into the typed values the library takes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from autotune.errors import AutotuneError
from autotune.load.inputs import InputSpec, parse_shape
from autotune.load.loop import LoadSettings
from autotune.load.schedule import Distribution, Schedule
from autotune.search import MAX_CONCURRENCY, ConcurrencySearch
from autotune.units import parse_duration

ModelRepository = Annotated[Path, typer.Option(
    help="Model repository served by the embedded Triton server (ignored with --url).")]
Url = Annotated[str | None, typer.Option(
    help="gRPC host:port of your own Triton server, started with --model-control-mode=explicit. "
    "Default: start the embedded server on loopback.")]
Window = Annotated[str, typer.Option(
    help="Length of one measurement window; a window with fewer than 20 replies runs on, up to 4 times as long.")]
Warmup = Annotated[str, typer.Option(
    help="Longest load before the first window counts; it ends sooner once latencies stop falling. optimize gives "
    "a config that is already warm a 0.1 s settle.")]
MaxWindows = Annotated[int, typer.Option(
    min=3, help="Windows per point at most; a point ends sooner once its throughput is known within 10 % and its "
    "p95 within 15 % (90 % confidence).")]
Shapes = Annotated[list[str] | None, typer.Option(
    "--shape", help="Size of an input's dynamic dimensions, without the batch one: NAME:d1,d2 (repeatable).")]
InputData = Annotated[Path | None, typer.Option(
    help="Request data instead of random tensors: perf_analyzer's JSON format, or .npz keyed by input name.")]
ClientProcesses = Annotated[int, typer.Option(
    min=1, help="Client processes sharing the requests in flight; raise it when one cannot keep a fast "
    "server busy.")]
RequestRate = Annotated[str | None, typer.Option(
    help="Open loop instead: requests per second, one point each (500,1000,2000), sent on schedule whatever the "
    "replies; latency counts from each request's scheduled time.")]
RequestIntervals = Annotated[Path | None, typer.Option(
    help="Open loop on perf_analyzer's --request-intervals file: one gap in microseconds per line, looped.")]
RequestDistribution = Annotated[str, typer.Option(
    "--distribution", help="How an open loop's requests are spaced: constant, or poisson (seeded, repeatable).")]
MaxInFlight = Annotated[int, typer.Option(
    min=1, help="An open loop's cap on requests in flight; a request due at the cap waits, and is counted.")]
LoadKind = Literal["concurrency", "rate"]
StudyName = Annotated[str | None, typer.Option("--study", help="Study name. Default: the storage's only study.")]
Storage = Annotated[str, typer.Option(
    help="Optuna storage: sqlite:///FILE, postgresql://USER:PASSWORD@HOST/DB, mysql://..., or journal:FILE.")]


def load_options(window: str, warmup: str, max_windows: int, processes: int, shapes: list[str] | None,
                 input_data: Path | None) -> tuple[LoadSettings, InputSpec]:
    """The load generator's flags, checked before any server starts."""
    settings = LoadSettings(warmup_s=parse_duration(warmup, "--warmup"), window_s=parse_duration(window, "--window"),
                            max_windows=max_windows, processes=processes)
    if input_data is not None and not input_data.is_file():
        raise AutotuneError(f"--input-data {input_data}: no such file")
    return settings, InputSpec(dict(parse_shape(text) for text in shapes or []), input_data)


def concurrency_levels(text: str) -> list[int]:
    """``--concurrency 1,4,16`` as numbers of requests in flight."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise AutotuneError(f"--concurrency {text!r}: expected positive whole numbers, e.g. 1,4,16")
    if max(levels) > MAX_CONCURRENCY:
        raise AutotuneError(f"--concurrency {text!r}: at most {MAX_CONCURRENCY} requests in flight")
    return levels


def schedules(rates: str | None, intervals: Path | None, distribution: str) -> list[Schedule]:
    """The open-loop flags as schedules, one per point; none for a closed loop."""
    chosen = _distribution(distribution)
    if intervals is not None:
        if rates is not None:
            raise AutotuneError("choose --request-rate or --request-intervals, not both")
        return [Schedule.from_file(intervals)]
    if rates is None:
        return []
    try:
        values = [float(part) for part in rates.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < value < float("inf") for value in values):
        raise AutotuneError(f"--request-rate {rates!r}: expected positive requests per second, e.g. 500,1000,2000")
    return [Schedule(rate, chosen) for rate in values]


def _distribution(text: str) -> Distribution:
    if text not in ("constant", "poisson"):
        raise AutotuneError(f"--distribution {text!r}: expected constant or poisson")
    return "poisson" if text == "poisson" else "constant"


def arrivals(load: LoadKind, distribution: str, intervals: Path | None,
             concurrency_search: ConcurrencySearch) -> Schedule | None:
    """``optimize``'s open-loop flags as the pattern its rate sweep scales; None for a closed loop."""
    if load == "concurrency":
        if intervals is not None or distribution != "constant":
            raise AutotuneError("--distribution and --request-intervals shape an open loop: add --load rate")
        return None
    if concurrency_search == "sample":
        raise AutotuneError("--load rate sweeps request rates; --concurrency-search sample is for a closed loop")
    if intervals is not None:
        if distribution != "constant":
            raise AutotuneError("--request-intervals sets the arrivals itself; leave out --distribution")
        return Schedule.from_file(intervals)
    return Schedule(1.0, _distribution(distribution))  # a pattern: the rate sweep sets the rate
