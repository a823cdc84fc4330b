"""How close autotune's search comes to the true optimum in few trials, against random search.

    python benchmarks/search_efficiency.py [--models mlp wide_mlp] [--max-p95 20ms] [--regrid] [--confirm-top N]
                                          [--live]

1. The grid. Every server config of the model's default space (``studies/<model>.yaml``) on a grid (batcher
   delay at four log-spaced values, every batch size, preferred "max" and "half", every instance count) is
   loaded once on the embedded server and measured at concurrency 1, 2, 4, ... 64, until p95 passes the limit
   (higher concurrency only adds latency). The 10 best configs are then measured twice more and each point keeps
   its median reading, so that the optimum is not one lucky draw. The table is cached as
   ``benchmarks/grid/<model>.csv`` with the date it was measured (``--grids`` names another directory);
   ``--regrid`` measures it again. Its best feasible point is the true optimum.
2. The replay. autotune's own ``Tuner`` runs against the measured table instead of a live server: a sampled
   setting is snapped to the nearest grid value, and its measurement is the table's with multiplicative noise
   (``--noise``, log-normal; repeated measurements here spread by 0.1 to 0.2). So the search code under test is
   exactly autotune's (enqueued baseline and rules of thumb, delay ladders, local steps, pruning, the sweep,
   re-measuring the top 3), and 3 seeds x 3 budgets x every strategy take seconds instead of hours. A run's result
   is the table's (noise free) throughput of the config it crowns, as a share of the optimum; its wall time is what
   the same trials cost live: the table's reload time where the config changed, plus autotune's default warm-up
   and windows.
3. ``--live`` runs autotune for real (budget 20, default strategy) once per model, to check the replay and to
   read off how much of a trial's wall time goes to reloading and warming up.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna

from autotune import (
    DEFAULT_STRATEGY,
    STARTUP_TRIALS,
    AutotuneError,
    Baseline,
    ConcurrencySearch,
    DelayLadder,
    EmbeddedServer,
    LoadGenerator,
    LoadSettings,
    LocalStep,
    Measurement,
    Meter,
    ModelConfig,
    ModelServer,
    Objective,
    RuleOfThumb,
    SamplerName,
    SearchSpace,
    ServerParams,
    Strategy,
    Tuner,
    apply,
    best_trial,
    check_sampler,
    is_feasible,
    make_sampler,
    params_of,
    read_pbtxt,
    trial_params,
)
from autotune.load.windows import MIN_WINDOWS, relative_error
from autotune.records import CONFIRM_ROUNDS
from autotune.units import format_ms, parse_duration

ROOT = Path(__file__).resolve().parent.parent
GRID_DIR = ROOT / "benchmarks" / "grid"
# The sampled delay domain starts at low/2 = 50 us, and values under 100 us mean "no delay".
GRID_DELAYS = (50, 250, 1400, 8000)
GRID_SETTINGS = LoadSettings(warmup_s=0.5, window_s=0.5, max_windows=6)
FIELDS = ("dynamic_batching", "max_batch_size", "max_queue_delay_microseconds", "preferred_batch_size",
          "instance_count", "concurrency", "throughput", "p50_ms", "p95_ms", "errors", "windows", "reload_s",
          "measured", "round")

Key = tuple[bool, int, int, tuple[int, ...], int]


def grid_params(space: SearchSpace, base: ModelConfig) -> list[ServerParams]:
    """Every distinct server config of ``space`` on the grid, built by the space itself from fixed choices."""
    choices: list[dict[str, object]] = []
    for instances in range(space.instance_count.low, space.instance_count.high + 1):
        if False in space.dynamic_batching or base.max_batch_size == 0:
            choices.append({"instance_count": instances, "dynamic_batching": False})
        if True in space.dynamic_batching and base.max_batch_size > 0:
            for batch, delay, preferred in itertools.product(
                    space.batch_sizes(base), GRID_DELAYS, space.preferred_batch_size):
                choices.append({"instance_count": instances, "dynamic_batching": True, "max_batch_size": batch,
                                "max_queue_delay_microseconds": delay, "preferred_batch_size": preferred})
    return list(dict.fromkeys(space.resolve(c, base) for c in choices))


def key_of(params: ServerParams) -> Key:
    return (params.dynamic_batching, params.max_batch_size, params.max_queue_delay_microseconds,
            tuple(params.preferred_batch_size), params.instance_count)


def measure_grid(model: str, limit_ms: float, path: Path, regrid: bool, top: int, rounds: int) -> None:
    """Measure what ``path`` lacks of the model's grid, on a fresh embedded server, then confirm its top configs.

    Round 0 measures every config once. A config's ladder is complete once measured up to the last concurrency, or
    up to a point past its batcher's fill level (below it the batcher waits out its delay) whose p95 breaks the
    limit; the rest are copies of that point. Then the ``top`` configs with the best feasible throughput are
    measured again until each has ``rounds`` ladders, and each point's figure is its median reading over the rounds
    (``Grid.from_rows``): a single draw of the best cell is biased upwards (the grid's own winner's curse), and a
    search would be scored against a lucky reading. The CSV is rewritten after every ladder, so an interrupted
    grid resumes where it stopped.
    """
    space = SearchSpace.from_yaml(ROOT / "studies" / f"{model}.yaml")
    kept = {} if regrid or not path.exists() else _complete_rows(path, limit_ms)
    configs = {key_of(params): params for params in
               grid_params(space, read_pbtxt(ROOT / "model_repository" / model / "config.pbtxt"))}
    rows = {key: kept[key] for key in configs if key in kept}
    missing = [params for key, params in configs.items() if key not in kept]
    if not missing and not _unconfirmed(rows, limit_ms, top, rounds):
        return
    with EmbeddedServer(ROOT / "model_repository") as embedded:
        server = ModelServer(embedded.url, model, explain=embedded.log_tail)
        loadgen = LoadGenerator(embedded.url, model, GRID_SETTINGS)
        started = time.monotonic()

        def measure(params: ServerParams, round_: int, what: str) -> None:
            rows.setdefault(key_of(params), []).extend(
                _ladder(server, loadgen, params, space.concurrency_levels(), limit_ms, round_))
            _write_grid(path, model, limit_ms, [row for config in rows.values() for row in config])
            print(f"  {model} {what} {key_of(params)} ({time.monotonic() - started:.0f} s)", flush=True)

        for index, params in enumerate(missing):
            measure(params, 0, f"{index + 1}/{len(missing)}")
        while unconfirmed := _unconfirmed(rows, limit_ms, top, rounds):
            key = unconfirmed[0]
            measure(configs[key], _rounds(rows[key]), f"top {top}, round {_rounds(rows[key]) + 1}/{rounds}")
        server.restore()
        server.close()


def _ladder(server: ModelServer, loadgen: LoadGenerator, params: ServerParams, levels: list[int], limit_ms: float,
            round_: int) -> list[dict[str, object]]:
    """One config loaded and measured up the concurrency levels until its p95 breaks the limit past its fill level."""
    began = time.monotonic()
    server.apply(apply(server.original, params))
    reload_s = time.monotonic() - began
    rows: list[dict[str, object]] = []
    stopped: Measurement | None = None
    for concurrency in levels:
        if stopped is None:
            measured = loadgen.measure(concurrency)
            rows.append(_row(params, concurrency, measured, reload_s, measured=True, round_=round_))
            over = measured.p95_ms > limit_ms and concurrency >= params.fill_level
            stopped = measured if over or measured.errors else None
        else:
            rows.append(_row(params, concurrency, stopped, reload_s, measured=False, round_=round_))
    return rows


def _rounds(rows: list[dict[str, object]]) -> int:
    return len({_round_of(row) for row in rows})


def _round_of(row: dict[str, object]) -> int:
    """A row's round; grids measured before rounds existed have no such column and are round 0."""
    return int(row.get("round") or 0)


def _unconfirmed(rows: dict[Key, list[dict[str, object]]], limit_ms: float, top: int, rounds: int) -> list[Key]:
    """The configs among the ``top`` best (on their median figures so far) that have fewer than ``rounds`` ladders."""
    best = Grid.from_rows("", limit_ms, "", [row for config in rows.values() for row in config]).best_per_config()
    ranked = sorted(best, key=best.__getitem__, reverse=True)[:top]
    return [key for key in ranked if _rounds(rows[key]) < rounds]


def _complete_rows(path: Path, limit_ms: float) -> dict[Key, list[dict[str, object]]]:
    """The configs of the CSV whose round-0 ladder is complete, with all their rows."""
    with path.open() as handle:
        handle.readline()
        rows = list(csv.DictReader(handle))
    by_key: dict[Key, list[dict[str, object]]] = {}
    for row in rows:
        by_key.setdefault(_key_of_row(row), []).append(row)
    complete = {}
    for key, config in by_key.items():
        first = [row for row in config if not _round_of(row)]
        measured = [row for row in first if row["measured"] == "1"]
        last = measured[-1]
        fill = max(key[3]) if key[0] else 1
        if len(measured) == len(first) or (int(last["concurrency"]) >= fill and
                                           (float(last["p95_ms"]) > limit_ms or last["errors"] != "0")):
            complete[key] = config
    return complete


def _key_of_row(row: dict[str, object]) -> Key:
    return (int(row["dynamic_batching"]) == 1, int(row["max_batch_size"]), int(row["max_queue_delay_microseconds"]),
            tuple(int(v) for v in row["preferred_batch_size"].split(",") if v), int(row["instance_count"]))


def _write_grid(path: Path, model: str, limit_ms: float, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    repeated = len({_key_of_row(row) for row in rows if _round_of(row)})
    with path.open("w", newline="") as handle:
        handle.write(f"# {model}, p95 limit {limit_ms:g} ms, measured {datetime.date.today()} on "
                     f"{_machine()}, windows of {GRID_SETTINGS.window_s:g} s, {repeated} configs measured again\n")
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _row(params: ServerParams, concurrency: int, point: Measurement, reload_s: float, measured: bool,
         round_: int) -> dict[str, object]:
    return {"dynamic_batching": int(params.dynamic_batching), "max_batch_size": params.max_batch_size,
            "max_queue_delay_microseconds": params.max_queue_delay_microseconds,
            "preferred_batch_size": ",".join(map(str, params.preferred_batch_size)),
            "instance_count": params.instance_count, "concurrency": concurrency,
            "throughput": round(point.throughput, 2), "p50_ms": round(point.p50_ms, 3),
            "p95_ms": round(point.p95_ms, 3), "errors": point.errors, "windows": point.windows,
            "reload_s": round(reload_s, 3), "measured": int(measured), "round": round_}


def _machine() -> str:
    return f"{platform.machine()} x {os.cpu_count()} cores"


@dataclass(frozen=True)
class Point:
    throughput: float
    p50_ms: float
    p95_ms: float
    errors: int
    windows: int
    reload_s: float


@dataclass
class Grid:
    """A model's measured grid: every (server config, concurrency) point, and the p95 limit it was measured for."""

    model: str
    limit_ms: float
    header: str
    points: dict[tuple[Key, int], Point]
    measured: int

    @classmethod
    def read(cls, model: str, limit_ms: float, path: Path) -> Grid:
        with path.open() as handle:
            header = handle.readline().lstrip("# ").strip()
            return cls.from_rows(model, limit_ms, header, list(csv.DictReader(handle)))

    @classmethod
    def from_rows(cls, model: str, limit_ms: float, header: str, rows: list[dict[str, object]]) -> Grid:
        """Each point is its median reading by throughput (the lower one of an even count) over its rounds."""
        readings: dict[tuple[Key, int], list[dict[str, object]]] = {}
        for row in rows:
            readings.setdefault((_key_of_row(row), int(row["concurrency"])), []).append(row)
        points = {}
        for where, ladder in readings.items():
            row = sorted(ladder, key=lambda r: float(r["throughput"]))[(len(ladder) - 1) // 2]
            points[where] = Point(float(row["throughput"]), float(row["p50_ms"]), float(row["p95_ms"]),
                                  int(row["errors"]), int(row["windows"]), float(ladder[0]["reload_s"]))
        return cls(model, limit_ms, header, points, sum(int(row["measured"]) == 1 for row in rows))

    def feasible(self, point: Point) -> bool:
        return point.p95_ms <= self.limit_ms and not point.errors

    def optimum(self) -> tuple[tuple[Key, int], Point]:
        return max(((where, p) for where, p in self.points.items() if self.feasible(p)), key=lambda x: x[1].throughput)

    def best_per_config(self) -> dict[Key, float]:
        """Each config's best feasible throughput (0 where none is)."""
        best: dict[Key, float] = {}
        for (key, _), point in self.points.items():
            best[key] = max(best.get(key, 0.0), point.throughput if self.feasible(point) else 0.0)
        return best

    def snap(self, params: ServerParams, concurrency: int) -> tuple[Key, int]:
        """The grid point nearest a sampled setting: delay and concurrency to the nearest grid value on a log scale
        (a delay of 0 sits where the grid's "no delay" was sampled)."""
        delay = min(GRID_DELAYS, key=lambda d: abs(math.log(d / max(params.max_queue_delay_microseconds, 50))))
        delay = 0 if delay < 100 else delay
        if not params.dynamic_batching:
            delay = 0
        levels = sorted({c for _, c in self.points})
        return ((params.dynamic_batching, params.max_batch_size, delay, tuple(params.preferred_batch_size),
                 params.instance_count), min(levels, key=lambda c: abs(math.log(c / concurrency))))

    def reached(self, params: ServerParams, concurrency: int) -> float:
        """The noise-free share of the optimum that deploying this config at this concurrency gives: 0 where its
        grid point breaks the limit, since such a config is not deployable."""
        point = self.points[self.snap(params, concurrency)]
        return point.throughput / self.optimum()[1].throughput if self.feasible(point) else 0.0


@dataclass
class Clock:
    """What the replayed trials would have cost live, in seconds: reloads, warm-ups and windows."""

    seconds: float = 0.0
    overhead: float = 0.0

    def spend(self, seconds: float, overhead: bool = False) -> None:
        self.seconds += seconds
        self.overhead += seconds if overhead else 0.0


class ReplayServer:
    """Stands in for ``ModelServer``: "loading" a config remembers it and bills the grid's reload time for it."""

    def __init__(self, grid: Grid, base: ModelConfig, clock: Clock) -> None:
        self.original, self.model, self.url = base, grid.model, "replay"
        self._grid, self._clock = grid, clock
        self.loaded = params_of(base)

    def apply(self, config: ModelConfig) -> bool:
        params = params_of(config)
        reloaded = self._grid.snap(params, 1) != self._grid.snap(self.loaded, 1)
        if reloaded:
            self._clock.spend(self._grid.points[self._grid.snap(params, 1)].reload_s, overhead=True)
        self.loaded = params
        return reloaded

    def statistics(self) -> dict[str, float]:
        return dict.fromkeys(("success_count", "execution_count", "queue_ns", "compute_input_ns",
                              "compute_infer_ns", "compute_output_ns"), 0.0)


@dataclass
class ReplayLoad:
    """Stands in for ``LoadGenerator``: the grid's figures for the loaded config, with log-normal noise.

    Throughput is multiplied by the noise factor and latency divided by it (Little's law at a fixed concurrency).
    A point costs autotune's default warm-up plus as many windows as the grid needed to settle, one window when
    ``stop_early`` condemns it (``pruning=False`` ignores that, to show what pruning saves), or two when ``enough``
    is satisfied by two windows whose figures are as uncertain as the noise makes them.
    """

    grid: Grid
    server: ReplayServer
    clock: Clock
    noise: float
    rng: np.random.Generator
    pruning: bool = True
    settings: LoadSettings = field(default_factory=LoadSettings)

    def measure(self, concurrency: int, stop_early: object = None, warmup_s: float | None = None,
                enough: object = None) -> Measurement:
        point = self.grid.points[self.grid.snap(self.server.loaded, concurrency)]
        factor = float(np.exp(self.rng.normal(0.0, self.noise)))
        two_windows = relative_error([1 - self.noise, 1 + self.noise])
        measured = Measurement(
            concurrency=concurrency, throughput=point.throughput * factor, p50_ms=point.p50_ms / factor,
            p90_ms=point.p95_ms / factor, p95_ms=point.p95_ms / factor, p99_ms=point.p95_ms / factor,
            requests=max(1, round(point.throughput)), errors=point.errors, windows=MIN_WINDOWS, stable=False,
            throughput_error=two_windows, p95_error=two_windows)
        if not (callable(enough) and enough(measured)):
            measured = replace(measured, windows=max(point.windows, MIN_WINDOWS), stable=True, throughput_error=0.0,
                               p95_error=0.0)
        if self.pruning and callable(stop_early) and stop_early(measured):
            measured = replace(measured, windows=1, cut_short=True)
        self.clock.spend(self.settings.warmup_s if warmup_s is None else warmup_s, overhead=True)
        self.clock.spend(measured.windows * self.settings.window_s)
        return measured


@dataclass(frozen=True)
class Variant:
    """One way of searching, replayed: a sampler, how concurrency is searched, and the strategy's composition."""

    name: str
    sampler: SamplerName = "tpe"
    concurrency: ConcurrencySearch = "sweep"
    strategy: Strategy = DEFAULT_STRATEGY
    confirm_rounds: int = CONFIRM_ROUNDS
    pruning: bool = True
    startup: int = STARTUP_TRIALS


SAMPLER_ALONE = Strategy()
VARIANTS = (
    Variant("tpe, concurrency sweep (default)"),
    Variant("tpe, sampled concurrency", concurrency="sample"),
    Variant("gp, concurrency sweep", sampler="gp"),
    Variant("gp, sampled concurrency", sampler="gp", concurrency="sample"),
    Variant("random search, concurrency sweep", sampler="random", strategy=SAMPLER_ALONE),
    Variant("random search, sampled concurrency", sampler="random", strategy=SAMPLER_ALONE, concurrency="sample"),
)
ABLATIONS = (
    Variant("tpe, no local steps", strategy=Strategy(Baseline(), RuleOfThumb("fewest"), RuleOfThumb("most"),
                                                      DelayLadder())),
    Variant("tpe, no ladders or second rule of thumb", strategy=Strategy(Baseline(), RuleOfThumb("fewest"),
                                                                          LocalStep())),
    Variant("tpe, no baseline, rules of thumb or ladders", strategy=Strategy(LocalStep())),
    Variant("tpe, no re-measuring of the top 3", confirm_rounds=0),
    Variant("tpe, no pruning", pruning=False),
    Variant("tpe, 10 random start-up trials (Optuna's default)", startup=10),
)


@dataclass(frozen=True)
class Outcome:
    reached: float
    wall_s: float
    overhead: float
    infeasible: int


def replay(grid: Grid, variant: Variant, budget: int, seed: int, noise: float) -> Outcome:
    """One study of ``budget`` trials run by autotune's ``Tuner`` against the grid."""
    space = SearchSpace.from_yaml(ROOT / "studies" / f"{grid.model}.yaml")
    base = read_pbtxt(ROOT / "model_repository" / grid.model / "config.pbtxt")
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize",
                                sampler=make_sampler(variant.sampler, seed, variant.startup))
    clock = Clock()
    server = ReplayServer(grid, base, clock)
    load = ReplayLoad(grid, server, clock, noise, np.random.default_rng(seed), variant.pruning)
    meter = Meter(load, grid.limit_ms, load.settings.warmup_s, space.concurrency_levels())
    objective = Objective(server, meter, space, sampled_concurrency=variant.concurrency == "sample")
    tuner = Tuner(study, storage, objective, variant.strategy, np.random.default_rng(seed))
    tuner.optimize(budget)
    tuner.confirm(variant.confirm_rounds)
    best = best_trial(study)
    reached = grid.reached(trial_params(best), best.user_attrs["concurrency"]) if best else 0.0
    infeasible = sum(not is_feasible(t) for t in study.trials if t.state.is_finished())
    return Outcome(reached, clock.seconds, clock.overhead / clock.seconds, infeasible)


def replay_table(grid: Grid, variants: tuple[Variant, ...], budgets: tuple[int, ...], seeds: range,
                 noise: float) -> Iterator[str]:
    """Per variant and budget: the share reached (median and worst, then mean and how many runs reach 90 %: a
    median over a few configs that runs crown jumps between them), wall time, infeasible trials, overhead."""
    yield (f"{'strategy':<50} {'trials':>6} {'reached (median, worst)':>24} {'mean':>6} {'>=90%':>5} "
           f"{'wall (median)':>14} {'infeasible':>10} {'reload+warm-up':>15}")
    for variant in variants:
        for budget in budgets:
            runs = [replay(grid, variant, budget, seed, noise) for seed in seeds]
            reached = [r.reached for r in runs]
            yield (f"{variant.name:<50} {budget:>6} {statistics.median(reached):>15.1%} ({min(reached):>6.1%}) "
                f"{statistics.mean(reached):>6.1%} {sum(r >= 0.9 for r in reached):>5} "
                f"{_minutes(statistics.median(r.wall_s for r in runs)):>14} "
                f"{statistics.median(r.infeasible for r in runs):>10g} "
                f"{statistics.median(r.overhead for r in runs):>15.0%}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def recheck(grid: Grid, n: int, seed: int) -> str:
    """Measure ``n`` random measured grid points again: the spread of the ratios is the noise a search meets."""
    rng = np.random.default_rng(seed)
    measured = [where for where, point in grid.points.items() if grid.feasible(point)]
    picked = [measured[i] for i in rng.choice(len(measured), size=min(n, len(measured)), replace=False)]
    ratios = []
    with EmbeddedServer(ROOT / "model_repository") as embedded:
        server = ModelServer(embedded.url, grid.model)
        loadgen = LoadGenerator(embedded.url, grid.model, GRID_SETTINGS)
        for key, concurrency in picked:
            dynamic, batch, delay, preferred, instances = key
            server.apply(apply(server.original, ServerParams(dynamic, batch, delay, preferred, instances)))
            ratios.append(loadgen.measure(concurrency).throughput / grid.points[key, concurrency].throughput)
        server.restore()
        server.close()
    logs = np.log(ratios)
    return (f"re-measured {len(ratios)} grid points: throughput ratio median {np.exp(np.median(logs)):.2f}, "
            f"log-ratio sd {np.std(logs):.3f}, so about {np.std(logs) / math.sqrt(2):.3f} per measurement "
            "(compare --noise)")


def live(grid: Grid, budget: int, seed: int, extra: list[str]) -> list[str]:
    """autotune run for real with its defaults: the share of the optimum its winner reaches on the grid, its wall
    time, and how much of each trial went to reloading and warming up."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "autotune", "optimize", "--model", grid.model, "--max-p95", f"{grid.limit_ms:g}ms",
             "--trials", str(budget), "--seed", str(seed), "--storage", f"sqlite:///{tmp}/live.db",
             "--output", f"{tmp}/config.pbtxt", "--json", *extra],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - started
        study = optuna.load_study(study_name=f"{grid.model}-p95-{format_ms(grid.limit_ms)}",
                                  storage=f"sqlite:///{tmp}/live.db")
    trials = [t for t in study.trials if t.state.is_finished() and "measure_s" in t.user_attrs]
    overhead = sum(t.user_attrs["reload_s"] + t.user_attrs["warmup_s"] for t in trials)
    spent = sum(t.user_attrs["reload_s"] + t.user_attrs["measure_s"] for t in trials)
    best = best_trial(study)
    if best is None:
        return [f"live, {' '.join(extra) or 'defaults'}: {budget} trials, seed {seed}: no feasible trial"]
    reached = grid.reached(trial_params(best), best.user_attrs["concurrency"])
    key, concurrency = grid.snap(trial_params(best), best.user_attrs["concurrency"])
    config_best = grid.best_per_config()[key] / grid.optimum()[1].throughput
    return [f"live, {' '.join(extra) or 'defaults'}: {budget} trials, seed {seed}: reached {reached:.1%} of the grid "
            f"optimum (measured {best.value:.0f} infer/s) in {_minutes(wall)}; reload + warm-up "
            f"{overhead / spent:.0%} of the trials' time; {sum(not is_feasible(t) for t in trials)} infeasible; "
            f"crowned {key} at concurrency {concurrency}, whose best grid point reaches {config_best:.1%}"]


def _runnable(variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
    """The variants whose sampler is installed; GP needs the ``gp`` extra, and its absence is said, not fatal."""
    runnable = []
    for variant in variants:
        try:
            check_sampler(variant.sampler)
        except AutotuneError as error:
            print(f"skipping {variant.name}: {error}", flush=True)
        else:
            runnable.append(variant)
    return tuple(runnable)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "wide_mlp"])
    parser.add_argument("--max-p95", default="20ms")
    parser.add_argument("--regrid", action="store_true", help="measure the grid again instead of reading its CSV")
    parser.add_argument("--grids", type=Path, default=GRID_DIR, metavar="DIR",
                        help="where the grids' CSVs are read and written (default: benchmarks/grid)")
    parser.add_argument("--confirm-top", type=int, default=10, metavar="N",
                        help="measure the N best configs of the grid again, to --rounds ladders each, and keep each "
                             "point's median (a grid measured on another day mixes two machine states: --regrid)")
    parser.add_argument("--rounds", type=int, default=3, help="ladders per confirmed config")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="replay seeds --first-seed, --first-seed + 1, ...")
    parser.add_argument("--noise", type=float, default=0.05, help="log-normal sigma of a replayed measurement")
    parser.add_argument("--samplers", nargs="+", choices=("tpe", "gp", "random"), default=["tpe", "gp", "random"],
                        help="replay only the strategies with these samplers (GP studies take minutes, not seconds)")
    parser.add_argument("--ablations", action="store_true", help="also replay TPE without each of its aids")
    parser.add_argument("--live", nargs="*", metavar="OPTION",
                        help="also run autotune for real (budget 20), with these extra optimize options")
    args = parser.parse_args()
    limit_ms = parse_duration(args.max_p95, "--max-p95") * 1000
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", module="optuna")
    for model in args.models:
        path = args.grids / f"{model}.csv"
        print(f"The grid of {model} (p95 limit {limit_ms:g} ms): measuring what {path.name} lacks ...", flush=True)
        measure_grid(model, limit_ms, path, args.regrid, args.confirm_top, args.rounds)
        grid = Grid.read(model, limit_ms, path)
        (key, concurrency), best = grid.optimum()
        configs = len({k for k, _ in grid.points})
        print(f"\n{grid.header}\n{configs} configs x {len(grid.points) // configs} concurrencies, "
              f"{grid.measured} points measured (the rest lie past the limit). Optimum: {best.throughput:.0f} "
              f"infer/s at p95 {best.p95_ms:.1f} ms, {key} at concurrency {concurrency}. Replay noise "
              f"sigma {args.noise:g}, seeds {args.first_seed} to {args.first_seed + args.seeds - 1}.\n")
        variants = _runnable(tuple(v for v in VARIANTS + (ABLATIONS if args.ablations else ())
                                   if v.sampler in args.samplers))
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        for line in replay_table(grid, variants, tuple(args.budgets), seeds, args.noise):
            print(line, flush=True)
        if args.live is not None:
            print(recheck(grid, 12, 0), flush=True)
            print(*live(grid, 20, 0, args.live), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
