"""Pictures of a study (matplotlib, the ``report`` extra): the throughput/p95 trade-off, concurrency curves,
parameter importances, and an HTML page that holds them with the summary table.
"""

from __future__ import annotations

import base64
import html
import warnings
from collections import defaultdict
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import AutotuneError
from autotune.records import StudySettings, baseline_trial, best_trial, is_feasible
from autotune.report.summary import describe, summary

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
except ImportError:  # pragma: no cover - depends on the installed extras
    plt = None


def write_report(study: optuna.Study, directory: Path) -> list[Path]:
    """Write the PNGs and ``report.html`` into ``directory``; returns the files written."""
    if plt is None:
        raise AutotuneError("plots need matplotlib: pip install 'autotune[report]'")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise AutotuneError(f"study {study.study_name} has no completed trial to plot yet")
    directory.mkdir(parents=True, exist_ok=True)
    limit = StudySettings.of(study).max_p95_ms
    against = "request rate" if StudySettings.of(study).open_loop else "concurrency"
    value, _ = _value(study)
    figures = {
        "pareto.png": (pareto_figure(study, limit), f"{value.capitalize()} against p95 latency"),
        "concurrency.png": (concurrency_figure(study), f"Throughput against {against}, best configurations"),
        "importances.png": (importance_figure(study), f"What mattered most for {value}"),
    }
    written = []
    for name, (figure, _) in figures.items():
        figure.savefig(directory / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(directory / name)
    page = directory / "report.html"
    page.write_text(_html(study, {name: title for name, (_, title) in figures.items()}, directory))
    return [*written, page]


def _value(study: optuna.Study) -> tuple[str, str]:
    """What a trial's value is, and its unit: its throughput, or in an open loop's study the rate it sustained."""
    if StudySettings.of(study).open_loop:
        return "sustained request rate", "requests/sec"
    return "throughput", "infer/sec"


def pareto_figure(study: optuna.Study, limit_ms: float) -> Figure:
    """Every completed trial as its value (throughput, or the rate it sustained) against p95, the limit as a line,
    the feasible front as a step."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    figure, axes = plt.subplots(figsize=(8, 5))
    feasible = [t for t in trials if is_feasible(t)]
    infeasible = [t for t in trials if not is_feasible(t)]
    axes.scatter([t.user_attrs["p95_ms"] for t in feasible], [t.value for t in feasible],
                 c="tab:blue", label="feasible", zorder=3)
    axes.scatter([t.user_attrs["p95_ms"] for t in infeasible], [t.value for t in infeasible],
                 c="tab:gray", marker="x", label="over the limit or with errors", zorder=3)
    front = _pareto_front(trials)
    axes.step([t.user_attrs["p95_ms"] for t in front], [t.value for t in front], where="post",
              c="tab:orange", label="Pareto front", zorder=2)
    if limit_ms != float("inf"):
        axes.axvline(limit_ms, c="tab:red", ls="--", label=f"p95 limit {limit_ms:g} ms")
    for trial, label in ((best_trial(study), "best"), (baseline_trial(study), "baseline")):
        if trial is not None:
            axes.annotate(f"{label} (#{trial.number})", (trial.user_attrs["p95_ms"], trial.value),
                          textcoords="offset points", xytext=(6, 6))
    axes.set_xscale("log")
    _plain_numbers(axes, 10, (1.0, 2.0, 5.0))
    value, unit = _value(study)
    axes.set_xlabel("p95 latency (ms, log scale)")
    axes.set_ylabel(f"{value} ({unit})")
    axes.set_title(f"{study.study_name}: {value} against p95")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    return figure


def _plain_numbers(axes: plt.Axes, base: int, subs: tuple[float, ...] = (1.0,)) -> None:
    """Tick labels such as 2, 5, 20 on a log axis, not 2 x 10^0."""
    axes.xaxis.set_major_locator(LogLocator(base=base, subs=subs))
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())


def _pareto_front(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that no other trial beats on both throughput and p95, by rising p95."""
    front: list[FrozenTrial] = []
    for trial in sorted(trials, key=lambda t: (t.user_attrs["p95_ms"], -(t.value or 0.0))):
        if not front or (trial.value or 0.0) > (front[-1].value or 0.0):
            front.append(trial)
    return front


def concurrency_figure(study: optuna.Study, top: int = 4) -> Figure:
    """Throughput against client concurrency (an open loop's: against the rate offered) for the server
    configurations with the best feasible trials."""
    by_config: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        by_config[describe(trial.user_attrs["config"])].append(trial)
    ranked = sorted(by_config.items(), key=lambda item: _best_feasible(item[1]), reverse=True)
    figure, axes = plt.subplots(figsize=(8, 5))
    for label, trials in ranked[:top]:
        curve = dict(sorted(point for trial in trials for point in _points(trial)))
        axes.plot(list(curve), list(curve.values()), marker="o", label=label)
    axes.set_xscale("log", base=2)
    _plain_numbers(axes, 2)
    rate = StudySettings.of(study).open_loop
    axes.set_xlabel("offered request rate (requests/s, log scale)" if rate else "client concurrency (log scale)")
    axes.set_ylabel("throughput (infer/sec)")
    axes.set_title(f"{study.study_name}: throughput against {'request rate' if rate else 'concurrency'}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return figure


def _points(trial: FrozenTrial) -> list[tuple[float, float]]:
    """(concurrency or rate, throughput) as a trial measured it: each point of its sweep, or its one point."""
    sweep = trial.user_attrs.get("sweep")
    if sweep:
        return [(at, throughput) for at, throughput, _ in sweep]
    return [(trial.user_attrs["concurrency"], trial.value or 0.0)]


def _best_feasible(trials: list[FrozenTrial]) -> float:
    return max(((t.value or 0.0) for t in trials if is_feasible(t)), default=0.0)


def importance_figure(study: optuna.Study) -> Figure:
    """Optuna's parameter importances (its default evaluator) for the study's value."""
    figure, axes = plt.subplots(figsize=(8, 4))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "few trials in some regimes": the plot says how few there were
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as error:
        importances, reason = {}, str(error)
    else:
        reason = "too few trials for importances"
    if not importances:
        axes.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
        axes.set_axis_off()
        return figure
    names = list(reversed(importances))
    axes.barh(names, [importances[name] for name in names], color="tab:blue")
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    axes.set_xlabel(f"importance for {_value(study)[0]} (from {completed} completed trials)")
    axes.set_title(f"{study.study_name}: parameter importances")
    return figure


def _html(study: optuna.Study, images: dict[str, str], directory: Path) -> str:
    pictures = "\n".join(
        f"<h2>{html.escape(title)}</h2>\n<img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,"
        f"{base64.b64encode((directory / name).read_bytes()).decode()}\">"
        for name, title in images.items()
    )
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(study.study_name)}</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}pre{background:#f6f6f6;"
            "padding:1em;overflow-x:auto}img{max-width:100%}</style></head><body>\n"
            f"<h1>autotune report: {html.escape(study.study_name)}</h1>\n"
            f"<pre>{html.escape(summary(study))}</pre>\n{pictures}\n</body></html>\n")
