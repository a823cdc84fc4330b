"""How long a 20-trial study takes, and how good its pick is: this checkout against an earlier main, live.

    python benchmarks/study_speed.py [--models mlp wide_mlp gpu_like contended] [--max-p95 10] [--seeds 3]
                                     [--old REF] [--old-seeds 1] [--ma-models mlp gpu_like] [--rounds 2] [--fresh]
                                     [--grid-top 2] [--crown-after ROUNDS] [--twins N]
    python benchmarks/study_speed.py --score benchmarks/results/yardstick/RUN.json

1. Studies. For each model, ``autotune optimize`` runs with its defaults (20 trials, the model's space from
   ``studies/`` or ``benchmarks/profiles/``) on an embedded server, once per seed from this checkout and from
   ``--old`` (a ``git worktree`` of that ref, the previous main by default), one after the other in this run. Its
   wall time is the whole command's, server start and re-measurement included. Each study's pick and wall time go
   into ``benchmarks/results/study_speed.json`` with the date and the commit, so that a rerun measures only what is
   not there yet (``--fresh`` measures everything again); its database stays in ``benchmarks/results/studies/``
   (not committed) for ``autotune inspect`` and the dashboard. Triton Model Analyzer 1.58 (``model_analyzer.py``) runs
   its quick and its optuna mode (20 trials) on each of ``--ma-models``, within the same bounds and limit.
2. The yardstick. Every pick of this run is measured again by perf_analyzer (2.51) on one embedded server,
   round-robin, ``--rounds`` times, at the concurrency the study chose to deploy. Beside them stand the
   ``--grid-top`` best configs of each model's newest exhaustive grid (``benchmarks/grid/``) under the limit, each
   at its best concurrency in that grid. A pick's score is its median throughput over the best median of those
   that held the limit in at least half their runs; a pick that did not is marked. The range beside it (its
   lowest and highest run on the same scale) shows how far the yardstick's own noise reaches. ``--twins N`` adds N
   copies of the best config known for each model (``BEST_KNOWN``), each measured and scored as a pick of its own:
   what a tuner that always found that config would score under this yardstick. Beside each pick's own score
   stands its config's: the runs of every pick of one config at one concurrency pooled (twins included) and scored
   against the best config so pooled, so that one config picked by several studies scores alike and the best of
   the run is no longer the luckiest of its copies. Every run's reading is kept in
   ``benchmarks/results/yardstick/``; ``--score`` prints a kept run's table again, measuring nothing.

The model profiles under ``benchmarks/profiles/``: ``gpu_like`` (each batch holds one device shared by every
instance for 2 ms + 0.25 ms per request, sleeping) and ``contended`` (a batch's work grows with the square of its
size, on every core). Results and their reading are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import model_analyzer
import optuna
import yaml
from loadgen_vs_perf_analyzer import install_perf_analyzer
from search_efficiency import Grid
from tritonclient.utils import InferenceServerException

from autotune import EmbeddedServer, ModelServer, ServerParams, apply
from autotune.errors import AutotuneError
from autotune.records import CONFIG_KEY, CONFIRMED_KEY, MAX_P95_KEY
from autotune.study.confirm import Run, crown, standing

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "benchmarks" / "profiles"
RESULTS = ROOT / "benchmarks" / "results" / "study_speed.json"
READINGS = ROOT / "benchmarks" / "results" / "yardstick"
STUDIES = ROOT / "benchmarks" / "results" / "studies"
PA_WINDOW_MS = 2000
# perf_analyzer's stability rule (its last three windows within this many percent of their mean): at its default
# 10 it found no stable figure within 16 windows for a fifth of the picks on this machine, and a yardstick must read.
PA_STABILITY = 25
# The best config each model's runs have shown (benchmarks/README.md, 2026-12-07; gpu_like's from the run of 18:33),
# at its concurrency: ``--twins``.
BEST_KNOWN = {
    "mlp": ({"dynamic_batching": True, "instance_count": 1, "max_batch_size": 16, "max_queue_delay_microseconds": 8940,
             "preferred_batch_size": [16]}, 16),
    "wide_mlp": ({"dynamic_batching": True, "instance_count": 1, "max_batch_size": 16,
                  "max_queue_delay_microseconds": 8940, "preferred_batch_size": [16]}, 16),
    "gpu_like": ({"dynamic_batching": True, "instance_count": 2, "max_batch_size": 8,
                  "max_queue_delay_microseconds": 11238, "preferred_batch_size": [8]}, 16),
    "contended": ({"dynamic_batching": False, "instance_count": 1, "max_batch_size": 16}, 2),
}


@dataclass(frozen=True)
class Pick:
    """One study's outcome: who ran it, how long it took, and the config and concurrency it chose."""

    # "new", "old", "maq"/"mao" (Model Analyzer's quick/optuna mode), "grid" (from the exhaustive grid), or "r2"
    # (a new study's crown had its re-measurement stopped after 2 rounds, ``--crown-after``)
    code: str
    commit: str
    model: str
    max_p95_ms: float
    seed: int
    wall_s: float
    config: dict[str, object] | None
    concurrency: int | None
    measured: float | None  # the study's own reading of its pick
    date: str

    @property
    def key(self) -> str:
        return f"{self.commit}|{self.model}|{self.max_p95_ms:g}|{self.seed}"

    @property
    def config_key(self) -> tuple[object, ...]:
        """What the pick deploys: one config at one concurrency (a grid reference is measured over a range and
        stands alone)."""
        params = ServerParams.from_dict(self.config) if self.config else None
        return (self.model, params, self.concurrency, self.key if self.code == "grid" else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "wide_mlp", "gpu_like", "contended"])
    parser.add_argument("--max-p95", type=float, default=10.0, metavar="MS", help="the p95 limit in milliseconds")
    parser.add_argument("--seeds", type=int, default=3, help="studies per model from this checkout")
    parser.add_argument("--old", default="bba9d2a", help="the earlier main to compare with (a git ref)")
    parser.add_argument("--old-seeds", type=int, default=1)
    parser.add_argument("--ma-models", nargs="*", default=["mlp", "gpu_like"],
                        help="models Model Analyzer tunes too, in its quick and optuna modes")
    parser.add_argument("--rounds", type=int, default=2, help="perf_analyzer re-measurements of each pick")
    parser.add_argument("--fresh", action="store_true", help="measure every study again, ignoring the cache")
    parser.add_argument("--grid-top", type=int, default=2, help="best grid configs re-measured beside the picks")
    parser.add_argument("--crown-after", type=int, default=0, metavar="ROUNDS",
                        help="also re-measure the config a new study would have crowned after this many rounds of "
                        "its re-measurement, where that differs from its crown (code r<ROUNDS>)")
    parser.add_argument("--twins", type=int, default=0, metavar="N",
                        help="copies of each model's best known config, each re-measured and scored as a pick")
    parser.add_argument("--score", type=Path, metavar="JSON",
                        help="print the table of a run kept in benchmarks/results/yardstick/ again, measuring nothing")
    args = parser.parse_args()
    if args.score:
        kept = json.loads(args.score.read_text())
        picks = [Pick(**{key: value for key, value in pick.items() if key != "readings"}) for pick in kept]
        readings = {pick.key: [Reading(*reading) for reading in kept_pick["readings"]]
                    for pick, kept_pick in zip(picks, kept, strict=True) if kept_pick["readings"]}
        args.models = list(dict.fromkeys(pick.model for pick in picks))  # and the run's limit, not the default
        args.max_p95 = picks[0].max_p95_ms if picks else args.max_p95
        _print(picks, readings, args)
        return 0
    cache = {} if args.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    new_commit = _commit("HEAD")
    old_commit = _commit(args.old)
    picks: list[Pick] = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = _repository(Path(tmp) / "model_repository")
        old_tree = _worktree(old_commit, Path(tmp) / "old")
        for model in args.models:
            runs = [("new", new_commit, ROOT, seed) for seed in range(args.seeds)]
            runs += [("old", old_commit, old_tree, seed) for seed in range(args.old_seeds)]
            if model in args.ma_models:
                runs += [(code, f"ma-{mode}", None, 0) for code, mode in (("maq", "quick"), ("mao", "optuna"))]
            for code, commit, tree, seed in runs:
                key = f"{commit}|{model}|{args.max_p95:g}|{seed}"
                if key in cache:  # as this run names it: one run's "new" is the next one's "old"
                    pick = replace(Pick(**cache[key]), code=code)
                else:
                    pick = (_model_analyzer(code, commit, repository, model, args.max_p95, Path(tmp)) if tree is None
                            else _study(code, commit, tree, repository, model, args.max_p95, seed, Path(tmp)))
                    cache[key] = asdict(pick)
                    RESULTS.parent.mkdir(parents=True, exist_ok=True)
                    RESULTS.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
                print(f"  {model} {code} seed {seed}: {pick.wall_s:.0f} s, pick {pick.config} at "
                      f"{pick.concurrency} ({pick.measured} infer/s by the study)", flush=True)
                picks.append(pick)
                if code == "new" and args.crown_after and (sooner := _crowned_after(pick, args.crown_after)):
                    print(f"  {model} seed {seed} after {args.crown_after} rounds of re-measurement: "
                          f"{sooner.config} at {sooner.concurrency}", flush=True)
                    picks.append(sooner)
            picks += _grid_references(model, args.max_p95, args.grid_top)
            picks += _twins(model, args.max_p95, args.twins)
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)
        readings = _remeasure(repository, picks, args.rounds, Path(tmp))
    _keep(picks, readings, new_commit)
    _print(picks, readings, args)
    return 0


def _commit(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def _worktree(commit: str, path: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def _repository(path: Path) -> Path:
    """The shipped models and the benchmark's profiles, in one repository."""
    shutil.copytree(ROOT / "model_repository", path)
    for profile in PROFILES.iterdir():
        if profile.is_dir():
            shutil.copytree(profile, path / profile.name)
    return path


def _space(model: str) -> Path:
    shipped = ROOT / "studies" / f"{model}.yaml"
    return shipped if shipped.exists() else PROFILES / f"{model}.yaml"


def _study(code: str, commit: str, tree: Path, repository: Path, model: str, limit_ms: float, seed: int,
           tmp: Path) -> Pick:
    """One default study of ``model``, run by the autotune of ``tree``, timed from start to end."""
    storage = STUDIES / f"{commit}-{model}-{limit_ms:g}ms-{seed}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    storage.unlink(missing_ok=True)
    command = [sys.executable, "-m", "autotune", "optimize", "--model", model, "--model-repository", str(repository),
               "--space", str(_space(model)), "--max-p95", f"{limit_ms:g}ms", "--seed", str(seed),
               "--storage", f"sqlite:///{storage}", "--output", str(tmp / "config.pbtxt"), "--json"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=_env(tree), timeout=3600)
    wall_s = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{code} study of {model} failed: {done.stderr[-2000:]}")
    best = json.loads(done.stdout)["best"] or {}
    return Pick(code, commit, model, limit_ms, seed, round(wall_s, 1), best.get("config"),
                best.get("deploy_concurrency", best.get("concurrency")), best.get("throughput"),
                datetime.date.today().isoformat())


def _crowned_after(pick: Pick, rounds: int) -> Pick | None:
    """The config ``pick``'s study would have crowned had its re-measurement stopped after ``rounds`` rounds, where
    that is another: the same study's two crowns, side by side under perf_analyzer."""
    storage = STUDIES / f"{pick.commit}-{pick.model}-{pick.max_p95_ms:g}ms-{pick.seed}.db"
    if not storage.exists():
        return None
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{storage}")
    confirmed = study.user_attrs.get(CONFIRMED_KEY)
    if not confirmed:
        return None
    runs = {t["trial"]: [Run(throughput, float("inf") if p95 is None else p95, errors, concurrency)
                         for throughput, p95, errors, concurrency
                         in zip(t["throughput"], t["p95_ms"], t["errors"], t["concurrency"], strict=True)][:rounds]
            for t in confirmed["trials"]}
    winner = crown(runs, confirmed[MAX_P95_KEY])
    if winner == confirmed["winner"]:
        return None
    return replace(pick, code=f"r{rounds}", commit=f"{pick.commit}-r{rounds}",
                   config=study.trials[winner].user_attrs[CONFIG_KEY],
                   concurrency=standing(runs[winner], confirmed[MAX_P95_KEY])[0].concurrency, measured=None)


def _model_analyzer(code: str, commit: str, repository: Path, model: str, limit_ms: float, tmp: Path) -> Pick:
    """Model Analyzer's search of ``model`` in the mode that ``commit`` names, with the bounds of autotune's space."""
    binary, environment = install_perf_analyzer(None)
    space = yaml.safe_load(_space(model).read_text())
    outcome = model_analyzer.profile(commit.removeprefix("ma-"), model, repository, space, limit_ms, 20, binary,
                                     environment, tmp)
    return Pick(code, commit, model, limit_ms, 0, round(outcome.wall_s, 1), outcome.config, outcome.concurrency,
                outcome.throughput, datetime.date.today().isoformat())


def _grid_references(model: str, limit_ms: float, top: int) -> list[Pick]:
    """The ``top`` configs of the model's newest grid with the most throughput within the limit, each at the
    concurrency where it had the most."""
    grids = sorted(ROOT.glob(f"benchmarks/grid/**/{model}.csv"), key=_header)
    if not grids or top < 1:
        return []
    grid = Grid.read(model, limit_ms, grids[-1])
    best: dict[object, tuple[int, float]] = {}
    for (key, concurrency), point in grid.points.items():
        if grid.feasible(point) and point.throughput > best.get(key, (0, 0.0))[1]:
            best[key] = (concurrency, point.throughput)
    ranked = sorted(best.items(), key=lambda item: -item[1][1])[:top]
    date = grid.header.split("measured ")[1].split(" ")[0]
    return [Pick("grid", "grid", model, limit_ms, rank, 0.0,
                 ServerParams(dynamic, size, delay, preferred, instances).as_dict(), concurrency, throughput, date)
            for rank, ((dynamic, size, delay, preferred, instances), (concurrency, throughput)) in enumerate(ranked)]


def _twins(model: str, limit_ms: float, count: int) -> list[Pick]:
    """``count`` copies of the model's best known config, scored apart: the ceiling of a pick's score."""
    if model not in BEST_KNOWN:
        return []
    config, concurrency = BEST_KNOWN[model]
    today = datetime.date.today().isoformat()
    return [Pick("twin", "twin", model, limit_ms, copy, 0.0, config, concurrency, None, today) for copy in range(count)]


def _header(grid: Path) -> str:
    """A grid's first line, which names the day it was measured: the newest sorts last."""
    with grid.open() as handle:
        return handle.readline()


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


class Reading(NamedTuple):
    """One perf_analyzer run of a pick; NaN and infinity where it gave no figure."""

    throughput: float
    p95_ms: float


@dataclass(frozen=True)
class Score:
    """Runs of a pick, or of a config: their median throughput, its lowest and highest, and how many held the
    limit."""

    median: float
    low: float
    high: float
    held: int
    runs: int

    @classmethod
    def of(cls, readings: list[Reading], max_p95_ms: float) -> Score:
        throughputs = [r.throughput for r in readings if r.throughput == r.throughput] or [float("nan")]
        return cls(statistics.median(throughputs), min(throughputs), max(throughputs),
                   sum(r.p95_ms <= max_p95_ms for r in readings), len(readings))

    @property
    def feasible(self) -> bool:
        return self.runs > 0 and 2 * self.held >= self.runs


def _remeasure(repository: Path, picks: list[Pick], rounds: int, tmp: Path) -> dict[str, list[Reading]]:
    """Each pick's perf_analyzer runs, round-robin, every other round backwards as in autotune's re-measurement (a
    drift of the machine, or a cost left by the model measured before, weighs on all alike). A run during which the
    server crashed (Triton's Python backend does, now and then, under load) is taken again once on a fresh server,
    so that one crash costs one run."""
    binary, environment = install_perf_analyzer(None)
    measured = [p for p in picks if p.config]
    readings: dict[str, list[Reading]] = {p.key: [] for p in measured}
    embedded = EmbeddedServer(repository)
    embedded.start()
    try:
        for round_ in range(rounds):
            for pick in measured if round_ % 2 == 0 else measured[::-1]:
                for attempt in range(2):
                    try:
                        reading = _run_once(binary, environment, embedded.url, pick, tmp)
                        break
                    except (AutotuneError, InferenceServerException) as error:
                        print(f"  the server failed measuring {pick.model} {pick.code} {pick.seed} ({error}); "
                              f"{'measuring again on a fresh one' if attempt == 0 else 'no figure'}", flush=True)
                        embedded.stop()
                        embedded = EmbeddedServer(repository)
                        embedded.start()
                        reading = Reading(float("nan"), float("inf"))
                readings[pick.key].append(reading)
                print(f"  round {round_ + 1}: {pick.model} {pick.code} {pick.seed} at {pick.concurrency}: "
                      f"{reading.throughput:.0f} infer/s, p95 {reading.p95_ms:.2f} ms", flush=True)
    finally:
        embedded.stop()
    return readings


def _keep(picks: list[Pick], readings: dict[str, list[Reading]], commit: str) -> None:
    """Every pick of this run with its perf_analyzer readings, for scoring again without measuring again."""
    READINGS.mkdir(parents=True, exist_ok=True)
    path = READINGS / f"{datetime.datetime.now():%Y-%m-%dT%H%M}-{commit}.json"
    kept = [{**asdict(pick), "readings": [list(r) for r in readings.get(pick.key, [])]} for pick in picks]
    path.write_text(json.dumps(kept, indent=1) + "\n")
    print(f"  readings kept in {path.relative_to(ROOT)}", flush=True)


def _run_once(binary: Path, environment: dict[str, str], url: str, pick: Pick, tmp: Path) -> Reading:
    """One perf_analyzer run of ``pick`` with its config loaded, the model put back after."""
    server = ModelServer(url, pick.model)
    try:
        server.apply(apply(server.original, ServerParams.from_dict(pick.config or {})))
        reading = _perf(binary, environment, url, pick, tmp / "perf.csv")
        server.restore()
        return reading
    finally:
        server.close()


def _perf(binary: Path, environment: dict[str, str], url: str, pick: Pick, csv_path: Path) -> Reading:
    """perf_analyzer's reading of a pick at its concurrency; a grid reference is measured at a quarter, half, three
    quarters and all of its grid concurrency, up to the first that breaks the limit, and stands on the best that
    held it: its best concurrency today."""
    where = ["--concurrency-range", str(pick.concurrency)]
    if pick.code == "grid":
        step = max(1, pick.concurrency // 4)
        where = ["--concurrency-range", f"{step}:{pick.concurrency}:{step}", "--latency-threshold",
                 f"{pick.max_p95_ms:g}"]
    command = [str(binary), "-m", pick.model, "-u", url, "-i", "grpc", "--percentile=95", *where,
               "--measurement-interval", str(PA_WINDOW_MS), "--stability-percentage", str(PA_STABILITY),
               "--max-trials", "16", "-f", str(csv_path)]
    csv_path.unlink(missing_ok=True)
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    if not csv_path.exists() or (done.returncode != 0 and pick.code != "grid"):
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"  perf_analyzer gave no figure for {pick.model} {pick.code} {pick.seed}: {reason[0]}", flush=True)
        return Reading(float("nan"), float("inf"))
    with csv_path.open() as handle:
        rows = [Reading(float(row["Inferences/Second"]), float(row["p95 latency"]) / 1e3)
                for row in csv.DictReader(handle)]
    if pick.code != "grid":
        return rows[0]
    held = [row for row in rows if row.p95_ms <= pick.max_p95_ms]
    return max(held) if held else min(rows, key=lambda row: row.p95_ms)


def _print(picks: list[Pick], readings: dict[str, list[Reading]], args: argparse.Namespace) -> None:
    """One line a pick: its score (median over the best median of the picks that held the limit), the range its
    runs spanned on that scale, which says how far the yardstick's own noise reaches, and its config's score (every
    run of that config at that concurrency, over the best config's)."""
    rounds = max((len(runs) for runs in readings.values()), default=0)
    print(f"\n{datetime.date.today()}, p95 limit {args.max_p95:g} ms, 20 trials, perf_analyzer re-measured "
          f"{rounds} rounds of {PA_WINDOW_MS} ms windows\n")
    print(f"{'model':<10} {'code':<4} {'seed':>4} {'wall s':>7} {'pa infer/s':>10} {'held':>5} {'score':>6} "
          f"{'range':>10} {'config':>6} {'runs':>4}  pick")
    for model in args.models:
        mine = [p for p in picks if p.model == model]  # a study that picked nothing has no readings: it scores 0
        scores = {p.key: Score.of(readings.get(p.key, []), args.max_p95) for p in mine}
        pooled: dict[tuple[object, ...], list[Reading]] = {}
        for pick in mine:
            pooled.setdefault(pick.config_key, []).extend(readings.get(pick.key, []))
        by_config = {key: Score.of(runs, args.max_p95) for key, runs in pooled.items()}
        top = _top(scores.values())
        top_config = _top(by_config.values())
        for pick in mine:
            score, config = scores[pick.key], by_config[pick.config_key]
            print(f"{model:<10} {pick.code:<4} {pick.seed:>4} {pick.wall_s:>7.0f} {score.median:>10.0f} "
                  f"{score.held:>2}/{score.runs:<2} {_relative(score, top):>6} "
                  f"{f'{score.low / top:.2f}-{score.high / top:.2f}':>10} {_relative(config, top_config):>6} "
                  f"{config.runs:>4}  {pick.config} at {pick.concurrency}")
        walls = {code: [p.wall_s for p in mine if p.code == code] for code in ("new", "old", "maq", "mao")}
        for code, times in walls.items():
            if times:
                print(f"{model:<10} {code:<4} median wall {statistics.median(times):.0f} s over {len(times)}")
        figures = [f"new/{code} wall {statistics.median(walls['new']) / statistics.median(walls[code]):.2f}"
                   for code in ("old", "maq", "mao") if walls["new"] and walls[code]]
        for code in ("new", "twin"):
            own = [_value(scores[p.key], top) for p in mine if p.code == code]
            of_config = [_value(by_config[p.config_key], top_config) for p in mine if p.code == code]
            if own:
                figures.append(f"{code} median score {statistics.median(own):.2f} "
                               f"(by config {statistics.median(of_config):.2f})")
        if figures:
            print(f"{model:<10} {', '.join(figures)} (an over-the-limit pick scores 0)")


def _top(scores: Iterable[Score]) -> float:
    """The best median throughput among ``scores`` that held the limit."""
    return max((s.median for s in scores if s.feasible), default=float("nan"))


def _value(score: Score, top: float) -> float:
    return score.median / top if score.feasible else 0.0


def _relative(score: Score, top: float) -> str:
    return f"{score.median / top:.2f}" if score.feasible else "over"


if __name__ == "__main__":
    raise SystemExit(main())
