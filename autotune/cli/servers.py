"""The server a command works on: the user's own at ``--url``, or an embedded one, restarted after a crash."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import typer
from tritonclient.utils import InferenceServerException

from autotune.errors import AutotuneError
from autotune.interruptions import held
from autotune.triton.embedded import EmbeddedServer, EmbeddedServerCrashed
from autotune.triton.server import QUERY_TIMEOUT_S, repository_models

DEMO_MODEL = "mlp"
# Fresh embedded servers one optimize run may start after crashes, before it gives up with the crash's error.
MAX_RESTARTS = 3
T = TypeVar("T")


@contextlib.contextmanager
def serving(url: str | None, model_repository: Path) -> Iterator[tuple[str, EmbeddedServer | None]]:
    """The server to work on: ``url``, or an embedded one. Losing it mid-run is one line, with its log if ours.

    While it is in use, Ctrl-C and SIGTERM are raised at the run's safe points only (``interruptions.held``).
    """
    if url is not None:
        with held(), _lost_server(url, None):
            yield url, None
        return
    if not model_repository.is_dir():
        raise AutotuneError(f"model repository {model_repository} is not a directory")
    with held(), EmbeddedServer(model_repository) as embedded, _lost_server(embedded.url, embedded):
        yield embedded.url, embedded


@contextlib.contextmanager
def _lost_server(url: str, embedded: EmbeddedServer | None) -> Iterator[None]:
    try:
        yield
    except InferenceServerException as error:
        crash = embedded.crash_error() if embedded is not None else None
        if crash is not None:
            raise crash from None
        log = f" (server log {embedded.log_path}: {embedded.log_tail()})" if embedded is not None else ""
        if error.status() == "StatusCode.DEADLINE_EXCEEDED":
            raise AutotuneError(f"the Triton server at {url} stopped answering (a query waited {QUERY_TIMEOUT_S:g} s "
                                f"and more); the running trial is left for a rerun{log}") from None
        raise AutotuneError(f"lost the Triton server at {url}: {error.message()}{log}") from None


def restarting_crashed_servers(attempt: Callable[[], T]) -> T:
    """Call ``attempt`` again, on a fresh embedded server, each time the embedded one crashes, a few times at most.

    Triton's Python backend (2.51, the embedded one) can crash at random under load; the trial it took down is
    recorded as failed and does not count, so the study resumes where it was. A server of the user's own is not
    restarted: that is for its owner to do.
    """
    crashes = 0
    while True:
        try:
            return attempt()
        except EmbeddedServerCrashed as crash:
            crashes += 1
            if crashes > MAX_RESTARTS:
                raise AutotuneError(f"{crash}; that was its crash number {crashes} in this run, so autotune gives "
                                    "up: rerun to resume the study") from None
            typer.echo(f"autotune: warning: {crash}; starting a new one and resuming the study "
                       f"(restart {crashes} of at most {MAX_RESTARTS})", err=True)


def choose_model(url: str, model: str | None) -> str:
    if model is not None:
        return model
    names = repository_models(url)
    if len(names) == 1:
        return names[0]
    if DEMO_MODEL in names:
        return DEMO_MODEL
    raise AutotuneError(f"the repository holds several models ({', '.join(names)}); choose one with --model")


def cpu() -> str:
    """This machine's processor, recorded with studies measured on the embedded server."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'unknown CPU'} x {os.cpu_count()}"
