"""Start the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships, as a child of autotune.

The server listens on loopback only, on free ports, dies with its parent (``PR_SET_PDEATHSIG``), and keeps
its log in a file so that load errors can be quoted back to the user. It completes model configs only where some
model of the repository needs it (``completes_itself``): that costs every reload of a Python model a second.
Stopping it leaves nothing behind but the log of a server that crashed, for the user to read; what a killed
autotune (SIGKILL runs no clean-up) left behind, the next embedded server removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.interruptions import safe_point
from autotune.triton.model_config import completes_itself

_PR_SET_PDEATHSIG = 1
# How long a server whose connections dropped may take to be seen as exited, before it counts as alive.
_EXIT_GRACE_S = 5.0
_FRAME = re.compile(r"^\s*\d+# ")
_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+ +\d+ [^\]]+\] (.*)$")
_WORKSPACE_PREFIX = "autotune-triton-"
# A workspace names the autotune process that made it, so that one left by a killed autotune can be told apart.
_OWNER = "owner.pid"


def _die_with_parent() -> None:
    """SIGTERM, not SIGKILL: the server then shuts down its Python-backend model processes too."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's exists too: signalling it is refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_orphaned_workspaces() -> None:
    """Remove the workspaces, and their shared memory, of autotune processes that are gone without stopping their
    server (killed: the server died with them). A crashed server's kept log, a workspace without its server
    tree, stays for the user to read."""
    for workspace in Path(tempfile.gettempdir()).glob(f"{_WORKSPACE_PREFIX}*"):
        try:
            owner = int((workspace / _OWNER).read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner) or not (workspace / "tritonserver").exists():
            continue
        for region in Path("/dev/shm").glob(f"{workspace.name}-*"):
            region.unlink(missing_ok=True)
        shutil.rmtree(workspace, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distribution() -> tuple[Path, Path]:
    """The wheel's ``tritonserver/`` folder and its bundled shared libraries."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise AutotuneError(
            "the embedded Triton server needs the nvidia-pytriton package (Linux x86_64); "
            "install it or attach to your own server with --url"
        )
    package = Path(spec.origin).parent
    return package / "tritonserver", package.parent / "nvidia_pytriton.libs"


def _prepare_workspace(dist: Path, workspace: Path) -> Path:
    """Mirror the server folder with symlinks and put this Python's backend stub in place."""
    server = workspace / "tritonserver"
    shutil.copytree(dist, server, symlinks=True, copy_function=os.symlink,
                    ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise AutotuneError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    os.symlink(stub, server / "backends" / "python" / "triton_python_backend_stub")
    return server


class EmbeddedServerCrashed(AutotuneError):
    """The embedded server exited while autotune used it: a Triton fault, which a fresh server gets past."""


class EmbeddedServer:
    """A ``tritonserver`` process in explicit model-control mode with no model loaded; a context manager."""

    def __init__(self, model_repository: Path, startup_timeout: float = 120.0) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.startup_timeout = startup_timeout
        self.grpc_port = _free_port()
        _remove_orphaned_workspaces()
        self._workspace = Path(tempfile.mkdtemp(prefix=_WORKSPACE_PREFIX))
        (self._workspace / _OWNER).write_text(str(os.getpid()))
        self.log_path = self._workspace / "tritonserver.log"
        # The Python backend's shared-memory regions are named after this, so a crash's leftovers can be found.
        self._shm_prefix = f"{self._workspace.name}-"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        """The server's process id, which is also its process group's (its backend stubs are in it)."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> EmbeddedServer:
        try:
            self.start()
        except BaseException:  # Ctrl-C or SIGTERM while it starts: no server outlives autotune, nor its workspace
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        dist, libs = _distribution()
        server = _prepare_workspace(dist, self._workspace)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        # The Python backend stub runs the model with the first python3 on PATH: make it ours.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        args = [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={server / 'backends'}",
            f"--cache-directory={server / 'caches'}",
            "--model-control-mode=explicit",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--exit-on-error=false",
            # A model whose instance failed to initialise can hold shutdown for the default 30 s.
            "--exit-timeout-secs=5",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if not any(completes_itself(model) for model in self.model_repository.iterdir() if model.is_dir()):
            args.append("--disable-auto-complete-config")
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                # Its own session: a Ctrl-C in the terminal reaches autotune, which restores and then stops it.
                start_new_session=True,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        from autotune.triton.client import connect

        deadline = time.monotonic() + self.startup_timeout
        client = connect(self.url)
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    raise AutotuneError(f"the embedded Triton server exited at start-up: {self.log_tail()}")
                try:
                    if client.is_server_live():
                        return
                except Exception:
                    pass
                safe_point()
                time.sleep(0.1)
        finally:
            client.close()
        self.stop()
        raise AutotuneError(f"the embedded Triton server did not start within {self.startup_timeout:.0f} s")

    def exit_status(self, wait_s: float = 0.0) -> int | None:
        """The status of a server that exited without being stopped, waiting up to ``wait_s`` for one going down;
        None while it runs."""
        if self._process is None:
            return None
        try:
            return self._process.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None

    def crash_error(self) -> EmbeddedServerCrashed | None:
        """The error to report when the server turns out to have crashed, quoting its log; None while it runs."""
        status = self.exit_status(_EXIT_GRACE_S)
        if status is None:
            return None
        how = f"signal {-status}" if status < 0 else f"exit status {status}"
        return EmbeddedServerCrashed(
            f"the embedded Triton server crashed ({how}; log kept at {self.log_path}: {self._crash_line()})")

    def _crash_line(self) -> str:
        """The log's last line that is not a stack frame: the signal, or the fault that ended the server."""
        lines = self._log_lines()
        return next((line.strip() for line in reversed(lines) if line.strip() and not _FRAME.match(line)), "")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log, for error messages."""
        return " | ".join([line.strip() for line in self._log_lines() if line.strip()][-lines:])

    def last_error(self) -> str:
        """The message of the server's latest error line: why a load failed, when the reply says only 'failed'."""
        errors = [line for line in self._log_lines() if _ERROR_LINE.match(line)]
        return _ERROR_LINE.match(errors[-1]).group(1).strip('"') if errors else ""

    def _log_lines(self) -> list[str]:
        """The log so far; none when it cannot be read, since it only ever adds to an error message."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server, then whatever is left of its process group, its shared memory and its workspace.

        A server that crashed leaves its Python-backend stubs running and their shared memory behind; they go
        too. Its log stays, as the only account of the crash.
        """
        crashed = self.exit_status() is not None
        if self._process is not None:
            if not crashed:
                self._process.send_signal(signal.SIGINT)
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process = None
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            region.unlink(missing_ok=True)
        shutil.rmtree(self._workspace / "tritonserver" if crashed else self._workspace, ignore_errors=True)
