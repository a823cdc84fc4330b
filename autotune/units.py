"""Durations as people type them: ``200ms``, ``1.5s``, ``800us``, ``10m``."""

from __future__ import annotations

import re

from autotune.errors import AutotuneError

_SECONDS_PER_UNIT = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zµ]+)\s*$")


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds in ``text``; a unit is required, since a bare ``200`` could mean anything."""
    match = _DURATION.match(text.lower())
    if not match or match.group(2) not in _SECONDS_PER_UNIT:
        raise AutotuneError(
            f"{option}: cannot read {text!r} as a duration; write a number and a unit (us, ms, s, m, h), e.g. 200ms"
        )
    seconds = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
    if seconds <= 0:
        raise AutotuneError(f"{option}: {text!r} must be greater than zero")
    return seconds


def format_ms(milliseconds: float) -> str:
    """A compact label for a limit in milliseconds, as used in default study names (``200ms``, ``1.5ms``)."""
    return f"{milliseconds:g}ms"
