"""The pure side of the --catch-up policy: `schedule.missed` and `executor.catch_up_runs`.

A catch-up run is decided from the zone's last minute handled and its current wall
minute, with the task's timing only: no clock, no files, no processes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from saturnd import schedule
from saturnd.executor import catch_up_runs
from saturnd.timing import Timing

LAST = datetime(2026, 11, 21, 8, 0)  # the last minute handled before the stop
DAILY_NOON = Timing.cron("0 12 * * *")
DAILY_THREE = Timing.cron("0 3 * * *")
HOURLY = Timing.cron("0 * * * *")


@pytest.mark.parametrize(
    ("timing", "current", "expected"),
    [
        (DAILY_NOON, LAST + timedelta(hours=10), True),  # 12:00 fell in the stop
        (DAILY_NOON, LAST + timedelta(days=2), True),
        (DAILY_THREE, LAST + timedelta(hours=10), False),  # 03:00 is outside (08:00, 18:00)
        (DAILY_NOON, datetime(2026, 11, 21, 12, 0), False),  # current itself is not missed
        (DAILY_NOON, datetime(2026, 11, 21, 12, 1), True),
        (HOURLY, LAST + timedelta(minutes=59), False),
        (HOURLY, LAST + timedelta(minutes=61), True),
        (Timing.cron("@reboot"), LAST + timedelta(days=2), False),
        (Timing.cron("0 0 31 2 *"), LAST + timedelta(days=400), False),  # never runs
    ],
)
def test_it_tells_whether_a_timing_missed_a_start(
    timing: Timing, current: datetime, expected: bool
) -> None:
    assert schedule.missed(timing, LAST, current) is expected


def test_it_ignores_the_seconds_of_the_marks() -> None:
    # 12:00:59 reads as the wall minute 12:00: the current one, not a missed one.
    assert not schedule.missed(
        DAILY_NOON, LAST.replace(second=30), LAST.replace(hour=12, second=59)
    )
    assert schedule.missed(
        DAILY_NOON, LAST.replace(hour=11, minute=59, second=59), LAST.replace(hour=12, minute=1)
    )


def correction(current: datetime, runs: tuple[tuple[datetime, int], ...] = ()) -> schedule.Plan:
    return schedule.Plan(runs, current, "correction")


TASKS = {1: DAILY_NOON, 2: DAILY_THREE, 3: HOURLY, 4: Timing.cron("* * * * *")}
GROUP = schedule.ZoneGroup(None, TASKS)


@pytest.mark.parametrize("gap", [timedelta(hours=10), timedelta(days=2)])
def test_it_catches_up_each_task_that_missed_a_start_once(gap: timedelta) -> None:
    current = LAST + gap + timedelta(minutes=7)
    plan = schedule.plan(LAST, current, TASKS)
    assert plan.kind == "correction"
    # 4 runs for `current` under the rule itself; 3 missed hours; 2 only in the 2 days.
    assert catch_up_runs(plan, LAST, current, GROUP, {1, 2, 3, 4}) == (
        [1, 2, 3] if gap > timedelta(days=1) else [1, 3]
    )


def test_it_catches_up_only_the_tasks_that_ask_for_it() -> None:
    current = LAST + timedelta(hours=10)
    plan = correction(current)
    assert catch_up_runs(plan, LAST, current, GROUP, {3}) == [3]
    assert catch_up_runs(plan, LAST, current, GROUP, set()) == []
    assert catch_up_runs(plan, LAST, current, GROUP, {99}) == []  # removed meanwhile


def test_it_does_not_double_a_task_that_runs_for_the_current_minute() -> None:
    current = datetime(2026, 11, 21, 18, 0)  # HOURLY matches 18:00 and runs by the rule
    plan = schedule.plan(LAST, current, TASKS)
    assert (current, 3) in plan.runs
    assert catch_up_runs(plan, LAST, current, GROUP, {1, 3}) == [1]


@pytest.mark.parametrize(
    "current",
    [
        LAST + timedelta(minutes=180),  # within the jump rule: it runs the missed minutes
        LAST + timedelta(minutes=3),
        LAST - timedelta(hours=10),  # a correction backwards: nothing was missed
        LAST - timedelta(minutes=30),
    ],
)
def test_it_leaves_other_moves_to_the_jump_rule(current: datetime) -> None:
    plan = schedule.plan(LAST, current, TASKS)
    assert catch_up_runs(plan, LAST, current, GROUP, {1, 2, 3, 4}) == []


def test_it_keeps_to_the_zones_of_the_group() -> None:
    tasks = {1: DAILY_NOON, 5: Timing.cron("0 12 * * *", "Asia/Tokyo")}
    current = LAST + timedelta(hours=10)
    plan = correction(current)
    daemon = schedule.ZoneGroup(None, tasks, frozenset({""}))
    assert catch_up_runs(plan, LAST, current, daemon, {1, 5}) == [1]
    tokyo = schedule.ZoneGroup(None, {5: tasks[5]})
    assert catch_up_runs(plan, LAST, current, tokyo, {1, 5}) == [5]
