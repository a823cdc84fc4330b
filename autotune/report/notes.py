"""The Markdown notes optuna-dashboard shows with a trial: what was measured, then the config to deploy."""

from __future__ import annotations

import numpy as np

from autotune.load.windows import Measurement
from autotune.triton.model_config import ModelConfig, to_pbtxt


def _note(headline: str, config: ModelConfig) -> str:
    return f"{headline}\n\n```\n{to_pbtxt(config)}```\n"


def new_best_note(config: ModelConfig, measured: Measurement) -> str:
    figures = (f"sustains {measured.offered_rate:.0f} requests/s ({measured.throughput:.1f} infer/sec)"
               if measured.open_loop else f"{measured.throughput:.1f} infer/sec at concurrency {measured.concurrency}")
    return _note(f"New best feasible trial: {figures}, p95 {measured.p95_ms:.2f} ms.", config)


def crowned_note(config: ModelConfig, load: str, throughputs: list[float], p95s_ms: list[float]) -> str:
    """The re-measurement's winner: its median figures over its runs under ``load`` ("concurrency 16", "500
    requests/s")."""
    return _note(f"Crowned by re-measurement: median {float(np.median(throughputs)):.1f} infer/sec over "
                 f"{len(throughputs)} runs at {load}, p95 {float(np.median(p95s_ms)):.2f} ms.", config)
