"""Unit and property tests of saturnd.timing: crontab fields <-> bit sets, matching.

The tables are written from PROTOCOL.md and crontab(5); croniter serves as an
independent oracle for every field form that both it and we accept, and a minute-by-minute
walk checks `next_after`.
"""

from __future__ import annotations

import copy
import pickle
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from saturnd.cronfields import CronReading
from saturnd.timing import (
    FULL_DAYSOFWEEK,
    FULL_HOURS,
    FULL_MINUTES,
    Frozen,
    Timing,
    TimingError,
    format_field,
    parse_field,
)

# Our own description of each field (not read from the module under test).
LOW_HIGH = {"minutes": (0, 59), "hours": (0, 23), "daysofweek": (0, 6)}
NAME_IN_MESSAGES = {"minutes": "minutes", "hours": "hours", "daysofweek": "day-of-week"}
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
FIELD_NAMES = tuple(LOW_HIGH)

NOW = datetime(2026, 10, 27, 18, 0, 30)  # a Tuesday
ONE_WEEK_AND_A_DAY = 8 * 24 * 60  # minutes: every non-empty timing matches within it

QUICK = settings(max_examples=300, deadline=None)
SLOW = settings(max_examples=200, deadline=None)


def bits(values: Iterable[int]) -> int:
    """The bit set of some values."""
    result = 0
    for value in values:
        result |= 1 << value
    return result


def span(first: int, last: int) -> list[int]:
    """first..last inclusive."""
    return list(range(first, last + 1))


def values_of(field: str, bitset: int) -> set[int]:
    low, high = LOW_HIGH[field]
    return {v for v in range(low, high + 1) if bitset >> v & 1}


def full(field: str) -> int:
    low, high = LOW_HIGH[field]
    return bits(span(low, high))


# --- parsing: a table written by hand ------------------------------------------

PARSE_TABLE = [
    # minutes
    ("minutes", "*", span(0, 59)),
    ("minutes", "0", [0]),
    ("minutes", "7", [7]),
    ("minutes", "59", [59]),
    ("minutes", "4-10", span(4, 10)),
    ("minutes", "5-5", [5]),
    ("minutes", "0-59", span(0, 59)),
    ("minutes", "1,3-6,9-15", [1, 3, 4, 5, 6, *span(9, 15)]),
    ("minutes", "45,4-10", [*span(4, 10), 45]),
    ("minutes", "1,1,1", [1]),
    ("minutes", "3-6,4-8", span(3, 8)),
    ("minutes", "*/15", [0, 15, 30, 45]),
    ("minutes", "*/1", span(0, 59)),
    ("minutes", "*/60", [0]),
    ("minutes", "*/7", [0, 7, 14, 21, 28, 35, 42, 49, 56]),
    ("minutes", "10-50/20", [10, 30, 50]),
    ("minutes", "10-49/20", [10, 30]),
    ("minutes", "0-59/30", [0, 30]),
    ("minutes", "5/20", [5, 25, 45]),
    ("minutes", "59/1", [59]),
    ("minutes", "58/59", [58]),
    ("minutes", "*/30,1", [0, 1, 30]),
    # hours
    ("hours", "*", span(0, 23)),
    ("hours", "0", [0]),
    ("hours", "23", [23]),
    ("hours", "9,14", [9, 14]),
    ("hours", "0-1", [0, 1]),
    ("hours", "*/5", [0, 5, 10, 15, 20]),
    ("hours", "*/24", [0]),
    ("hours", "8-18/2", [8, 10, 12, 14, 16, 18]),
    ("hours", "12/13", [12]),
    ("hours", "20/1", [20, 21, 22, 23]),
    # days of week: numbers, names in any case, 7 is Sunday
    ("daysofweek", "*", span(0, 6)),
    ("daysofweek", "0", [0]),
    ("daysofweek", "3", [3]),
    ("daysofweek", "6", [6]),
    ("daysofweek", "7", [0]),
    ("daysofweek", "5-7", [0, 5, 6]),
    ("daysofweek", "6-7", [0, 6]),
    ("daysofweek", "0,7", [0]),
    ("daysofweek", "0-7", span(0, 6)),
    ("daysofweek", "1-7/3", [0, 1, 4]),
    ("daysofweek", "2-4,6", [2, 3, 4, 6]),
    ("daysofweek", "sun", [0]),
    ("daysofweek", "SUN", [0]),
    ("daysofweek", "Sat", [6]),
    ("daysofweek", "Mon-FRI", span(1, 5)),
    ("daysofweek", "mon,Wed,FRI", [1, 3, 5]),
    ("daysofweek", "sun-sat", span(0, 6)),
    ("daysofweek", "fri-7", [0, 5, 6]),
    ("daysofweek", "thu-fri,1", [1, 4, 5]),
    ("daysofweek", "*/2", [0, 2, 4, 6]),
    ("daysofweek", "*/7", [0]),
    ("daysofweek", "1/2", [1, 3, 5]),
    ("daysofweek", "tue/2", [2, 4, 6]),
    ("daysofweek", "mon-sat/2", [1, 3, 5]),
    # full day names, in any case, wherever a short one fits
    ("daysofweek", "monday", [1]),
    ("daysofweek", "Tuesday", [2]),
    ("daysofweek", "WEDNESDAY", [3]),
    ("daysofweek", "sunday,saturday", [0, 6]),
    ("daysofweek", "monday-friday", span(1, 5)),
    ("daysofweek", "Thursday-7", [0, 4, 5, 6]),
    ("daysofweek", "sunday-6/2", [0, 2, 4, 6]),
    ("daysofweek", "friday/1", [5, 6]),
]


@pytest.mark.parametrize(("field", "text", "values"), PARSE_TABLE)
def test_it_parses_the_crontab_field_table(field: str, text: str, values: list[int]) -> None:
    assert parse_field(field, text) == bits(values)


# --- canonical formatting, both ways --------------------------------------------

CANONICAL_TABLE = [
    ("minutes", span(0, 59), "*"),
    ("hours", span(0, 23), "*"),
    ("daysofweek", span(0, 6), "*"),
    ("minutes", [4, 10], "4,10"),
    ("daysofweek", [1, 3], "1,3"),
    ("minutes", [1, 3, 4, 5, 6, *span(9, 15)], "1,3-6,9-15"),
    ("hours", [1, 3, 5, 7], "1,3,5,7"),
    ("minutes", [0, 1], "0-1"),
    ("hours", [9], "9"),
    ("minutes", span(0, 58), "0-58"),
    ("minutes", span(1, 59), "1-59"),
    ("minutes", [0, 59], "0,59"),
    ("hours", span(0, 22), "0-22"),
    ("hours", [23], "23"),
    ("daysofweek", span(0, 5), "0-5"),
    ("daysofweek", [0, 6], "0,6"),
    ("daysofweek", [6], "6"),
]


@pytest.mark.parametrize(("field", "values", "text"), CANONICAL_TABLE)
def test_it_formats_and_parses_the_canonical_table(
    field: str, values: list[int], text: str
) -> None:
    assert format_field(field, bits(values)) == text
    assert parse_field(field, text) == bits(values)


@pytest.mark.parametrize(
    ("field", "bitset", "text"),
    [
        ("minutes", 0x00002000000007F0, "4-10,45"),  # PROTOCOL.md
        ("daysofweek", 0x5C, "2-4,6"),  # PROTOCOL.md
        ("minutes", 0x0FFFFFFFFFFFFFFF, "*"),
        ("hours", 0x00FFFFFF, "*"),
        ("daysofweek", 0x7F, "*"),
        ("hours", 0x4200, "9,14"),
        ("daysofweek", 0x08, "3"),
    ],
)
def test_it_agrees_with_the_protocol_bit_examples(field: str, bitset: int, text: str) -> None:
    assert parse_field(field, text) == bitset
    assert format_field(field, bitset) == text


def test_it_has_full_constants_matching_the_protocol() -> None:
    assert FULL_MINUTES == 0x0FFFFFFFFFFFFFFF
    assert FULL_HOURS == 0x00FFFFFF
    assert FULL_DAYSOFWEEK == 0x7F


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        (("*", "*", "*"), "* * *"),
        (("4,10", "*", "1,3"), "4,10 * 1,3"),
        (("1,3-6,9-15", "1,3,5,7", "*"), "1,3-6,9-15 1,3,5,7 *"),
        (("0-1", "9", "*"), "0-1 9 *"),
        (("10,4", "*/1", "3,1"), "4,10 * 1,3"),
        (("0,1", "9", "sun-sat"), "0-1 9 *"),
        (("*/20", "0-23", "Mon-Fri"), "0,20,40 * 1-5"),
        (("4-10,45", "*", "2-4,sat"), "4-10,45 * 2-4,6"),
        (("0", "9", "monday-Friday"), "0 9 1-5"),  # names in, numbers out
        (("0", "9", "sunday,SATURDAY"), "0 9 0,6"),
    ],
)
def test_it_formats_a_timing_canonically(fields: tuple[str, str, str], text: str) -> None:
    assert Timing.parse(*fields).format() == text


def test_it_defaults_to_every_minute() -> None:
    assert Timing() == Timing(FULL_MINUTES, FULL_HOURS, FULL_DAYSOFWEEK)
    assert Timing.parse() == Timing()
    assert Timing().format() == "* * *"


# --- malformed fields -----------------------------------------------------------

MALFORMED = [
    ("minutes", "60"),
    ("minutes", "99"),
    ("minutes", "0-60"),
    ("minutes", "60/1"),
    ("hours", "24"),
    ("hours", "0-24"),
    ("hours", "24/2"),
    ("daysofweek", "8"),
    ("daysofweek", "0-8"),
    ("minutes", "5-3"),
    ("hours", "5-3"),
    ("daysofweek", "5-3"),
    ("daysofweek", "fri-mon"),
    ("minutes", "*/0"),
    ("hours", "1-5/0"),
    ("daysofweek", "*/0"),
    ("minutes", "1,,2"),
    ("minutes", "1,"),
    ("minutes", ",1"),
    ("minutes", ","),
    ("minutes", ""),
    ("hours", ""),
    ("daysofweek", ""),
    ("daysofweek", "mon-"),
    ("daysofweek", "mond"),
    ("daysofweek", "tues"),
    ("daysofweek", "mondays"),
    ("daysofweek", "friday-monday"),
    ("daysofweek", "thursday-sun"),
    ("minutes", "monday"),
    ("daysofweek", "junk"),
    ("minutes", "junk"),
    ("minutes", "-1"),
    ("hours", "-1"),
    ("minutes", " 1"),
    ("minutes", "1 "),
    ("minutes", " "),
    ("minutes", "\t1"),
    ("minutes", "1\n"),
    ("minutes", "1\n,2"),
    ("minutes", "1-2\n,5"),
    ("minutes", "1, 2"),
    ("minutes", "1-"),
    ("minutes", "-"),
    ("minutes", "*/"),
    ("minutes", "/5"),
    ("minutes", "**"),
    ("minutes", "*-5"),
    ("minutes", "1-*"),
    ("minutes", "1/2/3"),
    ("minutes", "1-2-3"),
    ("minutes", "1.5"),
    ("minutes", "+1"),
    ("minutes", "0x10"),
    ("minutes", "\uff11"),  # a fullwidth digit one
    ("minutes", "sun"),
    ("hours", "sun"),
    ("minutes", "*/61"),
    ("hours", "*/25"),
    ("daysofweek", "*/8"),
    ("minutes", "0-59/61"),
    ("minutes", "1" * 5000),
    ("minutes", "*/" + "9" * 5000),
    ("hours", "1-" + "2" * 5000),
]


@pytest.mark.parametrize(("field", "text"), MALFORMED)
def test_it_refuses_a_malformed_field_naming_the_field_and_the_text(field: str, text: str) -> None:
    with pytest.raises(TimingError) as caught:
        parse_field(field, text)
    message = str(caught.value)
    assert NAME_IN_MESSAGES[field] in message
    assert repr(text) in message or text in message
    assert caught.value.text == text


@pytest.mark.parametrize(
    ("fields", "name", "bad"),
    [
        (("60", "*", "*"), "minutes", "60"),
        (("*", "24", "*"), "hours", "24"),
        (("*", "*", "8"), "day-of-week", "8"),
        (("0", "9", "mon-"), "day-of-week", "mon-"),
    ],
)
def test_it_names_the_bad_field_of_a_timing(
    fields: tuple[str, str, str], name: str, bad: str
) -> None:
    with pytest.raises(TimingError, match=re.escape(name)) as caught:
        Timing.parse(*fields)
    assert bad in str(caught.value)


# --- properties of parse and format ---------------------------------------------


@st.composite
def nonempty_sets(draw: st.DrawFn) -> tuple[str, int]:
    field = draw(st.sampled_from(FIELD_NAMES))
    return field, draw(st.integers(1, full(field)))


@QUICK
@given(nonempty_sets())
def test_it_formats_and_parses_back_every_nonempty_set(case: tuple[str, int]) -> None:
    field, bitset = case
    assert parse_field(field, format_field(field, bitset)) == bitset


def test_it_formats_and_parses_back_every_day_of_week_set() -> None:
    for bitset in range(1, 0x80):
        assert parse_field("daysofweek", format_field("daysofweek", bitset)) == bitset


@QUICK
@given(nonempty_sets())
def test_it_formats_as_maximal_ascending_runs(case: tuple[str, int]) -> None:
    field, bitset = case
    text = format_field(field, bitset)
    if bitset == full(field):
        assert text == "*"
        return
    assert re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", text)
    runs = [tuple(int(n) for n in run.split("-")) for run in text.split(",")]
    covered: set[int] = set()
    previous_end = -2
    for run in runs:
        first, last = run[0], run[-1]
        assert len(run) == 1 or first < last  # `A-B` only for two or more values
        assert first > previous_end + 1  # ascending, and never two touching runs
        covered.update(span(first, last))
        previous_end = last
    assert covered == values_of(field, bitset)


def render(field: str, value: int, style: int) -> str:
    """A value as a number or, for days 0-6, a day name in one of three cases."""
    if field != "daysofweek" or value > 6 or style == 0:
        return str(value)
    name = DAY_NAMES[value]
    return (name, name.upper(), name.capitalize())[style - 1]


@st.composite
def crontab_items(draw: st.DrawFn, field: str) -> str:
    """One list item both croniter and we accept, with the same meaning.

    Left out: `A-A` ranges (croniter 7 reads `5-5` as `*` and `5-5/2` as `*/2`) and
    `7/S` (croniter reads it as `0/S`, we as Sunday alone).
    """
    low, high = LOW_HIGH[field]
    top = 7 if field == "daysofweek" else high  # 7 is accepted as Sunday
    size = high - low + 1
    style = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["star", "value", "range", "star-step", "range-step", "step"]))
    if kind == "star":
        return "*"
    if kind == "value":
        return render(field, draw(st.integers(low, top)), style)
    if kind == "star-step":
        return f"*/{draw(st.integers(1, size))}"
    if kind == "step":
        start = render(field, draw(st.integers(low, high)), style)
        return f"{start}/{draw(st.integers(1, size))}"
    first = draw(st.integers(low, top - 1))
    last = draw(st.integers(first + 1, top))
    text = f"{render(field, first, style)}-{render(field, last, style)}"
    if kind == "range-step":
        text += f"/{draw(st.integers(1, size))}"
    return text


@st.composite
def crontab_fields(draw: st.DrawFn) -> tuple[str, str]:
    field = draw(st.sampled_from(FIELD_NAMES))
    items = draw(st.lists(crontab_items(field), min_size=1, max_size=4))
    return field, ",".join(items)


CRONITER_EXPRESSIONS = {
    "minutes": "{} 0 * * *",
    "hours": "0 {} * * *",
    "daysofweek": "0 0 * * {}",
}
CRONITER_INDEX = {"minutes": 0, "hours": 1, "daysofweek": 4}


def croniter_values(field: str, text: str) -> set[int]:
    """The values croniter expands a field to, `*` as every value and day 7 as 0."""
    expanded = croniter.expand(CRONITER_EXPRESSIONS[field].format(text))[0][CRONITER_INDEX[field]]
    if "*" in expanded:  # croniter keeps `*` as it is, even inside a list
        low, high = LOW_HIGH[field]
        return set(span(low, high))
    if field == "daysofweek":
        return {0 if value == 7 else value for value in expanded}
    return set(expanded)


@QUICK
@given(crontab_fields())
def test_it_expands_fields_like_croniter(case: tuple[str, str]) -> None:
    field, text = case
    assert values_of(field, parse_field(field, text)) == croniter_values(field, text)
    assert parse_field(field, text) & ~full(field) == 0


@QUICK
@given(crontab_fields())
def test_it_keeps_canonical_text_stable(case: tuple[str, str]) -> None:
    field, text = case
    bitset = parse_field(field, text)
    canonical = format_field(field, bitset)
    assert parse_field(field, canonical) == bitset
    assert format_field(field, parse_field(field, canonical)) == canonical


# --- matching and the next fire time --------------------------------------------


def sets_of(field: str) -> st.SearchStrategy[int]:
    """Bit sets of a field, often sparse, sometimes full, sometimes empty."""
    low, high = LOW_HIGH[field]
    sparse = st.frozensets(st.integers(low, high), max_size=4).map(bits)
    return st.one_of(sparse, st.integers(0, full(field)), st.just(full(field)))


timings = st.builds(Timing, sets_of("minutes"), sets_of("hours"), sets_of("daysofweek"))
nonempty_timings = timings.filter(lambda t: bool(t.minutes and t.hours and t.daysofweek))
moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 24))


def brute_next(timing: Timing, moment: datetime) -> datetime | None:
    """Walk minute by minute: the first matching minute strictly after `moment`."""
    candidate = moment.replace(second=0, microsecond=0)
    for _ in range(ONE_WEEK_AND_A_DAY):
        candidate += timedelta(minutes=1)
        if timing.matches(candidate):
            return candidate
    return None


@pytest.mark.parametrize(
    ("fields", "moment", "expected"),
    [
        (("0", "9,14", "3"), datetime(2026, 10, 28, 9, 0), True),  # a Wednesday
        (("0", "9,14", "3"), datetime(2026, 10, 28, 9, 0, 59, 999999), True),
        (("0", "9,14", "3"), datetime(2026, 10, 28, 14, 0), True),
        (("0", "9,14", "3"), datetime(2026, 10, 28, 9, 1), False),
        (("0", "9,14", "3"), datetime(2026, 10, 28, 10, 0), False),
        (("0", "9,14", "3"), datetime(2026, 10, 27, 9, 0), False),  # a Tuesday
        (("*", "*", "sun"), datetime(2026, 11, 1, 23, 59), True),
        (("*", "*", "7"), datetime(2026, 11, 1, 0, 0), True),
        (("*", "*", "sun"), datetime(2026, 10, 31, 23, 59), False),
        (("*", "*", "*"), NOW, True),
    ],
)
def test_it_matches_the_table(
    fields: tuple[str, str, str], moment: datetime, expected: bool
) -> None:
    assert Timing.parse(*fields).matches(moment) is expected


@QUICK
@given(timings, moments)
def test_it_matches_exactly_the_minutes_in_all_three_sets(timing: Timing, moment: datetime) -> None:
    day = int(moment.strftime("%w"))  # 0 = Sunday, computed by the C library
    expected = (
        moment.minute in values_of("minutes", timing.minutes)
        and moment.hour in values_of("hours", timing.hours)
        and day in values_of("daysofweek", timing.daysofweek)
    )
    assert timing.matches(moment) is expected


@pytest.mark.parametrize(
    ("fields", "moment", "expected"),
    [
        (("*", "*", "*"), NOW, datetime(2026, 10, 27, 18, 1)),
        (("*", "*", "*"), datetime(2026, 10, 27, 18, 0), datetime(2026, 10, 27, 18, 1)),
        (("0", "9,14", "3"), NOW, datetime(2026, 10, 28, 9, 0)),
        (("0", "9,14", "3"), datetime(2026, 10, 28, 9, 0), datetime(2026, 10, 28, 14, 0)),
        (("0", "9,14", "3"), datetime(2026, 10, 28, 14, 0), datetime(2026, 11, 4, 9, 0)),
        (("59", "23", "*"), datetime(2026, 12, 31, 23, 58, 59), datetime(2026, 12, 31, 23, 59)),
        (("59", "23", "*"), datetime(2026, 12, 31, 23, 59), datetime(2027, 1, 1, 23, 59)),
        (("0", "0", "*"), datetime(2026, 12, 31, 23, 59, 59, 999999), datetime(2027, 1, 1, 0, 0)),
        (("30", "12", "tue"), datetime(2028, 2, 28, 13, 0), datetime(2028, 2, 29, 12, 30)),
        (("30", "12", "wed"), datetime(2028, 2, 28, 13, 0), datetime(2028, 3, 1, 12, 30)),
        (("*/15", "*", "*"), datetime(2026, 10, 27, 10, 44, 59), datetime(2026, 10, 27, 10, 45)),
        (("*/15", "*", "*"), datetime(2026, 10, 27, 10, 45), datetime(2026, 10, 27, 11, 0)),
        (("0", "*", "sun"), NOW, datetime(2026, 11, 1, 0, 0)),
        (("5", "3", "*"), datetime(2026, 10, 27, 3, 6), datetime(2026, 10, 28, 3, 5)),
        (("5", "3", "*"), datetime(2026, 10, 27, 3, 4, 59), datetime(2026, 10, 27, 3, 5)),
        (("0", "0", "tue"), datetime(2026, 10, 27, 0, 0), datetime(2026, 11, 3, 0, 0)),
        (("0-1", "23", "sat"), datetime(2026, 10, 31, 23, 1), datetime(2026, 11, 7, 23, 0)),
    ],
)
def test_it_finds_the_next_minute_of_the_table(
    fields: tuple[str, str, str], moment: datetime, expected: datetime
) -> None:
    assert Timing.parse(*fields).next_after(moment) == expected


def test_it_keeps_the_tzinfo_of_an_aware_moment() -> None:
    moment = datetime(2026, 10, 27, 18, 0, 30, tzinfo=UTC)
    result = Timing.parse("0", "9", "*").next_after(moment)
    assert result == datetime(2026, 10, 28, 9, 0, tzinfo=UTC)
    assert result is not None and result.tzinfo is UTC


@pytest.mark.parametrize(
    "timing",
    [
        Timing(0, FULL_HOURS, FULL_DAYSOFWEEK),
        Timing(FULL_MINUTES, 0, FULL_DAYSOFWEEK),
        Timing(FULL_MINUTES, FULL_HOURS, 0),
        Timing(0, 0, 0),
    ],
)
def test_it_never_fires_with_an_empty_set(timing: Timing) -> None:
    assert timing.next_after(NOW) is None
    assert not any(timing.matches(NOW + timedelta(minutes=m)) for m in range(0, 10080, 7))


@SLOW
@given(nonempty_timings, moments)
def test_it_finds_the_same_next_minute_as_a_minute_by_minute_walk(
    timing: Timing, moment: datetime
) -> None:
    expected = brute_next(timing, moment)
    assert expected is not None
    assert timing.next_after(moment) == expected


@QUICK
@given(timings, moments)
def test_it_finds_none_or_a_later_matching_minute(timing: Timing, moment: datetime) -> None:
    result = timing.next_after(moment)
    if not (timing.minutes and timing.hours and timing.daysofweek):
        assert result is None
        return
    assert result is not None
    assert result > moment
    assert result - moment <= timedelta(days=7, minutes=1)
    assert (result.second, result.microsecond) == (0, 0)
    assert timing.matches(result)


@QUICK
@given(nonempty_timings, moments)
def test_it_finds_the_same_next_minute_as_croniter(timing: Timing, moment: datetime) -> None:
    expression = " ".join(
        (
            format_field("minutes", timing.minutes),
            format_field("hours", timing.hours),
            "*",
            "*",
            format_field("daysofweek", timing.daysofweek),
        )
    )
    expected = croniter(expression, moment).get_next(datetime)
    assert timing.next_after(moment) == expected


@pytest.mark.parametrize(
    ("timing", "expected"),
    [
        (Timing(), True),
        (Timing.parse("*", "9", "mon"), True),
        (Timing.parse("0", "*", "mon"), True),
        (Timing.parse("0-59", "0-23", "*"), True),
        (Timing.parse("*", "0", "*"), True),
        (Timing.parse("0", "9", "*"), False),
        (Timing.parse("0-58", "0-22", "*"), False),
        (Timing.parse("1-59", "1-23", "*"), False),
        (Timing(FULL_MINUTES & ~1, FULL_HOURS & ~(1 << 23), FULL_DAYSOFWEEK), False),
    ],
)
def test_it_tells_wildcard_tasks(timing: Timing, expected: bool) -> None:
    assert timing.is_wildcard is expected


@pytest.mark.parametrize(
    ("timing", "valid"),
    [
        (Timing(), True),
        (Timing(0, 0, 0), True),
        (Timing(1 << 60, 0, 0), False),
        (Timing(1 << 63, 0, 0), False),
        (Timing(0, 1 << 24, 0), False),
        (Timing(0, 1 << 31, 0), False),
        (Timing(0, 0, 1 << 7), False),
        (Timing(-1, 0, 0), False),
    ],
)
def test_it_validates_the_bit_ranges(timing: Timing, valid: bool) -> None:
    assert timing.is_valid() is valid


grammar_soup = st.text(alphabet="0123456789*/-,smtwfoundeia \n\t", max_size=20)


@QUICK
@given(st.sampled_from(FIELD_NAMES), st.one_of(grammar_soup, st.text(max_size=20)))
def test_it_parses_any_text_into_the_field_or_raises_timing_error(field: str, text: str) -> None:
    try:
        bitset = parse_field(field, text)
    except TimingError as error:
        assert NAME_IN_MESSAGES[field] in str(error)
        return
    assert 0 < bitset <= full(field)
    assert text.strip() == text and "\n" not in text


# --- Timing is a value (a Frozen class, not a dataclass: see the module docstring) ---


def test_it_treats_a_timing_as_an_immutable_value() -> None:
    timing = Timing(1, 2, 3)
    assert timing == Timing(minutes=1, hours=2, daysofweek=3)
    assert timing != Timing(1, 2, 4)
    assert timing != (1, 2, 3)
    assert hash(timing) == hash(Timing(1, 2, 3))
    assert repr(timing).startswith("Timing(minutes=1, hours=2, daysofweek=3, daysofmonth=")
    clone = pickle.loads(pickle.dumps(timing))
    assert clone == timing and clone is not timing
    assert copy.copy(timing) == timing
    with pytest.raises(AttributeError, match="Timing is immutable"):
        timing.minutes = 5
    with pytest.raises(AttributeError, match="Timing is immutable"):
        del timing.hours
    with pytest.raises(AttributeError):
        timing.other = 1  # type: ignore[attr-defined]
    assert (timing.minutes, timing.hours, timing.daysofweek) == (1, 2, 3)
    match timing:
        case Timing(minutes, hours, days):
            assert (minutes, hours, days) == (1, 2, 3)
        case _:
            pytest.fail("a Timing did not match its positional pattern")


def test_it_gives_a_subclass_of_a_value_class_the_fields_of_both() -> None:
    class Point(Frozen):
        __slots__ = __match_args__ = ("x",)
        x: int

        def __init__(self, x: int) -> None:
            object.__setattr__(self, "x", x)

    class Labelled(Point):
        __slots__ = ("label",)
        label: str

        def __init__(self, x: int, label: str) -> None:
            super().__init__(x)
            object.__setattr__(self, "label", label)

    assert repr(Labelled(1, "a")) == f"{Labelled.__qualname__}(x=1, label='a')"
    assert Labelled(1, "a") != Labelled(1, "b")
    assert Labelled(1, "a") != Point(1)
    assert copy.copy(Labelled(1, "a")) == Labelled(1, "a")


# --- the five fields of a crontab (issue 13) ------------------------------------

FULL_DOM = bits(span(1, 31))
FULL_MONTHS = bits(span(1, 12))


@pytest.mark.parametrize(
    ("text", "dom", "months", "dow", "days_or"),
    [
        ("0 3 1 * *", [1], span(1, 12), span(0, 6), False),
        ("0 0 1,8,15,22 * *", [1, 8, 15, 22], span(1, 12), span(0, 6), False),
        ("1 6 */2 * *", list(range(1, 32, 2)), span(1, 12), span(0, 6), False),
        ("0 20 1-7 * 5", span(1, 7), span(1, 12), [5], True),
        ("0 0 */2 * 1", list(range(1, 32, 2)), span(1, 12), [1], False),  # `*/2` is a star
        ("0 0 1-31 * 1", span(1, 31), span(1, 12), span(0, 6), False),  # OR with every day
        ("0 0 * jan-mar,dec mon", span(1, 31), [1, 2, 3, 12], [1], False),
        ("0 0 * february,august sunday", span(1, 31), [2, 8], [0], False),
        ("0 0 L * *".replace("L", "31"), [31], span(1, 12), span(0, 6), False),
        ("0 0 * */3 *", span(1, 31), [1, 4, 7, 10], span(0, 6), False),
    ],
)
def test_it_parses_the_five_fields_and_the_day_rule(
    text: str, dom: list[int], months: list[int], dow: list[int], days_or: bool
) -> None:
    timing = Timing.cron(text)
    assert (timing.daysofmonth, timing.months, timing.daysofweek, timing.days_or) == (
        bits(dom),
        bits(months),
        bits(dow),
        days_or,
    )


@pytest.mark.parametrize(
    ("name", "five"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@MIDNIGHT", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_it_reads_the_at_names_as_their_five_fields(name: str, five: str) -> None:
    assert Timing.cron(name, "Europe/Paris") == Timing.cron(five, "Europe/Paris")


def test_it_reads_reboot_as_a_timing_the_clock_never_reaches() -> None:
    timing = Timing.cron("@reboot")
    assert timing.reboot and timing.format_cron() == "@reboot"
    assert timing.next_after(NOW) is None and timing.never_day()


@pytest.mark.parametrize(
    ("text", "compact"),
    [
        ("0,15,30,45 * * * *", "*/15 * * * *"),
        ("1-59/2 9,10,11,12,13,14,15,16,17 * * *", "1-59/2 9-17 * * *"),
        ("0 0 1 1 *", "0 0 1 1 *"),
        ("0 0 * jan,apr,jul,oct mon-fri", "0 0 * */3 1-5"),
        ("0 0 * * 7", "0 0 * * 0"),
        ("0 0 * * sun,sat", "0 0 * * 0,6"),
        ("0,30 0,12 * * *", "0,30 0,12 * * *"),
        ("0 20 1-7 * fri", "0 20 1-7 * 5"),
        ("0 20 1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31 * 5", "0 20 1-31/2 * 5"),
        ("0 0 */2 * 1", "0 0 */2 * 1"),
        ("0 0 */31,15 * 1", "0 0 */31,15 * 1"),
        ("0 0 2 * */7", "0 0 2 * */7"),
        ("0 0 1-31 * 1", "0 0 * * *"),
        ("0-58/2,59 * * * *", "*/2,59 * * * *"),
    ],
)
def test_it_formats_five_fields_in_crons_compact_form(text: str, compact: str) -> None:
    timing = Timing.cron(text)
    assert timing.format_cron() == compact
    assert Timing.cron(compact) == timing


def nonempty(low: int, high: int) -> st.SearchStrategy[int]:
    return st.sets(st.integers(low, high), min_size=1).map(bits)


any_timings = st.builds(
    Timing,
    nonempty(0, 59),
    nonempty(0, 23),
    nonempty(0, 6),
    nonempty(1, 31),
    nonempty(1, 12),
    st.booleans(),
    st.booleans().filter(lambda reboot: not reboot) | st.just(True),
    st.sampled_from(["", "America/New_York"]),
)


def has_cron_text(timing: Timing) -> bool:
    """cron reads an AND of two restricted day fields only when one text starts with
    `*`, and `*/N` always holds the field's first value (day 1, Sunday)."""
    both_restricted = timing.daysofmonth != FULL_DOM and timing.daysofweek != FULL_DAYSOFWEEK
    if timing.days_or or timing.reboot or not both_restricted:
        return True
    return bool(timing.daysofmonth & 2 or timing.daysofweek & 1)


@settings(max_examples=1000, deadline=None)
@given(any_timings)
def test_it_reads_back_every_timing_from_its_compact_form(timing: Timing) -> None:
    if not has_cron_text(timing):
        with pytest.raises(ValueError, match="no crontab text"):
            timing.format_cron()
        return
    text = timing.format_cron()
    # As a crontab line is read: an empty set is written as a range backwards.
    assert Timing.cron(text, timing.zone, read=CronReading()) == timing
    assert not re.search("[a-z]", text.replace("@reboot", "")), "names never"
    assert " 7" not in text.split(" ", 4)[-1], "Sunday is 0"


@QUICK
@given(any_timings.filter(has_cron_text))
def test_it_never_writes_longer_than_the_canonical_fields(timing: Timing) -> None:
    if timing.reboot:
        return
    minute, hour, *_days = timing.format_cron().split()
    assert len(minute) <= len(format_field("minutes", timing.minutes))
    assert len(hour) <= len(format_field("hours", timing.hours))


@pytest.mark.parametrize(
    ("text", "never"),
    [
        ("0 0 31 2 *", True),
        ("0 0 30,31 2 *", True),
        ("0 0 31 4,6,9,11 *", True),
        ("0 0 31 4,7 *", False),
        ("0 0 29 2 *", False),
        ("0 0 31 2 1", False),  # OR-ed: every Monday of February
        ("0 0 */31 2 1", False),
        ("0 0 * * *", False),
    ],
)
def test_it_tells_a_day_that_never_comes_without_walking_400_years(text: str, never: bool) -> None:
    timing = Timing.cron(text)
    assert timing.never_day() is never
    started = time.perf_counter()
    found = timing.next_after(NOW)
    assert (found is None) is never
    assert time.perf_counter() - started < 0.01


@pytest.mark.parametrize(
    ("given", "same_as"),
    [
        (Timing(daysofmonth=bits([1]), daysofweek=FULL_DAYSOFWEEK, days_or=True), Timing()),
        (Timing(daysofmonth=0, daysofweek=bits([5]), days_or=True), Timing(daysofweek=bits([5]))),
        (Timing(daysofmonth=bits([9]), daysofweek=0, days_or=True), Timing(daysofmonth=bits([9]))),
        (
            Timing(minutes=1, daysofweek=bits([5]), reboot=True, days_or=True),
            Timing.cron("@reboot"),
        ),
    ],
)
def test_it_stores_equal_day_meanings_as_equal_timings(given: Timing, same_as: Timing) -> None:
    assert given == same_as and hash(given) == hash(same_as)
