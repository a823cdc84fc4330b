"""EmbeddedServer itself: the tritonserver autotune starts when no --url is given."""

import contextlib
import ipaddress
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from autotune.triton.embedded import EmbeddedServer
from autotune.triton.server import ModelServer


def test_a_stopped_embedded_server_leaves_nothing_behind(repository: Path) -> None:
    with EmbeddedServer(repository) as server:
        ModelServer(server.url, "mlp").close()
        workspace = server.log_path.parent
        assert _regions(workspace), "a loaded Python-backend model holds shared memory named after the workspace"
    assert not workspace.exists()
    assert not _regions(workspace)


def test_a_crashed_embedded_server_leaves_only_its_log_behind(repository: Path, triton: EmbeddedServer) -> None:
    with EmbeddedServer(repository) as server:
        ModelServer(server.url, "mlp").close()
        group = server.pid
        assert group is not None
        os.kill(group, signal.SIGKILL)
        time.sleep(0.5)
        assert _running_in_group(group), "the Python-backend stub should outlive its killed server"
        assert _regions(server.log_path.parent), "and so should its shared memory"
    deadline = time.monotonic() + 5
    while _running_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running_in_group(group)
    assert not _regions(server.log_path.parent)
    assert "Started GRPCInferenceService" in server.log_path.read_text()
    EmbeddedServer(repository).stop()
    assert server.log_path.exists(), "the next embedded server keeps a crash's log"
    assert triton.log_path.exists(), "and every workspace whose autotune still runs"
    shutil.rmtree(server.log_path.parent)


def _regions(workspace: Path) -> list[Path]:
    """The Python backend's shared-memory regions of the server with this workspace."""
    return list(Path("/dev/shm").glob(f"{workspace.name}-*"))


def _running_in_group(group: int) -> list[int]:
    """Processes of a process group that are still running (not zombies)."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            running.append(int(stat.parent.name))
    return running


SELF_COMPLETING_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "INPUT", "data_type": "TYPE_FP32", "dims": [4]})
        config.add_output({"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [4]})
        return config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", pb_utils.get_input_tensor_by_name(
            request, "INPUT").as_numpy())]) for request in requests]
'''


@pytest.mark.server
def test_a_model_that_completes_its_own_config_still_loads(tmp_path: Path) -> None:
    """The embedded server skips Triton's config auto-completion for speed, but not when a model relies on it."""
    repository = tmp_path / "model_repository"
    shutil.copytree(Path(__file__).resolve().parent.parent / "model_repository" / "mlp", repository / "mlp")
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 8\n')
    (repository / "echo" / "1" / "model.py").write_text(SELF_COMPLETING_MODEL)
    with EmbeddedServer(repository) as server:
        echo = ModelServer(server.url, "echo")
        assert [tensor.name for tensor in echo.running_config().input] == ["INPUT"]
        echo.close()


def test_the_embedded_server_listens_on_loopback_only_with_http_and_metrics_off(triton: EmbeddedServer) -> None:
    assert triton.pid is not None
    assert _listening(triton.pid) == {("127.0.0.1", triton.grpc_port)}


def _listening(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses a process listens on, read from /proc: its sockets' inodes, looked up in the kernel's
    tables of IPv4 and IPv6 sockets."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                found.add((str(ipaddress.ip_address(bytes.fromhex(address)[::-1]) if len(address) == 8
                               else _ipv6(address)), int(port, 16)))
    return found


def _ipv6(address: str) -> str:
    """/proc/net/tcp6 prints an IPv6 address as four host-order 32-bit words; an IPv4-mapped one (gRPC listens on
    ``::ffff:127.0.0.1`` for 127.0.0.1) reads as its IPv4 address."""
    words = bytes.fromhex(address)
    parsed = ipaddress.IPv6Address(b"".join(words[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(parsed.ipv4_mapped or parsed)
