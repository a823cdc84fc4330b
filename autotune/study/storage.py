"""Optuna storages from the URLs users pass to ``--storage``.

Relational databases (SQLite, PostgreSQL, MySQL) get Optuna's heartbeat: a worker that dies leaves its trial
RUNNING only until the grace period ends, when another worker fails it and re-queues its parameters. Their
connections are checked before use, so workers outlive a restart of the database server. A
``journal:PATH`` URL selects Optuna's journal file storage, for workers that share only a file system.
"""

from __future__ import annotations

import contextlib
import errno
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from autotune.errors import AutotuneError
from autotune.interruptions import held

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"
JOURNAL_PREFIX = "journal:"
HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 20
_DRIVER_EXTRAS = {"postgresql": "postgres", "postgres": "postgres"}
# What a file system says when a storage file cannot grow or be written at all.
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})


class _JournalFile(JournalFileBackend):
    """Optuna's journal file, whose appends Ctrl-C and SIGTERM wait for: interrupted as it lets go of its lock,
    Optuna's lock raises ``FileNotFoundError`` instead and leaves the lock for the other workers to wait out. A lock
    left by a killed worker is taken over after Optuna's grace period (30 s): an interruption waits that long at
    most."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with held():
            super().append_logs(logs)


def open_storage(url: str, *, create: bool) -> optuna.storages.BaseStorage:
    """The storage behind ``url``. Without ``create``, a file that is not there is an error, not a new file."""
    path = _file_of(url)
    if path is not None:
        if not create and not path.exists():
            raise AutotuneError(f"no studies yet: {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if url.startswith(JOURNAL_PREFIX):
            return JournalStorage(_JournalFile(str(path)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are, since 2.x
            return RDBStorage(
                url,
                # A connection is checked before each use, so a database server that restarted is reconnected to.
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
    except ImportError:
        extra = _DRIVER_EXTRAS.get(url.split(":", 1)[0].split("+", 1)[0])
        hint = f"pip install 'autotune[{extra}]'" if extra else "install its SQLAlchemy driver"
        raise AutotuneError(f"cannot open storage {mask_password(url)}: no database driver; {hint}") from None
    except Exception as error:  # a bad URL, a refused connection: the types depend on the database driver
        raise AutotuneError(f"cannot open storage {mask_password(url)}: {_reason(error)}") from None


@contextlib.contextmanager
def failures_reported(url: str) -> Iterator[None]:
    """A storage that fails during a run (a read-only file, a full disk, a database that went away) ends the run
    with one line instead of a traceback; what it recorded before stays, so a rerun resumes the study."""
    try:
        yield
    except (SQLAlchemyError, StorageInternalError) as error:  # Optuna wraps a failed commit in the latter
        reason = _reason(error.__cause__ or error)
    except OSError as error:
        if error.errno not in _DISK_ERRORS:
            raise
        reason = _reason(error)
    else:
        return
    raise AutotuneError(f"storage {mask_password(url)} failed: {reason}; what it recorded before is kept, rerun "
                        "to resume once it can be written") from None


def _reason(error: BaseException) -> str:
    """The first line of what went wrong, in the database driver's words where it has some."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _file_of(url: str) -> Path | None:
    if url.startswith(JOURNAL_PREFIX):
        return Path(url.removeprefix(JOURNAL_PREFIX))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def mask_password(url: str) -> str:
    """A storage URL fit to print: any password replaced by ``***``."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
