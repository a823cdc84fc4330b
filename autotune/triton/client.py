"""gRPC clients of a Triton server, built whole even when Ctrl-C or SIGTERM arrives.

A signal handled while ``InferenceServerClient.__init__`` runs leaves a half-built client, whose ``__del__`` then
prints a traceback when it is collected; autotune turns interruptions into one line, so their handlers wait until
the client is built. (Blocking the signals would not do: gRPC's own threads would take them.)
"""

from __future__ import annotations

import signal
import threading

import tritonclient.grpc as grpcclient

INTERRUPTIONS = (signal.SIGINT, signal.SIGTERM)


def connect(url: str) -> grpcclient.InferenceServerClient:
    """A client of the server at ``url``; an interruption while it is made is raised once it is made."""
    if threading.current_thread() is not threading.main_thread():  # Python runs signal handlers there alone
        return grpcclient.InferenceServerClient(url)
    pending: list[int] = []
    handlers = {signum: signal.signal(signum, lambda signum, _: pending.append(signum)) for signum in INTERRUPTIONS}
    try:
        return grpcclient.InferenceServerClient(url)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in pending:
            signal.raise_signal(signum)
