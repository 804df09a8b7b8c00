"""cassini.duration: the DURATION of --timeout and --jitter, both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cassini.duration import MAX_DURATION, DurationError, format_duration, parse_duration
from saturnd.task import MAX_DURATION as TASK_MAX_DURATION

CASES = [
    ("90s", 90),
    ("90", 90),
    ("5m", 300),
    ("2h", 7200),
    ("1d", 86400),
    ("1h30m", 5400),
    ("1d2h3m4s", 93784),
    ("0s", 0),
    ("0", 0),
    ("007m", 420),
    ("4294967295s", MAX_DURATION),
    ("4294967295", MAX_DURATION),
]


@pytest.mark.parametrize(("text", "seconds"), CASES)
def test_it_parses_each_form(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (5400, "1h30m"), (86401, "1d1s"), (93784, "1d2h3m4s")],
)
def test_it_formats_canonically(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("30m1h", "largest first"),
        ("1m1m", "largest first"),
        ("1h30", "has no unit"),
        ("h", "must come before"),
        ("5w", "unknown unit"),
        ("-5s", "unknown unit"),
        ("1 h", "unknown unit"),
        ("4294967296", "longer than"),
        ("49711d", "longer than"),
        ("9" * 5000 + "s", "longer than"),
        ("\u0665s", "unknown unit"),  # an Arabic-Indic five is not a digit here
    ],
)
def test_it_refuses_bad_durations_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(DurationError, match=reason):
        parse_duration(text)


def test_it_has_the_wire_limit() -> None:
    assert MAX_DURATION == TASK_MAX_DURATION


@given(st.integers(min_value=0, max_value=MAX_DURATION))
def test_it_reads_back_what_it_writes(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.integers(0, 49710),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.booleans(),
)
def test_it_sums_any_combination(d: int, h: int, m: int, s: int, bare: bool) -> None:
    parts = [(d, "d"), (h, "h"), (m, "m"), (s, "s")]
    text = "".join(f"{n}{u}" for n, u in parts if n)
    seconds = d * 86400 + h * 3600 + m * 60 + s
    if seconds > MAX_DURATION:
        with pytest.raises(DurationError):
            parse_duration(text)
        return
    assert parse_duration(text or "0s") == seconds
    # The canonical form is the shortest one with the same value.
    assert format_duration(seconds) == (text or "0s")


@given(st.text(max_size=12))
def test_it_never_fails_otherwise_than_with_a_duration_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except DurationError as error:
        assert "\n" not in str(error)
    else:
        assert 0 <= seconds <= MAX_DURATION
        assert parse_duration(format_duration(seconds)) == seconds
