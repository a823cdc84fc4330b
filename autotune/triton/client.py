"""gRPC clients of a Triton server, built whole even when Ctrl-C or SIGTERM arrives.

A signal handled while ``InferenceServerClient.__init__`` runs leaves a half-built client, whose ``__del__`` then
prints a traceback when it is collected; autotune turns interruptions into one line, so they wait until the
client is built.
"""

from __future__ import annotations

import tritonclient.grpc as grpcclient

from autotune.interruptions import held


def connect(url: str) -> grpcclient.InferenceServerClient:
    """A client of the server at ``url``; an interruption while it is made is raised once it is made."""
    with held():
        return grpcclient.InferenceServerClient(url)
