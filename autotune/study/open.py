"""Opening studies: create or resume one for tuning, or load an existing one for the commands that only read."""

from __future__ import annotations

from typing import NamedTuple

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from autotune.errors import AutotuneError
from autotune.records import (
    BASE_CONFIG_KEY,
    CLOSED_LOOP,
    CONFIG_KEY,
    LOAD_KEY,
    MAX_P95_KEY,
    MODEL_KEY,
    RESTORE_PENDING_KEY,
    trial_params,
)
from autotune.search.samplers import SamplerName, make_sampler
from autotune.study.storage import mask_password, open_storage
from autotune.triton.model_config import ModelConfig, params_of, parse_pbtxt

# What a worker records about its server; a worker whose server differs from the study's is warned.
HARDWARE_ATTRS = ("server_version", "instance_kind", "cpu")
# What the study maximises, as the dashboard and Optuna's plots label it: closed-loop, open-loop.
OBJECTIVE_NAME = "infer/sec"
RATE_OBJECTIVE_NAME = "requests/sec sustained"


def open_study(name: str, storage: BaseStorage, seed: int | None, attrs: dict[str, object],
               sampler: SamplerName = "tpe") -> optuna.Study:
    """Create or resume the study, recording ``attrs`` where it has none yet.

    Refuses to mix trials measured under a different model, limit or load.
    """
    try:
        started = len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        started = 0
    # On resume, a fixed seed is shifted so the random start-up trials do not repeat the first run's.
    chosen = make_sampler(sampler, None if seed is None else seed + started)
    study = optuna.create_study(study_name=name, storage=storage, sampler=chosen, direction="maximize",
                                load_if_exists=True)
    if study.metric_names is None:  # optuna-dashboard names the objective by this, else "Objective 0"
        study.set_metric_names([OBJECTIVE_NAME if attrs.get(LOAD_KEY, CLOSED_LOOP) == CLOSED_LOOP
                                else RATE_OBJECTIVE_NAME])
    for key, value in attrs.items():
        recorded = study.user_attrs.get(key)
        if recorded is None and key == LOAD_KEY and started:
            recorded = CLOSED_LOOP  # a study from before open loops measured under a closed one
        if recorded is None:
            study.set_user_attr(key, value)
        elif key in (MODEL_KEY, MAX_P95_KEY, LOAD_KEY) and recorded != value:
            raise AutotuneError(
                f"study {name!r} was run with {key} = {recorded}, not {value}; choose another --study"
            )
    return study


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


def hardware_differences(study: optuna.Study, attrs: dict[str, object]) -> list[str]:
    """Where this worker's server differs from the one the study was started on, as readable phrases."""
    return [f"{key} {attrs[key]} (the study has {study.user_attrs[key]})" for key in HARDWARE_ATTRS
            if key in attrs and key in study.user_attrs and attrs[key] != study.user_attrs[key]]


class Leftover(NamedTuple):
    """A model that still runs a trial's settings: the trial, and the config the study started from."""

    trial: FrozenTrial
    base: ModelConfig


def left_by(study: optuna.Study, running: ModelConfig, url: str) -> Leftover | None:
    """What a restore that did not finish left on the server at ``url`` (it hung or went away before the model was
    put back, and the study says so); None where the model runs anything else, such as a winner the user deployed,
    which autotune leaves as it finds it."""
    recorded = study.user_attrs.get(BASE_CONFIG_KEY)
    if recorded is None or study.user_attrs.get(RESTORE_PENDING_KEY) != url:
        return None
    base = parse_pbtxt(recorded, f"study {study.study_name}'s base config")
    settings = params_of(running)
    if settings == params_of(base):
        return None
    trial = next((t for t in study.get_trials(deepcopy=False)
                  if CONFIG_KEY in t.user_attrs and trial_params(t) == settings), None)
    return None if trial is None else Leftover(trial, base)
