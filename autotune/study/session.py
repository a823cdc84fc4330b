"""One worker's tuning session: the study opened or resumed, its trials run, the winner re-measured, and the
model put back as the server had it, whatever happens."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import optuna
from optuna_dashboard import save_note
from rich.console import Console

from autotune.load.loop import LoadGenerator
from autotune.load.policy import Meter
from autotune.load.schedule import Schedule
from autotune.records import (
    BASE_CONFIG_KEY,
    CLOSED_LOOP,
    CONFIRM_ROUNDS,
    CONFIRM_TOP,
    RESTORE_PENDING_KEY,
    StudySettings,
)
from autotune.report.progress import TrialProgress
from autotune.report.summary import study_note
from autotune.search import ConcurrencySearch, SamplerName, SearchSpace, Strategy, strategy_for
from autotune.study.objective import Objective
from autotune.study.open import hardware_differences, left_by, open_study
from autotune.study.storage import failures_reported, mask_password, open_storage
from autotune.study.tuner import Tuner
from autotune.triton.model_config import to_pbtxt
from autotune.triton.server import ModelServer


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


@dataclass(frozen=True)
class Search:
    """How the study searches: Optuna's sampler, whether concurrency is sampled or swept, the strategy that
    proposes trials (None: the one that goes with the sampler, ``strategy_for``), and, for a study of the highest
    request rate sustained, the open loop's ``arrivals`` (their pattern; the rate sweep sets the rate) and its cap
    on requests in flight."""

    sampler: SamplerName = "tpe"
    concurrency: ConcurrencySearch = "sweep"
    seed: int | None = None
    strategy: Strategy | None = None
    arrivals: Schedule | None = None
    max_in_flight: int = 512

    @property
    def load(self) -> str:
        """What the study measures under, as it records it (``records.LOAD_KEY``)."""
        return CLOSED_LOOP if self.arrivals is None else f"rate, {self.arrivals.arrivals}"


def tune(server: ModelServer, load: LoadGenerator, space: SearchSpace, *, study_name: str, storage: str,
         settings: StudySettings, budget: Budget, search: Search = Search(), confirm_rounds: int = CONFIRM_ROUNDS,
         quiet: bool = False, hardware: dict[str, str] | None = None) -> optuna.Study:
    """Run the study's trials on ``server``; whatever happens, the model goes back to how the server had it.

    Progress goes to stderr (nothing but warnings when ``quiet``); ``hardware`` is recorded with the study and
    compared with what it recorded before.
    """
    worker = {"worker_host": socket.gethostname(), "server_url": server.url,
              "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "none")}
    limit_ms = settings.max_p95_ms
    study: optuna.Study | None = None
    with failures_reported(storage):
        try:
            attrs = {**settings.as_attrs(), "space": space.source, BASE_CONFIG_KEY: to_pbtxt(server.original),
                     **server.server_info(), **(hardware or {})}
            opened = open_storage(storage, create=True)
            study = open_study(study_name, opened, search.seed, attrs, sampler=search.sampler)
            if (left := left_by(study, server.original, server.url)) is not None:
                print(f"autotune: warning: {server.model} still runs trial {left.trial.number}'s settings, as a "
                      "restore that did not finish left it; it goes back to the config the study started from when "
                      "this run ends", file=sys.stderr)
                server.original = left.base
            differences = hardware_differences(study, attrs)
            if differences:
                print(f"autotune: warning: this worker's server differs from the study's: {'; '.join(differences)}. "
                      "Its trials record worker_host and server_url, so they can be told apart.", file=sys.stderr)
            meter = Meter(load, limit_ms, load.settings.warmup_s, space.concurrency_levels(),
                          arrivals=search.arrivals, max_in_flight=search.max_in_flight)
            objective = Objective(server, meter, space, search.concurrency == "sample", worker)
            strategy = search.strategy or strategy_for(search.sampler)
            tuner = Tuner(study, opened, objective, strategy, np.random.default_rng(search.seed))
            console = Console(stderr=True, soft_wrap=True, quiet=quiet)
            goal = "" if search.arrivals is None else (
                f", for the highest request rate sustained ({search.arrivals.arrivals} arrivals)")
            console.print(f"Tuning {server.model} on {server.url}: {budget.trials} trials, p95 limit {limit_ms:g} ms"
                          f"{goal}, study {study_name} in {mask_password(storage)}", markup=False, highlight=False)
            try:
                with TrialProgress(study, budget.trials, limit_ms, console, strategy) as progress:
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
            _put_back(server, study)
    assert study is not None  # set, or tune raised
    return study


def _put_back(server: ModelServer, study: optuna.Study | None) -> None:
    """Restore the model. Where that fails (the server hung or went away), the study records the server, so that a
    rerun knows that its model runs a trial's settings and not the user's (``open.left_by``)."""
    try:
        server.restore()
    except BaseException:
        if study is not None:
            with contextlib.suppress(Exception):  # the storage may be what failed
                study.set_user_attr(RESTORE_PENDING_KEY, server.url)
        raise
    else:
        with contextlib.suppress(Exception):  # a storage that failed must not hide why the run ended
            if study is not None and study.user_attrs.get(RESTORE_PENDING_KEY) == server.url:
                study.set_user_attr(RESTORE_PENDING_KEY, None)
    finally:
        server.close()
