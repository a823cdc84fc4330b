"""The ``autotune`` command line (typer): its commands, shared options, servers and multi-GPU workers."""

from __future__ import annotations

import warnings

import optuna

from autotune.cli.app import app


def main() -> None:
    """Console-script entry point: Optuna's own logging and experimental warnings stay out of the output."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    app(prog_name="autotune")


__all__ = ["app", "main"]
