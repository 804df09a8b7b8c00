"""Tests of saturnd.schedule: the clock-jump and daylight-saving rule, and next_runs.

The expectations are written out by hand from DESIGN.md ("Time"): each branch of the
rule, then whole DST nights of 2026 driven one real minute at a time, as the executor
calls `plan`. `next_runs` is checked against a brute-force simulation that calls `plan`
for every real minute of a window, and against croniter away from DST changes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from saturnd.schedule import Plan, ZoneGroup, local_minute, next_runs, plan, plan_zones
from saturnd.timing import FULL_DAYSOFWEEK, FULL_HOURS, FULL_MINUTES, Timing

NOW = datetime(2026, 6, 17, 12, 0)  # a Wednesday, far from any DST change
MINUTE = timedelta(minutes=1)
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def cron(text: str) -> Timing:
    """`MIN HOUR DOW`, as cassini takes it."""
    minutes, hours, days = text.split()
    return Timing.parse(minutes, hours, days)


def at(text: str) -> datetime:
    """A naive wall minute from 'YYYY-MM-DD HH:MM'."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M")


def utc_minute(text: str) -> int:
    """The epoch minute of a UTC 'YYYY-MM-DD HH:MM'."""
    return int(at(text).replace(tzinfo=UTC).timestamp()) // 60


def wall_of(epoch_minute: int, tz: ZoneInfo) -> datetime:
    """The wall minute of an epoch minute, computed here without schedule.local_minute."""
    aware = datetime.fromtimestamp(epoch_minute * 60, UTC).astimezone(tz)
    return datetime(aware.year, aware.month, aware.day, aware.hour, aware.minute)


def drive(
    tz: ZoneInfo, start: int, stop: int, tasks: Mapping[int, Timing]
) -> dict[int, list[tuple[int, datetime]]]:
    """Run the executor's loop over real minutes [start, stop): (epoch minute, wall) per task."""
    found: dict[int, list[tuple[int, datetime]]] = {task_id: [] for task_id in tasks}
    last: datetime | None = None
    for epoch_minute in range(start, stop):
        step = plan(last, local_minute(epoch_minute, tz), tasks)
        for wall, task_id in step.runs:
            found[task_id].append((epoch_minute, wall))
        last = step.last
    return found


def drive_walls(
    walls: list[datetime], tasks: Mapping[int, Timing]
) -> tuple[list[tuple[int, datetime, int]], list[str], datetime]:
    """Feed a sequence of wall readings: runs as (step, wall, id), the kinds, final last."""
    runs: list[tuple[int, datetime, int]] = []
    kinds: list[str] = []
    last: datetime | None = None
    for index, current in enumerate(walls):
        step = plan(last, current, tasks)
        runs.extend((index, wall, task_id) for wall, task_id in step.runs)
        kinds.append(step.kind)
        last = step.last
    assert last is not None
    return runs, kinds, last


def minutes_from(start: datetime, count: int) -> list[datetime]:
    return [start + k * MINUTE for k in range(count)]


# --- each branch of the rule -------------------------------------------------------------


def test_it_handles_the_first_minute_without_running_anything() -> None:
    step = plan(None, NOW, {1: cron("* * *"), 2: cron("0 12 *")})
    assert step == Plan((), NOW, "none")


def test_it_runs_the_tasks_matching_the_next_minute_in_id_order() -> None:
    tasks = {9: cron("* * *"), 2: cron("0 12 3"), 5: cron("1 12 *"), 3: cron("0 12 4")}
    step = plan(NOW - MINUTE, NOW, tasks)
    assert step == Plan(((NOW, 2), (NOW, 9)), NOW, "normal")


@pytest.mark.parametrize("delta", [2, 3, 4, 5])
def test_it_catches_up_every_skipped_minute_in_order(delta: int) -> None:
    tasks = {
        4: cron("* * *"),
        1: cron("1,3,5 12 *"),
        2: cron("2 12 3"),
        3: cron("2 12 4"),  # wrong day
        7: cron("0 12 *"),  # the minute before the span
        8: cron("* 13 *"),  # wildcard, wrong hour
    }
    step = plan(NOW, NOW + delta * MINUTE, tasks)
    # Written out: minute 12:01 runs 1 and 4, 12:02 runs 2 and 4, 12:03 runs 1 and 4, ...
    by_minute = {1: [1, 4], 2: [2, 4], 3: [1, 4], 4: [4], 5: [1, 4]}
    expected = tuple(
        (NOW + k * MINUTE, task_id) for k in range(1, delta + 1) for task_id in by_minute[k]
    )
    assert step == Plan(expected, NOW + delta * MINUTE, "catch-up")


def test_it_catches_up_across_an_hour_and_a_day() -> None:
    last = at("2026-06-17 23:58")  # a Wednesday
    current = at("2026-06-18 00:02")  # Thursday
    tasks = {1: cron("58,59,0,1,2 23,0 3"), 2: cron("58,59,0,1,2 23,0 4"), 3: cron("* 0 *")}
    step = plan(last, current, tasks)
    assert step.runs == (
        (at("2026-06-17 23:59"), 1),
        (at("2026-06-18 00:00"), 2),
        (at("2026-06-18 00:00"), 3),
        (at("2026-06-18 00:01"), 2),
        (at("2026-06-18 00:01"), 3),
        (at("2026-06-18 00:02"), 2),
        (at("2026-06-18 00:02"), 3),
    )
    assert step.kind == "catch-up"


def test_it_runs_fixed_tasks_for_each_skipped_minute_and_wildcards_once_on_a_jump() -> None:
    current = NOW + timedelta(hours=2)  # 14:00
    tasks = {
        1: cron("30 12,13 *"),  # fixed: 12:30 and 13:30 were skipped
        2: cron("0 14 *"),  # fixed, the current minute
        3: cron("0 12 *"),  # fixed, == last: already handled
        4: cron("*/20 * *"),  # wildcard (hours full): current only
        5: cron("* 13 *"),  # wildcard (minutes full): does not match 14:00
        6: cron("* 14 *"),  # wildcard matching 14:00
        7: cron("15 13 2"),  # fixed, wrong day
    }
    step = plan(NOW, current, tasks)
    assert step == Plan(
        (
            (at("2026-06-17 12:30"), 1),
            (at("2026-06-17 13:30"), 1),
            (current, 2),
            (current, 4),
            (current, 6),
        ),
        current,
        "forward-jump",
    )


@pytest.mark.parametrize(
    ("delta", "kind"),
    [(5, "catch-up"), (6, "forward-jump"), (180, "forward-jump"), (181, "correction")],
)
def test_it_puts_the_forward_limits_where_the_rule_says(delta: int, kind: str) -> None:
    current = NOW + delta * MINUTE
    # 12:05 is skipped whatever the delta; 12:05 is in (last, current] for all of them.
    tasks = {1: cron("5 12 *"), 2: cron("* * *")}
    step = plan(NOW, current, tasks)
    assert step.kind == kind
    assert step.last == current
    expected = {
        "catch-up": [(NOW + k * MINUTE, 2) for k in range(1, 5)]
        + [(NOW + 5 * MINUTE, 1), (NOW + 5 * MINUTE, 2)],
        "forward-jump": [(NOW + 5 * MINUTE, 1), (current, 2)],
        "correction": [(current, 2)],
    }[kind]
    assert list(step.runs) == expected


@pytest.mark.parametrize("delta", [0, -1, -60, -180])
def test_it_runs_only_wildcards_when_the_clock_goes_back_a_little(delta: int) -> None:
    current = NOW + delta * MINUTE
    tasks = {
        1: cron(f"{current.minute} {current.hour} *"),  # fixed, matches: already ran
        2: cron("* * *"),
        3: cron(f"{current.minute} * *"),  # wildcard on hours
        4: cron(f"* {current.hour} *"),  # wildcard on minutes
        5: cron(f"* {(current.hour + 1) % 24} *"),  # wildcard, no match
    }
    step = plan(NOW, current, tasks)
    assert step == Plan(((current, 2), (current, 3), (current, 4)), NOW, "backward")


@pytest.mark.parametrize("delta", [-181, -24 * 60, 2 * 24 * 60])
def test_it_treats_a_big_jump_as_a_correction(delta: int) -> None:
    current = NOW + delta * MINUTE
    tasks = {
        1: cron(f"{current.minute} {current.hour} *"),
        2: cron("* * *"),
        3: cron(f"{NOW.minute + 1} {NOW.hour} *"),  # skipped, never made up
        4: cron(f"{current.minute} {current.hour} {(current.isoweekday() + 1) % 7}"),
    }
    step = plan(NOW, current, tasks)
    assert step == Plan(((current, 1), (current, 2)), current, "correction")


def test_it_ignores_seconds_and_fold() -> None:
    step = plan(NOW.replace(second=59), (NOW + MINUTE).replace(second=30, fold=1), {})
    assert step.last == NOW + MINUTE
    assert step.last.second == 0
    assert step.last.fold == 0
    assert step.kind == "normal"


# --- clock jumps as the executor lives through them ----------------------------------------

JUMP_TASKS = {
    1: cron("30 12 *"),  # fixed
    2: cron("*/10 * *"),  # wildcard on hours
    3: cron("5 13 *"),  # fixed
    4: cron("0,1,2 12 *"),  # fixed, every minute near NOW
}


def test_it_lives_through_a_jump_of_two_minutes() -> None:
    walls = [NOW - MINUTE, NOW, NOW + 2 * MINUTE, NOW + 3 * MINUTE]
    runs, kinds, last = drive_walls(walls, JUMP_TASKS)
    assert kinds == ["none", "normal", "catch-up", "normal"]
    assert runs == [(1, NOW, 2), (1, NOW, 4), (2, NOW + MINUTE, 4), (2, NOW + 2 * MINUTE, 4)]
    assert last == NOW + 3 * MINUTE


def test_it_lives_through_a_jump_of_two_hours() -> None:
    walls = [*minutes_from(NOW, 3), *minutes_from(NOW + timedelta(hours=2), 2)]
    runs, kinds, _ = drive_walls(walls, JUMP_TASKS)
    assert kinds == ["none", "normal", "normal", "forward-jump", "normal"]
    assert runs == [
        (1, NOW + MINUTE, 4),
        (2, NOW + 2 * MINUTE, 4),
        (3, at("2026-06-17 12:30"), 1),  # skipped fixed minutes, once each
        (3, at("2026-06-17 13:05"), 3),
        (3, at("2026-06-17 14:00"), 2),  # the wildcard once, for 14:00 only
    ]


def test_it_lives_through_a_jump_of_two_days() -> None:
    walls = [*minutes_from(NOW, 2), *minutes_from(NOW + timedelta(days=2), 2)]
    runs, kinds, last = drive_walls(walls, JUMP_TASKS)
    assert kinds == ["none", "normal", "correction", "normal"]
    two_days = NOW + timedelta(days=2)
    assert runs == [
        (1, NOW + MINUTE, 4),
        (2, two_days, 2),
        (2, two_days, 4),
        (3, two_days + MINUTE, 4),
    ]
    assert last == two_days + MINUTE


def test_it_lives_through_a_step_back_of_one_minute() -> None:
    walls = [NOW, NOW + MINUTE, NOW + 2 * MINUTE, NOW + MINUTE, NOW + 2 * MINUTE, NOW + 3 * MINUTE]
    runs, kinds, last = drive_walls(walls, {**JUMP_TASKS, 5: cron("* 12 *")})
    assert kinds == ["none", "normal", "normal", "backward", "backward", "normal"]
    assert runs == [
        (1, NOW + MINUTE, 4),
        (1, NOW + MINUTE, 5),
        (2, NOW + 2 * MINUTE, 4),
        (2, NOW + 2 * MINUTE, 5),
        (3, NOW + MINUTE, 5),  # wildcard again; task 4 is not
        (4, NOW + 2 * MINUTE, 5),
        (5, NOW + 3 * MINUTE, 5),
    ]
    assert last == NOW + 3 * MINUTE


def test_it_lives_through_a_step_back_of_one_hour() -> None:
    # 12:00 .. 12:59, the clock is set back to 12:00, then 12:00 .. 13:10.
    walls = [*minutes_from(NOW, 60), *minutes_from(NOW, 71)]
    runs, kinds, last = drive_walls(walls, JUMP_TASKS)
    assert kinds == ["none"] + ["normal"] * 59 + ["backward"] * 60 + ["normal"] * 11
    assert last == at("2026-06-17 13:10")
    per_task: dict[int, list[tuple[int, datetime]]] = {}
    for index, wall, task_id in runs:
        per_task.setdefault(task_id, []).append((index, wall))
    assert per_task[1] == [(30, at("2026-06-17 12:30"))]
    assert per_task[3] == [(125, at("2026-06-17 13:05"))]
    assert per_task[4] == [(1, NOW + MINUTE), (2, NOW + 2 * MINUTE)]
    first_pass = [(k, NOW + k * MINUTE) for k in range(10, 60, 10)]
    second_pass = [(60 + k, NOW + k * MINUTE) for k in range(0, 71, 10)]
    assert per_task[2] == first_pass + second_pass


def test_it_lives_through_a_step_back_of_one_day() -> None:
    # 12:29 .. 12:31, set back a day, then 12:29 .. 12:31 again: a correction.
    start = at("2026-06-17 12:29")
    day_before = start - timedelta(days=1)
    walls = [*minutes_from(start, 3), *minutes_from(day_before, 3)]
    runs, kinds, last = drive_walls(walls, JUMP_TASKS)
    assert kinds == ["none", "normal", "normal", "correction", "normal", "normal"]
    assert runs == [
        (1, at("2026-06-17 12:30"), 1),
        (1, at("2026-06-17 12:30"), 2),
        (4, at("2026-06-16 12:30"), 1),  # a new day as far as the clock says
        (4, at("2026-06-16 12:30"), 2),
    ]
    assert last == day_before + 2 * MINUTE


# --- property: steps of one to five minutes ------------------------------------------------


def bit_sets(high: int, full: int) -> st.SearchStrategy[int]:
    some = st.sets(st.integers(0, high), min_size=1, max_size=5).map(
        lambda values: sum(1 << value for value in values)
    )
    return st.one_of(st.just(full), some, st.integers(1, full))


timings = st.builds(
    Timing, bit_sets(59, FULL_MINUTES), bit_sets(23, FULL_HOURS), bit_sets(6, FULL_DAYSOFWEEK)
)


@settings(max_examples=150, deadline=None)
@given(
    tasks=st.dictionaries(st.integers(0, 1000), timings, max_size=12),
    start=st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1)).map(
        lambda moment: moment.replace(second=0, microsecond=0)
    ),
    steps=st.lists(st.integers(1, 5), min_size=1, max_size=80),
)
def test_it_runs_each_task_once_per_matching_minute_over_small_steps(
    tasks: dict[int, Timing], start: datetime, steps: list[int]
) -> None:
    last = start
    runs: list[tuple[datetime, int]] = []
    for size in steps:
        step = plan(last, last + size * MINUTE, tasks)
        assert step.kind == ("normal" if size == 1 else "catch-up")
        assert step.last == last + size * MINUTE
        assert all(last < wall <= step.last for wall, _ in step.runs)
        runs.extend(step.runs)
        last = step.last
    every_minute = minutes_from(start + MINUTE, sum(steps))
    expected = [
        (wall, task_id)
        for wall in every_minute
        for task_id in sorted(tasks)
        if tasks[task_id].matches(wall)
    ]
    assert runs == expected


# --- DST nights, one real minute at a time -------------------------------------------------


def expect(pairs: list[tuple[str, str]]) -> list[tuple[int, datetime]]:
    """(UTC 'MM-DD HH:MM', wall 'MM-DD HH:MM') of 2026 -> (epoch minute, wall minute)."""
    return [(utc_minute(f"2026-{utc}"), at(f"2026-{wall}")) for utc, wall in pairs]


def every_real_minute(
    tz: ZoneInfo, start: int, stop: int, wanted: object
) -> list[tuple[int, datetime]]:
    """Each real minute of (start, stop) whose wall minute satisfies `wanted`, run for it.

    `start` is the daemon's first minute: it counts as handled and runs nothing.
    """
    assert callable(wanted)
    return [(m, wall_of(m, tz)) for m in range(start + 1, stop) if wanted(wall_of(m, tz))]


def check_night(
    tz: ZoneInfo,
    start: str,
    stop: str,
    tasks: dict[int, Timing],
    expected: dict[int, list[tuple[int, datetime]]],
) -> None:
    found = drive(tz, utc_minute(start), utc_minute(stop), tasks)
    for task_id, runs in expected.items():
        assert found[task_id] == runs, (task_id, tasks[task_id].format())
    # Whatever the task, a real minute runs it at most once per wall minute owed.
    for runs in found.values():
        assert len(set(runs)) == len(runs)


NIGHT_TASKS = {
    1: cron("30 2 *"),  # fixed, in Paris's and New York's changed hour
    2: cron("* 2 *"),  # wildcard on minutes
    3: cron("*/15 * *"),  # wildcard on hours
    4: cron("0,30 1-3 *"),  # fixed, around the change
    5: cron("59 1 *"),
    6: cron("0 3 *"),
    7: cron("* 3 *"),
    8: cron("5 * *"),
    9: cron("* 1 *"),
    10: cron("30 1 *"),
    11: cron("59 2 *"),
}


def quarters(tz: ZoneInfo, start: str, stop: str) -> list[tuple[int, datetime]]:
    """What `*/15 * *` owes: every real minute showing a quarter, for that wall minute."""
    return every_real_minute(tz, utc_minute(start), utc_minute(stop), lambda w: w.minute % 15 == 0)


def test_it_lives_through_the_paris_spring_night() -> None:
    # 2026-03-29 01:00 UTC: 01:59 CET is followed by 03:00 CEST; 02:xx never shows.
    start, stop = "2026-03-28 22:00", "2026-03-29 04:00"
    jump = utc_minute("2026-03-29 01:00")  # the real minute that reads 03:00
    expected = {
        1: expect([("03-29 01:00", "03-29 02:30")]),  # once, at 03:00 CEST
        2: [],  # no 02:xx minute exists, and 03:00 does not match hour 2
        3: quarters(PARIS, start, stop),
        4: expect(
            [
                ("03-29 00:00", "03-29 01:00"),
                ("03-29 00:30", "03-29 01:30"),
                ("03-29 01:00", "03-29 02:00"),  # the gap's fixed minutes, at 03:00
                ("03-29 01:00", "03-29 02:30"),
                ("03-29 01:00", "03-29 03:00"),
                ("03-29 01:30", "03-29 03:30"),
            ]
        ),
        5: expect([("03-29 00:59", "03-29 01:59")]),
        6: expect([("03-29 01:00", "03-29 03:00")]),
        7: [(jump + k, at("2026-03-29 03:00") + k * MINUTE) for k in range(60)],
        8: expect(
            [
                ("03-28 22:05", "03-28 23:05"),
                ("03-28 23:05", "03-29 00:05"),
                ("03-29 00:05", "03-29 01:05"),  # no 02:05: a wildcard only runs for 03:00
                ("03-29 01:05", "03-29 03:05"),
                ("03-29 02:05", "03-29 04:05"),
                ("03-29 03:05", "03-29 05:05"),
            ]
        ),
        9: [(jump - 60 + k, at("2026-03-29 01:00") + k * MINUTE) for k in range(60)],
        10: expect([("03-29 00:30", "03-29 01:30")]),
        11: expect([("03-29 01:00", "03-29 02:59")]),
    }
    check_night(PARIS, start, stop, NIGHT_TASKS, expected)


def test_it_lives_through_the_paris_autumn_night() -> None:
    # 2026-10-25 01:00 UTC: 02:59 CEST is followed by 02:00 CET; 02:xx shows twice.
    start, stop = "2026-10-24 21:00", "2026-10-25 04:00"
    back = utc_minute("2026-10-25 01:00")  # the real minute that reads 02:00 again
    expected = {
        1: expect([("10-25 00:30", "10-25 02:30")]),  # the first 02:30 only
        2: [(back - 60 + k, at("2026-10-25 02:00") + k * MINUTE) for k in range(60)]
        + [(back + k, at("2026-10-25 02:00") + k * MINUTE) for k in range(60)],  # 120 runs
        3: quarters(PARIS, start, stop),
        4: expect(
            [
                ("10-24 23:00", "10-25 01:00"),
                ("10-24 23:30", "10-25 01:30"),
                ("10-25 00:00", "10-25 02:00"),
                ("10-25 00:30", "10-25 02:30"),
                ("10-25 02:00", "10-25 03:00"),
                ("10-25 02:30", "10-25 03:30"),
            ]
        ),
        5: expect([("10-24 23:59", "10-25 01:59")]),
        6: expect([("10-25 02:00", "10-25 03:00")]),
        7: [(back + 60 + k, at("2026-10-25 03:00") + k * MINUTE) for k in range(60)],
        8: expect(
            [
                ("10-24 21:05", "10-24 23:05"),
                ("10-24 22:05", "10-25 00:05"),
                ("10-24 23:05", "10-25 01:05"),
                ("10-25 00:05", "10-25 02:05"),
                ("10-25 01:05", "10-25 02:05"),  # a wildcard: both times
                ("10-25 02:05", "10-25 03:05"),
                ("10-25 03:05", "10-25 04:05"),
            ]
        ),
        9: [(back - 120 + k, at("2026-10-25 01:00") + k * MINUTE) for k in range(60)],
        10: expect([("10-24 23:30", "10-25 01:30")]),
        11: expect([("10-25 00:59", "10-25 02:59")]),  # not at the repeated 02:59 (delta 0)
    }
    assert len(expected[2]) == 120
    check_night(PARIS, start, stop, NIGHT_TASKS, expected)


def test_it_lives_through_the_new_york_spring_night() -> None:
    # 2026-03-08 07:00 UTC: 01:59 EST is followed by 03:00 EDT.
    start, stop = "2026-03-08 04:00", "2026-03-08 10:00"
    jump = utc_minute("2026-03-08 07:00")
    expected = {
        1: expect([("03-08 07:00", "03-08 02:30")]),
        2: [],
        3: quarters(NEW_YORK, start, stop),
        4: expect(
            [
                ("03-08 06:00", "03-08 01:00"),
                ("03-08 06:30", "03-08 01:30"),
                ("03-08 07:00", "03-08 02:00"),
                ("03-08 07:00", "03-08 02:30"),
                ("03-08 07:00", "03-08 03:00"),
                ("03-08 07:30", "03-08 03:30"),
            ]
        ),
        5: expect([("03-08 06:59", "03-08 01:59")]),
        6: expect([("03-08 07:00", "03-08 03:00")]),
        7: [(jump + k, at("2026-03-08 03:00") + k * MINUTE) for k in range(60)],
        8: expect(
            [
                ("03-08 04:05", "03-07 23:05"),
                ("03-08 05:05", "03-08 00:05"),
                ("03-08 06:05", "03-08 01:05"),
                ("03-08 07:05", "03-08 03:05"),
                ("03-08 08:05", "03-08 04:05"),
                ("03-08 09:05", "03-08 05:05"),
            ]
        ),
        9: [(jump - 60 + k, at("2026-03-08 01:00") + k * MINUTE) for k in range(60)],
        10: expect([("03-08 06:30", "03-08 01:30")]),
        11: expect([("03-08 07:00", "03-08 02:59")]),
    }
    check_night(NEW_YORK, start, stop, NIGHT_TASKS, expected)


def test_it_lives_through_the_new_york_autumn_night() -> None:
    # 2026-11-01 06:00 UTC: 01:59 EDT is followed by 01:00 EST; 01:xx shows twice.
    start, stop = "2026-11-01 03:00", "2026-11-01 10:00"
    back = utc_minute("2026-11-01 06:00")
    expected = {
        1: expect([("11-01 07:30", "11-01 02:30")]),
        2: [(back + 60 + k, at("2026-11-01 02:00") + k * MINUTE) for k in range(60)],
        3: quarters(NEW_YORK, start, stop),
        4: expect(
            [
                ("11-01 05:00", "11-01 01:00"),
                ("11-01 05:30", "11-01 01:30"),  # not again at 06:30 UTC
                ("11-01 07:00", "11-01 02:00"),
                ("11-01 07:30", "11-01 02:30"),
                ("11-01 08:00", "11-01 03:00"),
                ("11-01 08:30", "11-01 03:30"),
            ]
        ),
        5: expect([("11-01 05:59", "11-01 01:59")]),  # not at the repeated 01:59
        6: expect([("11-01 08:00", "11-01 03:00")]),
        7: [(back + 120 + k, at("2026-11-01 03:00") + k * MINUTE) for k in range(60)],
        8: expect(
            [
                ("11-01 03:05", "10-31 23:05"),
                ("11-01 04:05", "11-01 00:05"),
                ("11-01 05:05", "11-01 01:05"),
                ("11-01 06:05", "11-01 01:05"),
                ("11-01 07:05", "11-01 02:05"),
                ("11-01 08:05", "11-01 03:05"),
                ("11-01 09:05", "11-01 04:05"),
            ]
        ),
        9: [(back - 60 + k, at("2026-11-01 01:00") + k * MINUTE) for k in range(60)]
        + [(back + k, at("2026-11-01 01:00") + k * MINUTE) for k in range(60)],  # 120 runs
        10: expect([("11-01 05:30", "11-01 01:30")]),
        11: expect([("11-01 07:59", "11-01 02:59")]),
    }
    check_night(NEW_YORK, start, stop, NIGHT_TASKS, expected)


def test_it_runs_quarter_hour_tasks_once_per_real_minute_across_every_change() -> None:
    quarter = {1: cron("*/15 * *")}
    for tz, night in (
        (PARIS, "2026-03-29"),
        (PARIS, "2026-10-25"),
        (NEW_YORK, "2026-03-08"),
        (NEW_YORK, "2026-11-01"),
    ):
        start, stop = utc_minute(f"{night} 00:00") - 600, utc_minute(f"{night} 00:00") + 1200
        runs = drive(tz, start, stop, quarter)[1]
        per_minute = Counter(epoch_minute for epoch_minute, _ in runs)
        assert max(per_minute.values()) == 1
        owed = {m for m in range(start + 1, stop) if wall_of(m, tz).minute % 15 == 0}
        assert set(per_minute) == owed


# --- local_minute --------------------------------------------------------------------------


def test_it_maps_epoch_minutes_to_wall_minutes_without_fold() -> None:
    first = local_minute(utc_minute("2026-10-25 00:30"), PARIS)
    second = local_minute(utc_minute("2026-10-25 01:30"), PARIS)
    assert first == second == at("2026-10-25 02:30")
    assert (first.fold, second.fold, second.tzinfo) == (0, 0, None)
    assert local_minute(utc_minute("2026-03-29 01:00"), PARIS) == at("2026-03-29 03:00")
    assert local_minute(utc_minute("2026-04-04 15:00"), LORD_HOWE) == at("2026-04-05 01:30")
    assert local_minute(0, ZoneInfo("UTC")) == datetime(1970, 1, 1)


@pytest.fixture
def new_york_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york_local_time")
def test_it_uses_the_process_time_zone_when_given_none() -> None:
    for text in ("2026-11-01 05:30", "2026-11-01 06:30", "2026-03-08 07:00", "2026-06-17 12:00"):
        assert local_minute(utc_minute(text), None) == local_minute(utc_minute(text), NEW_YORK)
    after = utc_minute("2026-10-31 12:00") * 60
    for text in ("30 1 *", "* 1 *", "30 2 *", "*/20 * *"):
        assert next_runs(cron(text), after, 6, None) == next_runs(cron(text), after, 6, NEW_YORK)


# --- next_runs -----------------------------------------------------------------------------

SIMULATED = [
    "30 2 *",
    "* 2 *",
    "*/15 * *",
    "0,30 1-3 *",
    "59 1 *",
    "0 3 *",
    "* 3 *",
    "5 * *",
    "* 1 *",
    "30 1 *",
    "45 1 *",
    "15 2 *",
    "0-5,58 2 *",
    "59 2 *",
    "0 * *",
    "* * *",
    "45 2 0",
    "10 2 1-6",
    "1 0,2,4 *",
    "29,31 1,2 *",
]

NIGHTS = [
    (PARIS, "2026-03-29 01:00"),
    (PARIS, "2026-10-25 01:00"),
    (NEW_YORK, "2026-03-08 07:00"),
    (NEW_YORK, "2026-11-01 06:00"),
    (LORD_HOWE, "2026-04-04 15:00"),  # 02:00 LHDT -> 01:30 LHST: a half hour twice
    (LORD_HOWE, "2026-10-03 15:30"),  # 02:00 LHST -> 02:30 LHDT: a half hour skipped
    (ZoneInfo("Pacific/Apia"), "2011-12-30 10:00"),  # a day skipped: a correction
    (ZoneInfo("Pacific/Kwajalein"), "1969-09-30 13:00"),  # 23 hours back: a correction
]


@pytest.mark.parametrize(("tz", "change"), NIGHTS, ids=lambda value: str(value))
def test_it_predicts_what_the_minute_loop_does_across_a_dst_change(
    tz: ZoneInfo, change: str
) -> None:
    middle = utc_minute(change)
    start, stop = middle - 2 * 1440, middle + 2 * 1440
    tasks = {index: cron(text) for index, text in enumerate(SIMULATED)}
    found = drive(tz, start, stop, tasks)
    # The simulation is complete before `stop`: compare what next_runs says happens there.
    afters = [m * 60 + second for m in range(middle - 300, middle + 300, 11) for second in (0, 59)]
    afters += [m * 60 + second for m in range(middle - 3, middle + 3) for second in (-1, 0, 1)]
    for index, timing in tasks.items():
        starts = [m * 60 for m, _ in found[index]]
        for after in afters:
            expected = [s for s in starts if s > after][:5]
            got = next_runs(timing, after, 5, tz)
            assert [s for s in got if s < stop * 60] == expected, (SIMULATED[index], after)


def test_it_predicts_a_skipped_half_hour_at_lord_howe() -> None:
    after = utc_minute("2026-10-03 12:00") * 60
    got = [
        local_minute(s // 60, LORD_HOWE)
        for s in next_runs(cron("0,15,45 2 *"), after, 4, LORD_HOWE)
    ]
    # 02:00 and 02:15 do not exist; both run at 02:30, the first minute after the gap.
    day = "2026-10-04"
    assert got == [
        at(f"{day} 02:30"),
        at(f"{day} 02:30"),
        at(f"{day} 02:45"),
        at("2026-10-05 02:00"),
    ]


@settings(max_examples=200, deadline=None)
@given(
    timing=timings,
    start=st.datetimes(datetime(2026, 5, 1), datetime(2026, 7, 31)),
    zone=st.sampled_from(["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"]),
)
def test_it_agrees_with_croniter_away_from_dst_changes(
    timing: Timing, start: datetime, zone: str
) -> None:
    tz = ZoneInfo(zone)
    start = start.replace(second=0, microsecond=0)
    after = int(start.replace(tzinfo=tz).timestamp())
    minutes, hours, days = timing.format().split()
    walls = croniter(f"{minutes} {hours} * * {days}", start)
    expected = [walls.get_next(datetime) for _ in range(4)]
    got = [local_minute(s // 60, tz) for s in next_runs(timing, after, 4, tz)]
    assert got == expected
    assert all(s % 60 == 0 for s in next_runs(timing, after, 4, tz))


def test_it_returns_no_runs_for_an_empty_timing_or_count() -> None:
    assert next_runs(Timing(0, FULL_HOURS, FULL_DAYSOFWEEK), 0, 3, PARIS) == []
    assert next_runs(cron("* * *"), 0, 0, PARIS) == []


# --- the five fields and per-task zones (issue 13) -------------------------------------------


def test_it_runs_a_task_only_on_its_days_of_month_and_months() -> None:
    tasks = {
        1: Timing.cron("0 3 1 * *"),
        2: Timing.cron("0 0 29 2 *"),
        3: Timing.cron("0 20 1-7 * 5"),
    }
    start = utc_minute("2027-12-31 12:00")
    found = drive(ZoneInfo("UTC"), start, start + 70 * 24 * 60, tasks)
    assert [wall for _, wall in found[1]] == [
        at("2028-01-01 03:00"),
        at("2028-02-01 03:00"),
        at("2028-03-01 03:00"),
    ]
    assert [wall for _, wall in found[2]] == [at("2028-02-29 00:00")]
    # Days 1-7 or Fridays, at 20:00, from 2027-12-31 (a Friday) to 2028-03-09.
    days = [wall.date() for _, wall in found[3]]
    window = [at("2027-12-31 20:00") + k * timedelta(days=1) for k in range(70)]
    expected = [d.date() for d in window if d.day <= 7 or d.isoweekday() == 5]
    assert days == expected


def test_it_catches_up_and_jumps_only_on_matching_days() -> None:
    tasks = {1: Timing.cron("30 23 31 * *"), 2: Timing.cron("0 0 1 * *")}
    # 23:29 on May 31 to 00:02 on June 1, in one jump of 33 minutes.
    step = plan(at("2027-05-31 23:29"), at("2027-06-01 00:02"), tasks)
    assert step.runs == ((at("2027-05-31 23:30"), 1), (at("2027-06-01 00:00"), 2))
    # The same jump a month later: June has no 31st.
    step = plan(at("2027-06-30 23:29"), at("2027-07-01 00:02"), tasks)
    assert step.runs == ((at("2027-07-01 00:00"), 2),)


def test_it_never_runs_a_reboot_task_by_the_clock() -> None:
    tasks = {1: Timing.cron("@reboot"), 2: Timing()}
    for last in (
        NOW - MINUTE,
        NOW - 3 * MINUTE,
        NOW - 60 * MINUTE,
        NOW + MINUTE,
        NOW - 600 * MINUTE,
    ):
        assert {task_id for _, task_id in plan(last, NOW, tasks).runs} == {2}
    assert next_runs(Timing.cron("@reboot"), 0, 3, PARIS) == []


def test_it_plans_only_the_zones_asked_for() -> None:
    tasks = {1: Timing.cron("0 12 * * *"), 2: Timing.cron("0 12 * * *", "Asia/Tokyo")}
    assert plan(NOW - MINUTE, NOW, tasks).runs == ((NOW, 1), (NOW, 2))
    assert plan(NOW - MINUTE, NOW, tasks, {""}).runs == ((NOW, 1),)
    assert plan(NOW - 30 * MINUTE, NOW, tasks, {"Asia/Tokyo"}).runs == ((NOW, 2),)


def zone_groups(tasks: Mapping[int, Timing], daemon: ZoneInfo) -> dict[str, ZoneGroup]:
    named = {t.zone for t in tasks.values() if t.zone}
    groups = {"": ZoneGroup(daemon, tasks, frozenset({""}))}
    for name in named:
        own = {i: t for i, t in tasks.items() if t.zone == name}
        groups[name] = ZoneGroup(ZoneInfo(name), own)
    return groups


def test_it_reads_each_task_in_its_own_zone() -> None:
    tasks = {1: Timing.cron("0 3 * * *"), 2: Timing.cron("0 3 * * *", "America/New_York")}
    groups = zone_groups(tasks, PARIS)
    start = utc_minute("2026-06-16 12:00")
    runs: list[tuple[int, int]] = []
    marks: dict[str, datetime] = {}
    previous = None
    for epoch_minute in range(start, start + 24 * 60):
        plans = plan_zones(previous, marks, epoch_minute, groups)
        runs += [(epoch_minute, task_id) for z in plans.values() for _, task_id in z.plan.runs]
        marks = {name: z.plan.last for name, z in plans.items()}
        previous = epoch_minute
    assert runs == [
        (utc_minute("2026-06-17 01:00"), 1),  # 03:00 in Paris (UTC+2)
        (utc_minute("2026-06-17 07:00"), 2),  # 03:00 in New York (UTC-4)
    ]


def test_it_starts_a_new_zone_from_the_minute_before() -> None:
    # The zone's first task came during the previous minute: it has no mark yet.
    tasks = {2: Timing.cron("* * * * *", "Asia/Tokyo")}
    groups = zone_groups(tasks, PARIS)
    minute = utc_minute("2026-06-17 10:00")
    plans = plan_zones(minute - 1, {"": local_minute(minute - 1, PARIS)}, minute, groups)
    assert plans["Asia/Tokyo"].plan.kind == "normal"
    assert plans["Asia/Tokyo"].plan.runs == ((local_minute(minute, ZoneInfo("Asia/Tokyo")), 2),)
    assert plan_zones(None, {}, minute, groups)["Asia/Tokyo"].plan.runs == ()


def test_it_judges_dst_in_the_zone_that_sees_it() -> None:
    """New York springs forward on 2026-03-08 (Paris three weeks later): a New York task
    at 02:30 runs once at 03:00 New York time, and the Paris tasks see an ordinary night."""
    tasks = {
        1: Timing.cron("30 2 * * *"),
        2: Timing.cron("30 2 * * *", "America/New_York"),
        3: Timing.cron("*/30 * * * *", "America/New_York"),
    }
    groups = zone_groups(tasks, PARIS)
    start = utc_minute("2026-03-07 12:00")
    runs: list[tuple[int, int]] = []
    kinds: dict[str, set[str]] = {"": set(), "America/New_York": set()}
    marks: dict[str, datetime] = {}
    previous = None
    for epoch_minute in range(start, start + 24 * 60):
        plans = plan_zones(previous, marks, epoch_minute, groups)
        runs += [(epoch_minute, task_id) for z in plans.values() for _, task_id in z.plan.runs]
        for name, z in plans.items():
            kinds[name].add(z.plan.kind)
        marks = {name: z.plan.last for name, z in plans.items()}
        previous = epoch_minute
    assert kinds == {"": {"none", "normal"}, "America/New_York": {"none", "normal", "forward-jump"}}
    assert [m for m, task_id in runs if task_id == 1] == [utc_minute("2026-03-08 01:30")]
    assert [m for m, task_id in runs if task_id == 2] == [utc_minute("2026-03-08 07:00")]
    three_am = utc_minute("2026-03-08 07:00")  # 03:00 EDT, the first minute after the gap
    assert [m for m, task_id in runs if task_id == 3 and three_am - 90 <= m <= three_am + 30] == [
        three_am - 90,  # 00:30 EST
        three_am - 60,  # 01:00 EST
        three_am - 30,  # 01:30 EST
        three_am,  # 03:00 EDT, once: a wildcard task runs once for the current minute
        three_am + 30,
    ]


@pytest.mark.parametrize(
    ("text", "zone", "after", "expected"),
    [
        ("0 3 1 * *", "Europe/Paris", "2026-10-15 00:00", ["2026-11-01 02:00", "2026-12-01 02:00"]),
        ("0 0 29 2 *", "UTC", "2026-01-01 00:00", ["2028-02-29 00:00", "2032-02-29 00:00"]),
        # 02:30 does not exist on 2026-03-08 in New York: it runs at 03:00 EDT.
        (
            "30 2 8 3 *",
            "America/New_York",
            "2026-01-01 00:00",
            ["2026-03-08 07:00", "2027-03-08 07:30"],
        ),
        ("0 20 1-7 * 5", "UTC", "2026-01-31 00:00", ["2026-02-01 20:00", "2026-02-02 20:00"]),
    ],
)
def test_it_predicts_the_runs_of_the_five_fields_in_a_zone(
    text: str, zone: str, after: str, expected: list[str]
) -> None:
    timing = Timing.cron(text, zone)
    got = next_runs(timing, utc_minute(after) * 60, len(expected), ZoneInfo(zone))
    assert got == [utc_minute(when) * 60 for when in expected]


# --- speed -----------------------------------------------------------------------------------


def test_it_plans_a_minute_of_100000_tasks_quickly() -> None:
    tasks = {task_id: Timing(1 << task_id % 60, 1 << task_id % 24) for task_id in range(100_000)}
    tasks[100_000] = Timing()
    began = time.perf_counter()
    step = plan(NOW - MINUTE, NOW, tasks)
    jump = plan(NOW - 180 * MINUTE, NOW, tasks)
    elapsed = time.perf_counter() - began
    # 100000 ids, minute m hour h: id % 60 == 0 and id % 24 == 12 (id = 60 mod 120).
    assert [task_id for _, task_id in step.runs] == [*range(60, 100_000, 120), 100_000]
    # Three hours back: 09:01 .. 12:00, one fixed run per id whose minute and hour fall in.
    skipped = {(9, m) for m in range(1, 60)} | {(h, m) for h in (10, 11) for m in range(60)}
    skipped.add((12, 0))
    owed = sum(1 for task_id in range(100_000) if (task_id % 24, task_id % 60) in skipped)
    assert jump.kind == "forward-jump"
    assert len(jump.runs) == owed + 1
    assert elapsed < 1.0  # about 0.06 s on a laptop
