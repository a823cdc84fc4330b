"""Ctrl-C and SIGTERM, raised only where autotune's code is ready to stop.

autotune turns both into exceptions that unwind a run: the trial cut short recorded as failed, the model put back,
one line said. Python raises a signal's exception wherever the main thread happens to be, and much of a run does
not survive that: a database write cut in its middle ("database is locked", a PostgreSQL connection left
mid-query), Optuna's journal-file lock interrupted as it is let go (left behind, ``FileNotFoundError``), a gRPC
client half built (a traceback when it is collected), and a garbage collector's callback, where the exception is
printed as "ignored" and the signal lost. So within ``held()`` the handlers only note a signal, and it is raised
at the run's safe points (``safe_point()``: between trials, between a measurement's windows, while a wait polls),
or when the block ends. Blocking the signals would not do: gRPC's own threads would take them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from types import FrameType
from typing import TypeVar

INTERRUPTIONS = (signal.SIGINT, signal.SIGTERM)
# How often ``interruptible`` looks for a noted interruption while its call blocks.
POLL_S = 0.1
T = TypeVar("T")

_noted: list[int] | None = None  # the signals noted within the outermost ``held()``; None outside one


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the running trial is recorded as failed and the model restored."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` within the block, as Ctrl-C raises ``KeyboardInterrupt``; the handler before
    it is put back after."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are noted, not raised: ``safe_point()`` raises one, and one still noted
    when the block ends is raised then, to the handlers before it. A block within another adds nothing, and a
    signal the process ignores stays ignored."""
    global _noted
    if _noted is not None or threading.current_thread() is not threading.main_thread():  # signals land there only
        yield
        return
    noted: list[int] = []
    handlers = {signum: signal.signal(signum, lambda signum, _: noted.append(signum)) for signum in INTERRUPTIONS
                if signal.getsignal(signum) is not signal.SIG_IGN}  # as a shell's background job has SIGINT
    _noted, interrupted = noted, False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True  # a run already unwinding for an interruption needs no second one
        raise
    finally:
        _noted = None
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if noted and not interrupted:
            signal.raise_signal(noted[0])


def safe_point() -> None:
    """Raise the interruption noted within ``held()``, if any: ``KeyboardInterrupt`` for Ctrl-C, ``Terminated``
    for SIGTERM."""
    if _noted:
        signum = _noted[0]
        _noted.clear()
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def interruptible(call: Callable[[], T], check: Callable[[], object] | None = None, check_every_s: float = 1.0) -> T:
    """``call()``, made in a thread of its own so that an interruption noted meanwhile is raised within ``POLL_S``:
    for blocking calls that can take minutes, such as a model's load. ``check``, where given, is called every
    ``check_every_s`` meanwhile, and what it raises leaves the call too (a server that stopped answering while it
    loads). A call left goes on in the background until it returns; its thread does not hold up the process's
    exit."""
    if _noted is None and check is None:
        return call()
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except Exception as error:
            future.set_exception(error)

    threading.Thread(target=run, name="autotune-call", daemon=True).start()
    checked = time.monotonic()
    while not wait([future], POLL_S).done:
        safe_point()
        if check is not None and time.monotonic() - checked >= check_every_s:
            check()
            checked = time.monotonic()
    return future.result()
