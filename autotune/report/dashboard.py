"""optuna-dashboard on a study storage, with autotune's best trial on its Best Trial card.

optuna-dashboard (0.21) asks the storage for the best trial, and Optuna's storages rank every complete trial by
its value alone: the card would show a config that breaks the latency limit whenever one measured more throughput
than the best that holds it (optuna-dashboard issue 772). The storage served here answers with ``best_trial``, as
``autotune best`` and ``export`` do.
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from optuna_dashboard import run_server

from autotune.records import best_trial


class _AutotuneBest(BaseStorage):
    """Put before a storage's own class: its best trial is autotune's, where the study has one."""

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        study = optuna.load_study(study_name=self.get_study_name_from_id(study_id), storage=self)
        best = best_trial(study)
        return best if best is not None else super().get_best_trial(study_id)


def with_autotune_best(storage: BaseStorage) -> BaseStorage:
    """``storage`` itself, its ``get_best_trial`` answering with autotune's best (feasible, or crowned) trial."""
    storage.__class__ = type(f"AutotuneBest{type(storage).__name__}", (_AutotuneBest, type(storage)), {})
    return storage


def serve(storage: BaseStorage, host: str, port: int) -> None:
    """Serve optuna-dashboard on ``storage`` until interrupted."""
    run_server(with_autotune_best(storage), host=host, port=port)
