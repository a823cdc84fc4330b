"""The Markdown notes optuna-dashboard shows with a trial: what was measured, then the config to deploy."""

from __future__ import annotations

import numpy as np

from autotune.triton.model_config import ModelConfig, to_pbtxt


def _note(headline: str, config: ModelConfig) -> str:
    return f"{headline}\n\n```\n{to_pbtxt(config)}```\n"


def new_best_note(config: ModelConfig, throughput: float, concurrency: int, p95_ms: float) -> str:
    return _note(f"New best feasible trial: {throughput:.1f} infer/sec at concurrency {concurrency}, "
                 f"p95 {p95_ms:.2f} ms.", config)


def crowned_note(config: ModelConfig, concurrency: int, throughputs: list[float], p95s_ms: list[float]) -> str:
    """The re-measurement's winner: its median figures over its runs."""
    return _note(f"Crowned by re-measurement: median {float(np.median(throughputs)):.1f} infer/sec over "
                 f"{len(throughputs)} runs at concurrency {concurrency}, p95 {float(np.median(p95s_ms)):.2f} ms.",
                 config)
