"""The Optuna study: its storage and sampler, the baseline trial, and the objective that measures one trial.

One trial asks the search space for server settings and a concurrency, has the server load them, measures
with the load generator and records everything as user attributes. The p95 limit and request errors are
constraints that the sampler honours, not a filter applied afterwards. The first trials follow the Triton guide
(the baseline, the rule of thumb with the fewest and with the most instances, then each one's batcher delay raised
step by step); after them the sampler's trials take turns with local steps, which try the untried neighbours of the
best config so far.
"""

from __future__ import annotations

import importlib.util
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from types import FrameType
from typing import Literal

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FixedTrial, FrozenTrial, TrialState
from optuna_dashboard import save_note

from autotune.errors import AutotuneError, TrialFailed
from autotune.loadgen import LoadGenerator, Measurement
from autotune.model_config import ModelConfig, ServerParams, apply, params_of, to_pbtxt
from autotune.server import SERVER_TIMES, ModelServer, server_times
from autotune.space import SearchSpace
from autotune.storage import mask_password, open_storage
from autotune.trial_queue import TrialQueue, counts_toward_total

HARDWARE_ATTRS = ("server_version", "instance_kind", "cpu")
# The winner's curse: the best of many noisy measurements is flattered. The top few are measured again.
CONFIRM_TOP = 3
CONFIRMED_KEY = "confirmed"
# A trial whose settings an earlier trial already measured is answered from that one: this key names it.
SAME_AS_KEY = "same_as"
# The model as configured, the study's first trial: where tuning started.
BASELINE_KEY = "baseline"
# The Triton guide's rule of thumb (dynamic batching at the model's largest batch), where a delay ladder starts.
RULE_OF_THUMB_KEY = "rule_of_thumb"
# A local step's trial: the best trial it stepped from.
STEP_FROM_KEY = "step_from"
# A rung of a delay ladder: a rule of thumb with its batcher delay this many steps longer.
DELAY_RUNG_KEY = "delay_rung"
# A ladder climbs while each rung reads at least this share of its best rung: a clearly worse reading ends it, one
# within the machine's noise does not (in the replay 0.6 did about as well at low noise; 0.9 stopped on noise).
RUNG_KEEPS = 0.75
# optuna-dashboard reads feasibility only from this list-valued system attribute; Optuna's samplers read it too.
CONSTRAINTS_KEY = "constraints"
SamplerName = Literal["tpe", "gp", "random"]
# "sample": concurrency is one more sampled parameter; "sweep": each trial raises it on its config (no reloads).
ConcurrencySearch = Literal["sample", "sweep"]
# Warm-up of a point on a config the server already serves warm (no reload): enough for the new load to settle.
SETTLE_S = 0.1
# Random trials before a model-based sampler takes over (Optuna's default is 10): budgets here are tens of trials,
# and the enqueued baseline and rule of thumb count among them.
STARTUP_TRIALS = 5
# What a trial's user attributes hold about its measurement (the rest: its settings, worker and timings).
_MEASURED = frozenset({f.name for f in fields(Measurement)} | {"sweep", *SERVER_TIMES})
# A sweep stops once doubling the requests in flight gains less than this: the server is saturated.
SATURATION_GAIN = 0.05


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the running trial is recorded as failed and the model restored."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def check_sampler(name: SamplerName) -> None:
    """Fail before any server starts when the sampler's optional dependency is missing."""
    if name != "gp":
        return
    missing = [module for module in ("torch", "scipy") if importlib.util.find_spec(module) is None]
    if missing:
        raise AutotuneError(f"--sampler gp needs {' and '.join(missing)}: pip install 'autotune[gp]'")


def make_sampler(
    name: SamplerName, seed: int | None, startup_trials: int = STARTUP_TRIALS
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler by its short name. TPE and GP learn from the p95 and error constraints that trials record;
    random search ignores them and serves as a yardstick.

    TPE (multivariate, grouped for the conditional batching settings, with a constant liar for parallel workers)
    is the default; the Gaussian-process sampler needs PyTorch and SciPy (the ``gp`` extra).
    """
    check_sampler(name)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed,
                                      n_startup_trials=startup_trials)


def open_study(
    name: str, storage: BaseStorage, seed: int | None, attrs: dict[str, object],
    sampler: SamplerName = "tpe"
) -> tuple[optuna.Study, bool]:
    """Create or resume the study, and say whether this worker created it.

    Refuses to mix trials measured under a different model or limit.
    """
    try:
        started = len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        started = 0
    # On resume, a fixed seed is shifted so the random start-up trials do not repeat the first run's.
    chosen = make_sampler(sampler, None if seed is None else seed + started)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=chosen, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=name, storage=storage, sampler=chosen), False
    for key, value in attrs.items():
        recorded = study.user_attrs.get(key)
        if recorded is None:
            study.set_user_attr(key, value)
        elif key in ("model", "max_p95_ms") and recorded != value:
            raise AutotuneError(
                f"study {name!r} was run with {key} = {recorded}, not {value}; choose another --study"
            )
    return study, created


def load_study(name: str | None, storage_url: str) -> optuna.Study:
    """An existing study, for the commands that only read: the storage's only study when no name is given."""
    storage = open_storage(storage_url, create=False)
    names = [summary.study_name for summary in storage.get_all_studies()]
    where = mask_password(storage_url)
    if name is None and len(names) != 1:
        raise AutotuneError(f"choose a study with --study; {where} holds: {', '.join(names) or 'none'}")
    name = name if name is not None else names[0]
    if name not in names:
        raise AutotuneError(f"no study {name!r} in {where}; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def counted_trials(study: optuna.Study) -> int:
    return sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))


def trials_since_best(study: optuna.Study) -> int:
    """How many counted trials finished after the best feasible one (all of them when none is feasible)."""
    counted = [t for t in study.get_trials(deepcopy=False) if counts_toward_total(t)]
    best = best_trial(study)
    if best is None:
        return len(counted)
    return sum(t.datetime_complete > best.datetime_complete for t in counted)


def hardware_differences(study: optuna.Study, attrs: dict[str, object]) -> list[str]:
    """Where this worker's server differs from the one the study was started on, as readable phrases."""
    return [f"{key} {attrs[key]} (the study has {study.user_attrs[key]})" for key in HARDWARE_ATTRS
            if key in attrs and key in study.user_attrs and attrs[key] != study.user_attrs[key]]


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial.system_attrs.get(CONSTRAINTS_KEY, [1]))


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The measured baseline, pruned ones included: a baseline over the limit still says where tuning started."""
    measured = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return next((t for t in measured if t.user_attrs.get(BASELINE_KEY)), None)


def top_feasible(study: optuna.Study, n: int) -> list[FrozenTrial]:
    """The ``n`` feasible trials with the highest throughput, best first; each config once, as first measured."""
    feasible = [t for t in study.get_trials(deepcopy=False) if is_feasible(t) and SAME_AS_KEY not in t.user_attrs]
    return sorted(feasible, key=lambda t: -(t.value or 0.0))[:n]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The winner of the last re-measurement while it still covers the top trials, else the feasible trial with
    the highest throughput (Optuna's ``best_trial`` ignores constraints here)."""
    top = top_feasible(study, CONFIRM_TOP)
    confirmed = study.user_attrs.get(CONFIRMED_KEY)
    if top and confirmed and {t.number for t in top} <= {run["trial"] for run in confirmed["trials"]}:
        return study.get_trials(deepcopy=False)[confirmed["winner"]]
    return top[0] if top else None


def crown(runs: dict[int, list[tuple[float, float, int]]], max_p95_ms: float) -> int:
    """The trial whose re-measurements (throughput, p95 ms, errors) held the limit at least half the time, with
    the highest median throughput; when none held it, the one that held it most often."""
    def score(number: int) -> tuple[float, float]:
        held = sum(p95 <= max_p95_ms and not errors for _, p95, errors in runs[number]) / len(runs[number])
        return (min(held, 0.5), float(np.median([throughput for throughput, _, _ in runs[number]])))

    return max(runs, key=score)


def fill_level(params: ServerParams) -> int:
    """Requests in flight from which a dynamic batcher can dispatch full batches without waiting out its delay."""
    if not params.dynamic_batching:
        return 1
    return max(params.preferred_batch_size or (params.max_batch_size,))


def trial_params(trial: FrozenTrial) -> ServerParams:
    """The server settings a trial ran with, as recorded in its user attributes."""
    recorded = dict(trial.user_attrs["config"])
    recorded["preferred_batch_size"] = tuple(recorded.get("preferred_batch_size", ()))
    return ServerParams(**recorded)


@dataclass
class Tuner:
    """Runs the trials of one study against one model on one server."""

    study: optuna.Study
    storage: BaseStorage
    server: ModelServer
    loadgen: LoadGenerator
    space: SearchSpace
    max_p95_ms: float
    worker: dict[str, str] = field(default_factory=dict)
    concurrency_search: ConcurrencySearch = "sweep"
    local_steps: bool = True
    delay_ladder: bool = True
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    _warm: bool = field(default=False, init=False)  # the loaded config has served load since it was loaded

    @property
    def base(self) -> ModelConfig:
        return self.server.original

    def enqueue_baseline(self, created: bool = True) -> None:
        """The model as configured, at the Triton guide's rule-of-thumb concurrency 2 x batch x instances.

        The worker that created the study queues it, followed by the guide's rule-of-thumb config; another only
        queues the baseline again when an interrupted run left it unmeasured, so that workers starting together
        do not each add one.
        """
        if not created:
            baselines = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_KEY)]
            pending = (TrialState.WAITING, TrialState.RUNNING)
            if not baselines or any(counts_toward_total(t) or t.state in pending for t in baselines):
                return
        params = params_of(self.base)
        batch = params.max_batch_size if params.dynamic_batching else 1
        concurrency = self.space.clamp_concurrency(2 * batch * params.instance_count)
        self.study.enqueue_trial({"concurrency": concurrency}, user_attrs={BASELINE_KEY: True})
        if created:
            self._enqueue_rule_of_thumb(self.space.instance_count.low)

    def _enqueue_rule_of_thumb(self, instances: int) -> bool:
        """Queue the Triton guide's starting point with this many instances: dynamic batching up to the model's
        largest batch, the shortest delay, and concurrency 2 x max_batch_size x instances, so the batcher always
        has a batch to form. Says whether it was queued: a model that cannot batch has no rule of thumb."""
        sizes = self.space.batch_sizes(self.base)
        if self.base.max_batch_size == 0 or True not in self.space.dynamic_batching or not sizes:
            return False
        self.study.enqueue_trial({
            "instance_count": instances, "dynamic_batching": True, "max_batch_size": sizes[-1],
            "max_queue_delay_microseconds": self.space.max_queue_delay_microseconds.low,
            "preferred_batch_size": self.space.preferred_batch_size[0],
            "concurrency": self.space.clamp_concurrency(2 * sizes[-1] * instances),
        }, user_attrs={RULE_OF_THUMB_KEY: True})
        return True

    def optimize(
        self,
        n_trials: int,
        callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
        timeout_s: float | None = None,
        patience: int | None = None,
    ) -> str | None:
        """Run trials until the study holds ``n_trials`` that count: a resumed study tops up, workers share it.

        This worker stops sooner once ``timeout_s`` has passed, or once ``patience`` trials in a row brought no
        better feasible throughput. Returns why it stopped early, or None when the study holds its trials.
        """
        queue = TrialQueue(self.study, self.storage, n_trials)
        started = time.monotonic()
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            while (trial := queue.claim()) is not None:
                with queue.heartbeat(trial):
                    finished = self._run(trial)
                if STEP_FROM_KEY not in finished.user_attrs and counted_trials(self.study) < n_trials:
                    self._queue_follow_up()
                for callback in callbacks:
                    callback(self.study, finished)
                if timeout_s is not None and time.monotonic() - started >= timeout_s:
                    return f"stopped after {time.monotonic() - started:.0f} s, the --timeout"
                if patience is not None and trials_since_best(self.study) >= patience:
                    return f"stopped: {patience} trials in a row brought no improvement (--patience)"
        finally:
            signal.signal(signal.SIGTERM, previous)
        return None

    def confirm(self, rounds: int) -> None:
        """Measure the top feasible trials again, ``rounds`` times each round-robin, and crown the one that holds up.

        A study's best single measurement is an optimistic draw, and the optimum usually sits on the limit; the
        repeated measurements decide the winner, and the study keeps them (user attribute ``confirmed``). The
        winner's dashboard note says so and holds its config, as a new best's note does: the winner need not have
        been a new best when it ran.
        """
        top = top_feasible(self.study, CONFIRM_TOP)
        if rounds < 1 or not top:
            return
        runs: dict[int, list[tuple[float, float, int]]] = {t.number: [] for t in top}
        for _ in range(rounds):
            for trial in top:
                warmup_s = self._warmup(self.server.apply(apply(self.base, trial_params(trial))))
                measured = self.loadgen.measure(trial.user_attrs["concurrency"], warmup_s=warmup_s)
                runs[trial.number].append((measured.throughput, measured.p95_ms, measured.errors))
        winner = next(t for t in top if t.number == crown(runs, self.max_p95_ms))
        self.study.set_user_attr(CONFIRMED_KEY, {
            "winner": winner.number,
            "max_p95_ms": self.max_p95_ms,
            "trials": [{"trial": t.number, "first": [round(t.value or 0.0, 2), t.user_attrs["p95_ms"]],
                        "throughput": [round(r[0], 2) for r in runs[t.number]],
                        "p95_ms": [round(r[1], 3) if math.isfinite(r[1]) else None for r in runs[t.number]],
                        "errors": [r[2] for r in runs[t.number]]} for t in top],
        })
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(self.study.study_name), winner.number)
        save_note(optuna.Trial(self.study, trial_id), _crowned_note(
            apply(self.base, trial_params(winner)), winner.user_attrs["concurrency"], runs[winner.number]))

    def _run(self, trial: optuna.Trial) -> FrozenTrial:
        """One trial, told to the study however it ends; interruptions are recorded, then passed on."""
        try:
            value = self(trial)
        except optuna.TrialPruned:
            return self.study.tell(trial, state=TrialState.PRUNED)
        except TrialFailed:
            return self.study.tell(trial, state=TrialState.FAIL)
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        return self.study.tell(trial, value)

    def __call__(self, trial: optuna.Trial) -> float:
        if trial.user_attrs.get(BASELINE_KEY):
            params, config = params_of(self.base), self.base
        else:
            params = self.space.suggest(trial, self.base)
            config = apply(self.base, params)
        trial.set_user_attr("config", params.as_dict())
        for key, value in self.worker.items():
            trial.set_user_attr(key, value)
        concurrency = self.space.suggest_concurrency(trial) if self.concurrency_search == "sample" else None
        twin = None if trial.user_attrs.get(BASELINE_KEY) else self._measured_twin(params, concurrency)
        if twin is not None:
            return _answer_from(trial, twin)
        started = time.monotonic()
        try:
            reloaded = self.server.apply(config)
        except TrialFailed as error:
            trial.set_user_attr("fail_reason", str(error))
            raise
        finally:
            trial.set_user_attr("reload_s", round(time.monotonic() - started, 3))
        before = self.server.statistics()
        started = time.monotonic()
        measurement, warmup_s = self._measure(trial, params, concurrency, self._warmup(reloaded))
        if measurement.requests == measurement.errors == 0:
            # A freshly loaded model's first replies can stall past the warm-up on a busy machine (another server
            # loading beside it): once more, fully warmed up, tells a stall from a model that never answers.
            measurement, again_s = self._measure(trial, params, concurrency, self.loadgen.settings.warmup_s)
            warmup_s += again_s
        trial.set_user_attr("measure_s", round(time.monotonic() - started, 3))
        trial.set_user_attr("warmup_s", round(warmup_s, 3))
        _record(trial, measurement, before, self.server.statistics())
        if measurement.requests == 0:
            reason = f"no request succeeded: {measurement.first_error or 'no reply within the window'}"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        constraints = [measurement.p95_ms - self.max_p95_ms, float(measurement.errors)]
        _set_constraints(trial, constraints)
        if trial.user_attrs.get(BASELINE_KEY):
            trial.study.set_user_attr("baseline", {
                "trial": trial.number, "throughput": round(measurement.throughput, 2),
                "p95_ms": round(measurement.p95_ms, 3), "concurrency": measurement.concurrency,
            })
        if measurement.cut_short:
            trial.report(measurement.throughput, step=measurement.windows)
            why = (f"{measurement.errors} errors" if measurement.errors else
                   f"median latency {measurement.p50_ms:.1f} ms, over the limit")
            trial.set_user_attr("pruned_reason", f"stopped after window {measurement.windows}: {why}")
            raise optuna.TrialPruned(why)
        if all(c <= 0 for c in constraints) and measurement.throughput > _best_value(trial.study):
            save_note(trial, _new_best_note(config, measurement))
        return measurement.throughput

    def _queue_follow_up(self) -> None:
        """After a trial that was not a local step: the delay ladder's next rung while it climbs, else a step."""
        if not (self.delay_ladder and self._queue_delay_rung()) and self.local_steps:
            self._queue_local_step()

    def _queue_delay_rung(self) -> bool:
        """Queue the next trial of the Triton guide's recipe for the dynamic batcher while it lasts; say whether one
        was queued.

        Once the rule of thumb (with the fewest instances) has run, it is tried with the most instances too: the
        guide tries the batcher and instances alone, then together, since their best settings interact (on a demo
        model's grid the long delays that lose with one instance win with three). Each starts a delay ladder, the
        guide's "try increasing delay values until the latency budget is exceeded": a rung is the ladder's last
        rung with the batcher delay one step longer. A ladder ends at a rung that breaks the limit or reads under
        ``RUNG_KEEPS`` of its best rung, or at the space's longest delay; the one with fewer instances climbs first,
        and local steps wait until both have ended. Throughput need not rise or fall steadily with the delay (on a
        demo model's grid a short delay read less than no delay and than a longer one), so a ladder walks through a
        dip that would end a climb by local steps, and tries the long delays that TPE seldom reaches in a budget of
        tens of trials.
        """
        trials = self.study.get_trials(deepcopy=False)
        rungs = [t for t in trials if t.user_attrs.get(RULE_OF_THUMB_KEY) or DELAY_RUNG_KEY in t.user_attrs]
        if not rungs or not all(t.state.is_finished() for t in rungs):
            return False
        ladders: dict[int, list[FrozenTrial]] = {}
        for rung in rungs:
            if "instance_count" in rung.params:  # not a trial interrupted before it was given settings
                ladders.setdefault(rung.params["instance_count"], []).append(rung)
        most = self.space.instance_count.high
        if most not in ladders and self._enqueue_rule_of_thumb(most):
            return True
        for _, ladder in sorted(ladders.items()):
            if (params := self._next_rung(ladder)) is not None:
                self.study.enqueue_trial(params, user_attrs={DELAY_RUNG_KEY: ladder[-1].user_attrs.get(
                    DELAY_RUNG_KEY, 0) + 1})
                return True
        return False

    def _next_rung(self, ladder: list[FrozenTrial]) -> dict[str, object] | None:
        """The sampled values of a ladder's next rung, or None where the ladder has ended."""
        last = ladder[-1]
        if not is_feasible(last) or last.value < RUNG_KEEPS * max(t.value for t in ladder if is_feasible(t)):
            return None
        delay = last.params["max_queue_delay_microseconds"]
        longer, _ = self.space.delay_steps(delay)
        return None if longer == delay else {**last.params, "max_queue_delay_microseconds": longer}

    def _queue_local_step(self) -> None:
        """Queue one step from the best feasible config: one setting moved one step (``SearchSpace.neighbours``),
        chosen at random among the settings no trial has tried yet. ``optimize`` calls this after every trial that
        was not itself a step, so the sampler's trials and local steps take turns.

        TPE models the whole space and seldom tries the few cells right beside the best it has found, where a
        better config often is (one more instance, the next batch size or delay): in the replay of the shipped
        grids, with one delay ladder the steps raised one grid's median share of the optimum at 20 trials from 75
        to 100 %; after both ladders they move the mean share by a point or two, and more at higher noise.
        """
        trials = self.study.get_trials(deepcopy=False)
        best = best_trial(self.study)
        if best is None or any(t.state == TrialState.WAITING and _enqueued_settings(t) for t in trials):
            return
        sampled = self.concurrency_search == "sample"
        point = self.space.point(trial_params(best), self.base, best.params.get("concurrency") if sampled else None)
        if point is None:
            return
        tried = {(trial_params(t), t.params.get("concurrency") if sampled else None)
                 for t in trials if "config" in t.user_attrs}
        steps = [step for step in self.space.neighbours(point, self.base)
                 if (self.space.suggest(FixedTrial(step), self.base), step.get("concurrency")) not in tried]
        if steps:
            step = steps[self.rng.integers(len(steps))]
            self.study.enqueue_trial(step, user_attrs={STEP_FROM_KEY: best.number})

    def _measured_twin(self, params: ServerParams, concurrency: int | None) -> FrozenTrial | None:
        """A complete trial that measured these server settings (at this concurrency, where it is sampled).

        TPE proposes the same settings again once it has narrowed down (an eighth to a fifth of the trials of a
        study of 20 on the shipped models, most of them with the batcher off, where only the instance count varies).
        Measuring them again would cost a whole trial for a reading no better than the first; the winner's re-
        measurement at the end is where repeated readings count.
        """
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if SAME_AS_KEY not in trial.user_attrs and trial_params(trial) == params and (
                    concurrency is None or trial.user_attrs["concurrency"] == concurrency):
                return trial
        return None

    def _warmup(self, reloaded: bool) -> float:
        """The next point's warm-up: full on a config that has not served load since it was loaded, else a settle.

        A point is measured right after this, which leaves the config warm.
        """
        warm = self._warm and not reloaded
        self._warm = True
        return SETTLE_S if warm else self.loadgen.settings.warmup_s

    def _measure(self, trial: optuna.Trial, params: ServerParams, concurrency: int | None,
                 warmup_s: float) -> tuple[Measurement, float]:
        """The trial's measurement, at its concurrency or swept (the sweep's points go on the trial), and the
        seconds spent warming up for it."""
        if concurrency is not None:
            return self.loadgen.measure(concurrency, self._hopeless, warmup_s), warmup_s
        measurement, points, spent = self._sweep(warmup_s, fill_level(params))
        trial.set_user_attr("sweep", points)
        return measurement, spent

    def _sweep(self, warmup_s: float, fill: int) -> tuple[Measurement, list[list[float]], float]:
        """Raise the concurrency through the space's powers of two, on the loaded config, while it holds the limit
        and still gains throughput. The best feasible point stands for the trial (the first, when none is); the
        seconds spent warming up, ``warmup_s`` before the first point and a settle before each other, come with it.

        Below ``fill`` requests in flight a dynamic batcher cannot fill a batch and waits out its delay, so latency
        can fall and throughput jump once concurrency reaches it: the sweep does not stop before (errors aside).
        Neither a reload nor a full warm-up is needed between points, so one trial learns a config's useful range.
        """
        first: Measurement | None = None
        best: Measurement | None = None
        points: list[list[float]] = []
        spent = 0.0
        for concurrency in self.space.concurrency_levels():
            point_warmup_s = SETTLE_S if first else warmup_s
            spent += point_warmup_s
            measured = self.loadgen.measure(concurrency, self._hopeless, point_warmup_s)
            points.append([concurrency, round(measured.throughput, 2), round(measured.p95_ms, 3)])
            first = first or measured
            feasible = not (measured.cut_short or measured.errors or measured.p95_ms > self.max_p95_ms)
            gained = best is None or measured.throughput >= best.throughput * (1 + SATURATION_GAIN)
            if feasible and (best is None or measured.throughput > best.throughput):
                best = measured
            if measured.errors or (concurrency >= fill and not (feasible and gained)):
                break
        assert first is not None, "a search space always has a concurrency"
        return best or first, points, spent

    def _hopeless(self, window: Measurement) -> bool:
        """A window with errors, or whose median request is over the limit (so its p95 is too, however noisy the
        tail), condemns the config: measuring on would waste the budget.

        A window without a single reply condemns nothing: a freshly loaded model's first replies can stall past the
        warm-up (lazy initialisation, a busy machine), and a point whose windows all stay empty fails anyway.
        """
        return window.errors > 0 or (window.requests > 0 and window.p50_ms > self.max_p95_ms)


def _enqueued_settings(trial: FrozenTrial) -> bool:
    """Whether a waiting trial holds settings of its own (queued by ``Study.enqueue_trial``, or a retry), which
    run before a local step: the queue's empty slots hold none."""
    return bool(trial.system_attrs.get("fixed_params") or trial.params or trial.user_attrs)


def _answer_from(trial: optuna.Trial, twin: FrozenTrial) -> float:
    """Record ``twin``'s measurement as this trial's, without measuring: the sampler learns the same as from a
    measurement, the trial counts toward the budget, and the study's rankings list the config once."""
    trial.set_user_attr(SAME_AS_KEY, twin.number)
    for key, value in twin.user_attrs.items():
        if key in _MEASURED:
            trial.set_user_attr(key, value)
    _set_constraints(trial, twin.system_attrs[CONSTRAINTS_KEY])
    return twin.value


def _record(trial: optuna.Trial, measurement: Measurement, before: dict[str, float], after: dict[str, float]) -> None:
    for key, value in measurement.as_dict().items():
        if value == "" or (isinstance(value, float) and not math.isfinite(value)):
            continue
        trial.set_user_attr(key, round(value, 4) if isinstance(value, float) else value)
    for key, value in server_times(before, after).items():
        trial.set_user_attr(key, value)


def _best_value(study: optuna.Study) -> float:
    best = best_trial(study)
    return best.value if best is not None and best.value is not None else float("-inf")


def _note(headline: str, config: ModelConfig) -> str:
    """The Markdown note optuna-dashboard shows with a trial: what was measured, then the config to deploy."""
    return f"{headline}\n\n```\n{to_pbtxt(config)}```\n"


def _new_best_note(config: ModelConfig, measurement: Measurement) -> str:
    return _note(f"New best feasible trial: {measurement.throughput:.1f} infer/sec at concurrency "
                 f"{measurement.concurrency}, p95 {measurement.p95_ms:.2f} ms.", config)


def _crowned_note(config: ModelConfig, concurrency: int, runs: list[tuple[float, float, int]]) -> str:
    """The re-measurement's winner: its median figures over its runs (throughput, p95 ms, errors)."""
    throughput = float(np.median([r[0] for r in runs]))
    p95 = float(np.median([r[1] for r in runs]))
    return _note(f"Crowned by re-measurement: median {throughput:.1f} infer/sec over {len(runs)} runs at "
                 f"concurrency {concurrency}, p95 {p95:.2f} ms.", config)


def _set_constraints(trial: optuna.Trial, values: list[float]) -> None:
    """Store constraints in the list form that both Optuna's samplers and optuna-dashboard read.

    ``Trial.set_constraint`` (Optuna 5) writes one key per constraint, which optuna-dashboard 0.21 ignores.
    """
    trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, values)
