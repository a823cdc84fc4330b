import pytest

from autotune.errors import AutotuneError
from autotune.units import format_ms, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("1.5s", 1.5), ("800us", 0.0008), ("800µs", 0.0008), ("10m", 600.0), (" 2 MS ", 0.002)],
)
def test_durations_take_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "200", "ms", "-5ms", "0s", "2 parsecs", "1e3ms", ""])
def test_anything_else_is_refused_with_the_option_named(text: str) -> None:
    with pytest.raises(AutotuneError, match="--max-p95"):
        parse_duration(text, "--max-p95")


def test_limit_labels_are_compact() -> None:
    assert format_ms(200.0) == "200ms"
    assert format_ms(1.5) == "1.5ms"
