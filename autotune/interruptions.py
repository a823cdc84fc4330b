"""Ctrl-C and SIGTERM held back over code that an exception raised in its middle would leave broken.

autotune turns both into exceptions that unwind a run (a trial recorded as failed, the model put back). Python
raises them wherever the main thread is, and some code does not survive that: a gRPC client half built prints a
traceback when it is collected, and Optuna's journal-file lock, interrupted as it is let go, stays behind and
raises ``FileNotFoundError``. Within ``deferred_interruptions`` the handlers only note a signal; it is raised
again, to the handlers before, when the block ends. (Blocking the signals would not do: gRPC's own threads would
take them.)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

INTERRUPTIONS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interruptions() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait; each that arrived is raised once the block has ended."""
    if threading.current_thread() is not threading.main_thread():  # Python runs signal handlers there alone
        yield
        return
    pending: list[int] = []
    handlers = {signum: signal.signal(signum, lambda signum, _: pending.append(signum)) for signum in INTERRUPTIONS}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in pending:
            signal.raise_signal(signum)
