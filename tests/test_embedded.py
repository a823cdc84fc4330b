"""EmbeddedServer itself: the tritonserver autotune starts when no --url is given."""

import os
import signal
import time
from pathlib import Path

from autotune.embedded import EmbeddedServer
from autotune.server import ModelServer


def test_a_crashed_embedded_server_leaves_no_backend_stub_behind(repository: Path) -> None:
    with EmbeddedServer(repository) as server:
        ModelServer(server.url, "mlp").close()
        group = server.pid
        assert group is not None
        os.kill(group, signal.SIGKILL)
        time.sleep(0.5)
        assert _running_in_group(group), "the Python-backend stub should outlive its killed server"
    deadline = time.monotonic() + 5
    while _running_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running_in_group(group)


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
