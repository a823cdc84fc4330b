"""``optimize --gpus``: one worker process per GPU, each with its own embedded server, all on one study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import typer

from autotune.errors import AutotuneError


def run_workers(gpus: list[str]) -> None:
    """Run this same command once per GPU, each worker seeing only its GPU, and pass on the last one's summary.

    The workers share the study through its storage; the one that finishes last reports the whole study.
    """
    if not gpus:
        raise AutotuneError("--gpus: name at least one GPU id, e.g. --gpus 0,1")
    argv = _without_option(sys.argv[1:], "--gpus")
    workers = [subprocess.Popen([sys.executable, "-m", "autotune", *argv], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus]
    # A terminal's Ctrl-C reaches every worker by itself; a SIGTERM sent to this process is passed on.
    signal.signal(signal.SIGTERM, lambda *_: [w.send_signal(signal.SIGTERM) for w in workers])
    finished: list[subprocess.Popen[str]] = []
    try:
        while len(finished) < len(workers):
            finished += [w for w in workers if w not in finished and w.poll() is not None]
            time.sleep(0.2)
    except KeyboardInterrupt:
        for process in workers:
            process.wait()
        raise
    last = finished[-1]
    typer.echo(last.stdout.read() if last.stdout else "", nl=False)
    for gpu, worker in zip(gpus, workers, strict=True):
        if worker.returncode < 0:
            typer.echo(f"autotune: error: the worker on GPU {gpu} was ended by "
                       f"{signal.Signals(-worker.returncode).name}; rerun to resume", err=True)
    # A worker ended by a signal exits as a shell reports it, 128 + the signal's number.
    failed = max(128 - w.returncode if w.returncode < 0 else w.returncode for w in workers)
    if failed:
        raise typer.Exit(failed)


def _without_option(args: list[str], name: str) -> list[str]:
    """``args`` less ``name VALUE`` and ``name=VALUE``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept
