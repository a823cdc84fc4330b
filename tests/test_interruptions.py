"""Ctrl-C and SIGTERM within a run: noted wherever they land, raised at a safe point, never lost: no server."""

from __future__ import annotations

import gc
import signal
import threading
import time
import weakref

import pytest

from autotune.interruptions import Terminated, held, interruptible, safe_point, sigterm_interrupts

pytestmark = pytest.mark.usefixtures("handlers_as_in_a_terminal")


def test_ctrl_c_within_a_held_block_lets_the_code_go_on_until_a_safe_point() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), held():
        signal.raise_signal(signal.SIGINT)
        done.append("the write it landed in")
        safe_point()
        done.append("past the safe point")
    assert done == ["the write it landed in"]


def test_sigterm_is_raised_at_a_safe_point_as_terminated() -> None:
    with pytest.raises(Terminated), held():
        signal.raise_signal(signal.SIGTERM)
        safe_point()


def test_a_signal_that_lands_in_a_garbage_collectors_callback_is_not_lost() -> None:
    """Python prints an exception raised in such a callback as "ignored" and goes on: a SIGTERM raised there by
    its handler was lost, and the run went on to exit 0 (a CI loop's run, in SQLAlchemy's pool)."""

    class Connection:
        pass

    connection = Connection()
    weakref.finalize(connection, signal.raise_signal, signal.SIGTERM)
    with sigterm_interrupts(), pytest.raises(Terminated), held():
        del connection
        gc.collect()
        safe_point()


def test_a_signal_still_noted_when_the_block_ends_goes_to_the_handler_before_it() -> None:
    with sigterm_interrupts(), pytest.raises(Terminated), held():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handlers before are put back"


def test_a_signal_that_arrives_while_an_interruption_unwinds_the_run_raises_no_second_one() -> None:
    with pytest.raises(KeyboardInterrupt) as raised, held():
        try:
            signal.raise_signal(signal.SIGINT)
            safe_point()
        finally:
            signal.raise_signal(signal.SIGINT)  # pressed again while the model is put back
    assert raised.value.__context__ is None


def test_a_block_that_an_error_ends_still_raises_the_interruption_noted_in_it() -> None:
    """An error caught further up (a crashed server that is restarted) must not swallow the user's Ctrl-C."""
    with pytest.raises(KeyboardInterrupt) as raised, held():
        signal.raise_signal(signal.SIGINT)
        raise ConnectionError("the server crashed")
    assert isinstance(raised.value.__context__, ConnectionError)


def test_a_block_within_another_leaves_its_signals_to_the_outer_blocks_safe_points() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), held():
        with held():
            signal.raise_signal(signal.SIGINT)
        reached.append("the end of the inner block")
        safe_point()
        reached.append("past the outer block's safe point")
    assert reached == ["the end of the inner block"]


def test_a_signal_the_process_ignores_stays_ignored() -> None:
    """As ``nohup`` or a shell's ``&`` asks: a SIGINT meant for the shell's foreground job is not autotune's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with held():
        signal.raise_signal(signal.SIGINT)
        safe_point()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_blocking_call_is_left_when_an_interruption_is_noted() -> None:
    """A model's load can take minutes; Ctrl-C must not wait for it."""
    release = threading.Event()
    threading.Timer(0.2, signal.raise_signal, [signal.SIGINT]).start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), held():
            interruptible(lambda: release.wait(60))
    finally:
        release.set()
    assert time.monotonic() - started < 30, "the interruption was raised before the call returned"


def test_a_blocking_call_returns_its_value_or_raises_its_error() -> None:
    with held():
        assert interruptible(lambda: 42) == 42
        with pytest.raises(ZeroDivisionError):
            interruptible(lambda: 1 / 0)
