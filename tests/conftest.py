"""Fixtures: a real embedded Triton server over the shipped models plus small ones made here for odd behaviours."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from autotune.params import ServerParams
from autotune.triton.embedded import EmbeddedServer
from autotune.triton.model_config import ModelConfig, from_json, params_of
from autotune.triton.server import ModelServer

ROOT = Path(__file__).resolve().parent.parent

# Loads only while dynamic batching stays at max_batch_size 1 or off: Triton refuses anything else.
PICKY_MODEL = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if "dynamic_batching" in config and config["max_batch_size"] > 1:
            raise ValueError("picky refuses max_batch_size above 1 with dynamic batching")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.zeros((1, 1), np.float32))])
                for _ in requests]
'''

# Loads fine and fails every request.
BROKEN_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("broken on purpose")) for _ in requests]
'''

# Answers each batch of requests only after SECONDS.
SLEEPING_MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(SECONDS)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.zeros((1, 1), np.float32))])
                for _ in requests]
'''
# Longer than any quick measurement lasts.
SLEEPY_MODEL = SLEEPING_MODEL.replace("SECONDS", "5")
# Slow enough that a request is in flight whenever a point ends, quick enough to finish within a window.
SLOW_MODEL = SLEEPING_MODEL.replace("SECONDS", "0.05")

# Takes a second to load, as a real model takes its time.
SLUGGISH_MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(1.0)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.zeros((1, 1), np.float32))])
                for _ in requests]
'''

# Takes inputs of any length: the load generator needs --shape or --input-data to size them.
DYNAMIC_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy().sum(axis=1, keepdims=True))])
            for r in requests]
'''

SMALL_CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT", data_type: TYPE_FP32, dims: [ {dims} ] }} ]
output [ {{ name: "OUTPUT", data_type: TYPE_FP32, dims: [ 1 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
'''


def make_repository(path: Path) -> Path:
    """The shipped model repository plus the test-only models made here."""
    shutil.copytree(ROOT / "model_repository", path)
    for name, code, dims in (("picky", PICKY_MODEL, 4), ("broken", BROKEN_MODEL, 4), ("sleepy", SLEEPY_MODEL, 4),
                             ("slow", SLOW_MODEL, 4), ("sluggish", SLUGGISH_MODEL, 4), ("dynamic", DYNAMIC_MODEL, -1)):
        (path / name / "1").mkdir(parents=True)
        (path / name / "config.pbtxt").write_text(SMALL_CONFIG.format(name=name, dims=dims))
        (path / name / "1" / "model.py").write_text(code)
    return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_configs(repository: Path) -> dict[str, bytes]:
    """Every model's ``config.pbtxt`` in a repository, as bytes: what autotune must never write unasked."""
    found = {str(path.relative_to(repository)): path.read_bytes() for path in repository.glob("*/config.pbtxt")}
    assert found, f"no model configs under {repository}"
    return found


def wait_for_a_reload(holder: ModelServer, before: ModelConfig, process: subprocess.Popen[str]) -> None:
    """Wait until ``process`` (an ``autotune optimize``) has loaded a trial's own settings on ``holder``'s model:
    from then on there is something to restore."""
    deadline = time.monotonic() + 120
    while holder.running_config() == before:
        assert process.poll() is None and time.monotonic() < deadline, "no trial reloaded the model"
        time.sleep(0.02)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo") / "model_repository")


@pytest.fixture(scope="session")
def triton(repository: Path) -> Iterator[EmbeddedServer]:
    """One real server for the session; every test leaves its models as it found them."""
    with EmbeddedServer(repository) as server:
        yield server


@pytest.fixture(autouse=True)
def models_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the session's server leaves its models as it found them: loaded or not, with the same settings,
    so that no test passes only because another one ran first."""
    if "triton" not in request.fixturenames:
        yield
        return
    url = request.getfixturevalue("triton").url
    before = loaded_models(url)
    yield
    assert loaded_models(url) == before, "the test left the session server's models changed"


def loaded_models(url: str) -> dict[str, ServerParams]:
    """The models a server has loaded, with their tuned settings."""
    client = grpcclient.InferenceServerClient(url)
    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
        return {entry["name"]: params_of(from_json(client.get_model_config(entry["name"], as_json=True)["config"]))
                for entry in index if entry.get("state") == "READY"}
    finally:
        client.close()


@pytest.fixture
def handlers_as_in_a_terminal() -> Iterator[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM ends the process, whatever the suite was started with (a
    shell's background job has SIGINT ignored)."""
    before = {signum: signal.signal(signum, handler) for signum, handler in
              [(signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)]}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL database: .ci/run starts one and exports its URL; in CI these tests must not skip."""
    url = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide AUTOTUNE_TEST_POSTGRES_URL (see .ci/run)")
        pytest.skip("set AUTOTUNE_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the model repository starts a real server, or runs on the session's: it is a ``server``
    test, so that ``pytest -m "not server"`` runs the pure ones in seconds."""
    for item in items:
        if "repository" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
