"""Scenario 4, time: daylight saving in four zones, and clock steps both ways.

The rule of DESIGN.md ("Time") is written again here, from its text and independently
of saturnd.schedule: `Rule` below. Three checks use it:

1. The real daemon, stepped minute by minute with the fake clock through every DST
   change of 2026 in Europe/Paris, America/New_York and Australia/Lord_Howe (30-minute
   shifts), and through ordinary midnights in UTC: every run of every task (its start
   TIME, with repeats) is the rule's, no more, no fewer.
2. A whole year in each zone, minute by minute, without processes: `schedule.plan` (the
   executor's decision) against `Rule` at each of the 525,600 minutes, and
   `schedule.next_runs` (the prediction) against the runs of the year. A year through
   the real daemon would be 525,600 steps; what the daemon adds to `plan` (reading the
   clock, the wall minute, recording, starting runs) does not depend on the date, and
   check 1 covers it wherever the wall clock is not plain.
3. The real daemon, clock stepped back by 1 minute, 1 hour and 1 day and forward by 2
   minutes, 2 hours and 2 days, in each zone: the rule's runs again.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from saturnd import schedule
from saturnd.timing import Timing
from tests.daemon_harness import crontab_field, wait_for
from tests.reliability.support import LONG, Figures, Target, scaled

MakeTarget = Callable[..., Target]
ZONES = ("UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe")


# --- the rule, written from DESIGN.md -----------------------------------------------


_field = crontab_field


@dataclass(frozen=True)
class Spec:
    """A task's timing as three sets; days of week with 0 = Sunday."""

    text: tuple[str, str, str]

    @property
    def minutes(self) -> frozenset[int]:
        return _field(self.text[0], 59)

    @property
    def hours(self) -> frozenset[int]:
        return _field(self.text[1], 23)

    @property
    def days(self) -> frozenset[int]:
        return _field(self.text[2], 6)

    @property
    def wildcard(self) -> bool:
        """DESIGN.md: a task whose minute or hour set is full."""
        return len(self.minutes) == 60 or len(self.hours) == 24

    def timing(self) -> Timing:
        return Timing.parse(*self.text)


class Rule:
    """Vixie cron's rule as DESIGN.md states it, for a daemon that ticks at each new
    real minute; `last` is the last minute handled (it stays put when the clock went
    back, so that fixed-time tasks never run twice for one wall minute)."""

    def __init__(self, specs: dict[int, Spec]) -> None:
        self.specs = specs
        self.sets = {i: (s.minutes, s.hours, s.days, s.wildcard) for i, s in specs.items()}
        self.last: datetime | None = None

    def matches(self, task: int, wall: datetime) -> bool:
        minutes, hours, days, _ = self.sets[task]
        return wall.minute in minutes and wall.hour in hours and (wall.isoweekday() % 7) in days

    def tick(self, wall: datetime) -> list[int]:
        """The tasks that run at this tick, one entry per run."""
        if self.last is None:
            self.last = wall  # the first start: this minute counts as handled
            return []
        delta = round((wall - self.last).total_seconds() / 60)
        skipped = [self.last + timedelta(minutes=k) for k in range(1, delta + 1)]
        runs: list[int] = []
        if 1 <= delta <= 5:
            for minute in skipped:
                runs += [t for t in sorted(self.sets) if self.matches(t, minute)]
            self.last = wall
        elif 5 < delta <= 180:
            for t in sorted(self.sets):
                if self.sets[t][3]:
                    runs += [t] if self.matches(t, wall) else []
                else:
                    runs += [t for minute in skipped if self.matches(t, minute)]
            self.last = wall
        elif -180 <= delta <= 0:
            runs = [t for t in sorted(self.sets) if self.sets[t][3] and self.matches(t, wall)]
        else:
            runs = [t for t in sorted(self.sets) if self.matches(t, wall)]
            self.last = wall
        return runs


def wall_of(epoch_minute: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(epoch_minute * 60, zone).replace(tzinfo=None)


def epoch_of(local: str, zone: str) -> int:
    """Epoch seconds of a local time (the first one, if it repeats)."""
    moment = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone))
    return int(moment.timestamp())


# --- tasks ----------------------------------------------------------------------------

SPECS = {
    name: Spec(tuple(name.split()))  # type: ignore[arg-type]
    for name in (
        "* 2 *",  # wildcard: every minute of 2 o'clock
        "0 * *",  # wildcard: every hour
        "*/15 * *",  # wildcard: every quarter
        "30 2 *",  # fixed, inside the spring gap and the repeated hour
        "0 2 *",
        "59 1 *",
        "0 3 *",
        "15,45 1-3 *",
        "45 1 *",  # Lord Howe's half hours
        "15 2 *",
        "0-4 3 *",
        "30 2 0",  # Sundays only: the DST changes are on Sundays
        "59 23 *",  # midnights
        "0 0 *",
        "* 0 1",  # wildcard on Mondays only
    )
}


def create_all(daemon: Target, specs: Sequence[Spec]) -> list[int]:
    ids = []
    for spec in specs:
        minute, hour, day = spec.text
        ids.append(daemon.create("-m", minute, "-H", hour, "-d", day, "true"))
    return ids


def recorded(daemon: Target, task: int) -> list[int]:
    """The TIME of every recorded run of a task, as stored (epoch seconds)."""
    body = daemon.exchange(b"TX" + struct.pack(">Q", task))
    count = struct.unpack_from(">I", body, 2)[0]
    return [struct.unpack_from(">qH", body, 6 + 10 * i)[0] for i in range(count)]


def drive(
    daemon: Target, ticks: Sequence[int], specs: dict[int, Spec], zone: str, figures: Figures
) -> int:
    """Step the daemon through `ticks` (epoch seconds, the first is where it started)
    and compare every task's runs with the rule; the number of runs checked. The worst
    latency is the longest step: clock written to minute handled."""
    tz = ZoneInfo(zone)
    rule = Rule(specs)
    expected: dict[int, list[int]] = {task: [] for task in specs}
    for index, moment in enumerate(ticks):
        if index:
            if moment < ticks[index - 1] + 60:
                # FileClock.wait (saturnd/clock.py) compares the file with what it reads
                # when it starts waiting, so a step back written in the microseconds
                # between the executor's own read and that one is seen only at the next
                # change. Let the executor settle into its wait first. (A step forward
                # reaches the deadline it waits for, and is always seen.)
                time.sleep(0.1)
            started = time.monotonic()
            daemon.step_to(moment)
            figures.latency(time.monotonic() - started)
        for task in rule.tick(wall_of(moment // 60, tz)):
            expected[task].append(moment)
    total = sum(len(v) for v in expected.values())

    def all_recorded() -> bool:
        return sum(len(recorded(daemon, task)) for task in specs) >= total

    wait_for(all_recorded, timeout=60, what=f"{total} runs to be recorded")
    time.sleep(0.3)  # a run too many would show up now
    for task, times in expected.items():
        assert Counter(recorded(daemon, task)) == Counter(times), (zone, specs[task].text)
    return total


# --- 1. DST nights through the real daemon ---------------------------------------------

# (zone, local start, local end): around each change of 2026, and ordinary midnights.
NIGHTS = [
    ("UTC", "2026-06-13 23:30", "2026-06-14 01:30"),  # Saturday to Sunday
    ("UTC", "2026-12-31 23:30", "2027-01-01 00:45"),  # new year
    ("Europe/Paris", "2026-03-29 00:45", "2026-03-29 03:45"),  # 02:00 -> 03:00
    ("Europe/Paris", "2026-10-25 00:45", "2026-10-25 03:45"),  # 03:00 -> 02:00
    ("America/New_York", "2026-03-08 00:45", "2026-03-08 03:45"),
    ("America/New_York", "2026-11-01 00:15", "2026-11-01 03:15"),  # 02:00 -> 01:00
    ("Australia/Lord_Howe", "2026-04-05 00:45", "2026-04-05 03:15"),  # 02:00 -> 01:30
    ("Australia/Lord_Howe", "2026-10-04 00:45", "2026-10-04 03:15"),  # 02:00 -> 02:30
]


@pytest.mark.scenario("4a. DST nights through the real daemon")
@pytest.mark.parametrize(
    ("zone", "start", "end"), NIGHTS, ids=[f"{z}-{s[:10]}" for z, s, _ in NIGHTS]
)
def test_it_runs_what_the_rule_says_through_a_dst_night(
    target: MakeTarget, figures: Figures, zone: str, start: str, end: str
) -> None:
    first, last = epoch_of(start, zone), epoch_of(end, zone)
    if not LONG:  # the short form: the hour and a half around the change
        middle = (first + last) // 2 // 60 * 60
        first, last = middle - 45 * 60, middle + 45 * 60
    daemon = target(start=first, tz=zone)
    specs = list(SPECS.values())
    ids = create_all(daemon, specs)
    ticks = list(range(first, last + 1, 60))
    runs = drive(daemon, ticks, dict(zip(ids, specs, strict=True)), zone, figures)
    figures.iterations = len(ticks)
    figures.checked = (
        f"{zone} {start[:10]}: {len(ticks)} minutes stepped, {len(specs)} tasks, {runs} runs, "
        "each at the rule's minute, none twice, none missing; worst latency = longest step"
    )


# --- 2. a year of the rule, without processes ---------------------------------------------


@pytest.mark.scenario("4b. a year of plan() and next_runs() against the rule")
@pytest.mark.parametrize("zone", ZONES)
def test_it_plans_a_whole_year_by_the_rule(zone: str, figures: Figures) -> None:
    tz = ZoneInfo(zone)
    first = epoch_of("2026-01-01 00:00", zone) // 60
    minutes = scaled(366 * 1440, 366 * 1440)
    specs = dict(enumerate(SPECS.values()))
    timings = {task: spec.timing() for task, spec in specs.items()}
    rule = Rule(specs)
    last: datetime | None = None
    runs_of: dict[int, list[int]] = {task: [] for task in specs}
    started = time.monotonic()
    for epoch_minute in range(first, first + minutes):
        wall = wall_of(epoch_minute, tz)
        expected = rule.tick(wall)
        plan = schedule.plan(last, schedule.local_minute(epoch_minute, tz), timings)
        last = plan.last
        got = [task for _, task in plan.runs]
        if sorted(got) != sorted(expected):
            raise AssertionError(f"{zone} {wall}: plan runs {got}, the rule {expected}")
        for task in expected:
            runs_of[task].append(epoch_minute * 60)
    # The prediction cassini shows is the same as what runs (fixed-time tasks: few runs).
    for task, spec in specs.items():
        if spec.wildcard:
            continue
        runs = runs_of[task]
        assert schedule.next_runs(timings[task], first * 60, len(runs), tz) == runs, spec.text
    figures.iterations = minutes
    figures.latency((time.monotonic() - started) / minutes)
    figures.checked = (
        f"{zone}, 2026 minute by minute: plan() = the rule at every minute for "
        f"{len(specs)} tasks ({sum(map(len, runs_of.values()))} runs); next_runs() = the "
        "year's runs of each fixed-time task; worst latency = mean time per minute (both)"
    )


# --- 3. clock steps -----------------------------------------------------------------------

STEP_SPECS = [
    Spec(("*", "*", "*")),
    Spec(("*/5", "*", "*")),
    Spec(("55", "9", "*")),
    Spec(("0", "10", "*")),
    Spec(("30", "11", "*")),  # inside the 2-hour jump
    Spec(("1", "12", "*")),
    Spec(("0-59", "10", "*")),  # wildcard (full minute set)
    Spec(("58", "9", "5")),  # Friday
]
# Minutes to move the clock by, one step each: back 1 min, 1 h, 1 day; forward 2 min,
# 2 h, 2 days; with ordinary minutes between.
MOVES = [1, 1, 1, -1, 1, 1, -60, 1, 1, 1, -1440, 1, 1, 2, 1, 120, 1, 1, 2880, 1, 1]


@pytest.mark.scenario("4c. clock steps back and forward")
@pytest.mark.parametrize("zone", ZONES)
def test_it_follows_the_rule_when_the_clock_steps(
    target: MakeTarget, figures: Figures, zone: str
) -> None:
    first = epoch_of("2026-06-10 09:50", zone)  # a Wednesday
    daemon = target(start=first, tz=zone)
    ids = create_all(daemon, STEP_SPECS)
    ticks = [first]
    for move in MOVES:
        ticks.append(ticks[-1] + 60 * move)
    runs = drive(daemon, ticks, dict(zip(ids, STEP_SPECS, strict=True)), zone, figures)
    figures.iterations = len(MOVES)
    figures.checked = (
        f"{zone}: back 1 min, 1 h, 1 day and forward 2 min, 2 h, 2 days among "
        f"{len(MOVES)} steps, {len(STEP_SPECS)} tasks, {runs} runs as the rule says; worst "
        "latency = longest step"
    )
