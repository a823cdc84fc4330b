"""ModelServer against a real embedded Triton server, and the gRPC clients it talks through."""

import os
import signal
import threading
import time

import pytest
import tritonclient.grpc as grpcclient
from conftest import loaded_models
from tritonclient.utils import InferenceServerException

from autotune.errors import AutotuneError
from autotune.interruptions import Terminated, sigterm_interrupts
from autotune.params import ServerParams
from autotune.triton import client
from autotune.triton.embedded import EmbeddedServer
from autotune.triton.model_config import apply, params_of
from autotune.triton.server import QUERY_TIMEOUT_S, ConfigRejected, ModelServer


@pytest.fixture
def mlp(triton: EmbeddedServer):
    """mlp as a user's server would have it: loaded from its config.pbtxt before autotune attaches."""
    loader = ModelServer(triton.url, "mlp")
    server = ModelServer(triton.url, "mlp", explain=triton.last_error)
    yield server
    server.restore()
    server.close()
    loader.restore()
    loader.close()


def test_a_config_is_loaded_in_place_and_verified(mlp: ModelServer) -> None:
    wanted = ServerParams(True, 8, 500, (4,), 2)
    mlp.apply(apply(mlp.original, wanted))
    assert params_of(mlp.running_config()) == wanted


def test_restore_brings_back_the_repository_config(mlp: ModelServer) -> None:
    mlp.apply(apply(mlp.original, ServerParams(True, 4, 100, (), 3)))
    mlp.restore()
    assert mlp.was_loaded
    assert params_of(mlp.running_config()) == params_of(mlp.original)
    assert not mlp.running_config().HasField("dynamic_batching")


def test_a_config_triton_refuses_raises_and_the_old_one_keeps_serving(mlp: ModelServer) -> None:
    refused = apply(mlp.original, ServerParams(True, 8, 100, (16,), 1))
    with pytest.raises(ConfigRejected, match="preferred size must be <= max batch size"):
        mlp.apply(refused)
    assert params_of(mlp.running_config()) == params_of(mlp.original)


def test_a_model_that_fails_to_initialise_is_a_rejected_config(triton: EmbeddedServer) -> None:
    picky = ModelServer(triton.url, "picky")
    try:
        with pytest.raises(ConfigRejected, match="picky refuses"):
            picky.apply(apply(picky.original, ServerParams(True, 4, 100, (), 1)))
    finally:
        picky.restore()
        picky.close()


def test_a_model_not_loaded_before_is_unloaded_again(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "wide_mlp")
    assert not server.was_loaded
    server.restore()
    server.close()
    assert "wide_mlp" not in loaded_models(triton.url)


def test_a_server_that_hangs_while_a_model_loads_is_found_out_within_a_querys_deadline(
        triton: EmbeddedServer) -> None:
    # "sluggish" takes a second to load; the server stops half a second into a reload of it. The load's own
    # timeout is minutes; the server is asked, while it loads, whether it still answers.
    assert triton.pid is not None
    sluggish = ModelServer(triton.url, "sluggish")
    stop = threading.Timer(0.5, os.kill, (triton.pid, signal.SIGSTOP))
    started = time.monotonic()
    stop.start()
    try:
        with pytest.raises(InferenceServerException) as hung:
            sluggish.apply(apply(sluggish.original, ServerParams(False, 8, instance_count=2)))
        waited = time.monotonic() - started
    finally:
        stop.cancel()
        os.kill(triton.pid, signal.SIGCONT)
        sluggish.restore()
        sluggish.close()
    assert hung.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert waited < QUERY_TIMEOUT_S + 3, "found out by a query's deadline, not the load's"


def test_unknown_models_are_named_with_the_ones_that_exist(triton: EmbeddedServer) -> None:
    with pytest.raises(AutotuneError, match=r"unknown model 'nope'.*mlp"):
        ModelServer(triton.url, "nope")


def test_an_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(AutotuneError, match=r"cannot reach a Triton server at 127\.0\.0\.1:1"):
        ModelServer("127.0.0.1:1", "mlp")


def test_statistics_count_requests_and_batches(mlp: ModelServer) -> None:
    stats = mlp.statistics()
    assert {"success_count", "execution_count", "queue_ns", "compute_infer_ns"} <= set(stats)


def test_sigterm_while_a_client_is_built_is_raised_once_it_is_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-built tritonclient prints a traceback when it is collected; autotune's interruptions are one line."""
    built: list[grpcclient.InferenceServerClient] = []

    class SignalledWhileBuilt(grpcclient.InferenceServerClient):
        def __init__(self, url: str) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            super().__init__(url)
            built.append(self)

    monkeypatch.setattr(client.grpcclient, "InferenceServerClient", SignalledWhileBuilt)
    with sigterm_interrupts(), pytest.raises(Terminated):
        client.connect("127.0.0.1:1")
    assert len(built) == 1, "the client was finished before the signal was raised"
    built[0].close()
