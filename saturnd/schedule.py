"""Which tasks are due when the executor wakes up in a new minute.

This module owns the clock-jump and daylight-saving rule of DESIGN.md ("Time"), after
Vixie cron's cron(8). Jumps are measured in local wall-clock minutes between `last`,
the last minute handled (a high-water mark), and `current`; delta = current - last:

- 1..5 (normal, catch-up): every minute of (last, current] is run, in order; each task
  matching a minute runs once for it;
- 6..180 (forward jump: spring forward, a short suspend): wildcard tasks run once, for
  `current`, if they match it; fixed-time tasks run once for each minute of
  (last, current] that matches them;
- -180..0 (backward: fall back, clock set back): wildcard tasks run for `current` if
  they match it; fixed-time tasks do not run, they already ran for these wall minutes;
  `last` stays where it was, so once the wall clock passes it the normal rule resumes
  and no minute is run twice;
- beyond 180 either way (correction): tasks matching `current` run, and `last` becomes
  `current`, even backwards.

A *wildcard* task has a full minute or hour set (`Timing.is_wildcard`). A task matches a
minute by all five fields and cron's OR day rule (`Timing.day_matches`); an `@reboot`
task has empty sets and never matches. Each time zone is planned on its own wall clock
with its own `last` (`plan_zones`): the rule is applied in the zone that sees the jump.

It also owns the mapping between epoch minutes and wall-clock minutes (`local_minute`),
the prediction of the start times of a task under this rule (`next_runs`), and whether
a task missed a start over a gap the rule calls a correction (`missed`, for the
`--catch-up` policy).

Rules: pure code. No `os`, `time` or file I/O: `now` and the time zone come in as
arguments. `plan` runs every minute over up to 100,000 tasks, so its inner loops are a
few bit tests per task, never a datetime operation per task.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Final

from saturnd.timing import FULL_DAYSOFMONTH, FULL_HOURS, FULL_MINUTES, FULL_MONTHS, Timing

__all__ = [
    "CATCH_UP_LIMIT",
    "JUMP_LIMIT",
    "Plan",
    "ZoneGroup",
    "ZonePlan",
    "local_minute",
    "missed",
    "next_runs",
    "plan",
    "plan_zones",
]

CATCH_UP_LIMIT: Final = 5
"""A forward step of at most this many minutes runs every skipped minute, for every task."""

JUMP_LIMIT: Final = 180
"""A step of more than this many minutes, either way, is a clock correction."""

_MINUTE: Final = timedelta(minutes=1)
_EPOCH: Final = datetime(1970, 1, 1)

# How far before `after` next_runs starts following the daemon's state. A backward
# zone lasts at most JUMP_LIMIT + 1 minutes, so six hours reach a steady state.
_WARM_UP: Final = 6 * 60

# Offset changes are looked for at this spacing, then bisected to the minute: two
# changes that cancel out within one hour would go unseen, and no time zone has them.
_PROBE: Final = 60


@dataclass(frozen=True)
class Plan:
    """What to do for one real minute.

    `runs`: (wall minute the run is for, task id), in minute order then id order;
    `last`: the new high-water mark, to pass back to the next `plan` call;
    `kind`: "none", "normal", "catch-up", "forward-jump", "backward" or "correction",
    for logging.
    """

    runs: tuple[tuple[datetime, int], ...]
    last: datetime
    kind: str


def _wall(moment: datetime) -> datetime:
    """A wall-clock minute as plan compares them: naive, second 0, no fold."""
    return moment.replace(second=0, microsecond=0, tzinfo=None, fold=0)


def _weekday(moment: datetime) -> int:
    """Day of week with 0 = Sunday, as in `Timing`."""
    return (moment.weekday() + 1) % 7


def _day_ok(t: Timing, weekday: int, day: int, month: int) -> bool:
    """`Timing.day_matches` on the parts of a day computed once per minute."""
    if not t.months >> month & 1:
        return False
    if t.days_or:
        return bool((t.daysofweek >> weekday | t.daysofmonth >> day) & 1)
    return bool(t.daysofweek >> weekday & t.daysofmonth >> day & 1)


def _due_at(
    minute: datetime, tasks: Mapping[int, Timing], wildcard_only: bool, zones: Container[str] | None
) -> list[int]:
    """Ids of the tasks matching one wall minute, sorted; only wildcard ones if asked;
    only those of `zones` unless it is None."""
    m, h, d, day, month = minute.minute, minute.hour, _weekday(minute), minute.day, minute.month
    # The minute and hour bits rule out nearly every task: the day is tested after them.
    if wildcard_only:
        due = [
            task_id
            for task_id, t in tasks.items()
            if t.minutes >> m & 1
            and t.hours >> h & 1
            and (t.minutes == FULL_MINUTES or t.hours == FULL_HOURS)
            and _day_ok(t, d, day, month)
            and (zones is None or t.zone in zones)
        ]
    else:
        due = [
            task_id
            for task_id, t in tasks.items()
            if t.minutes >> m & 1
            and t.hours >> h & 1
            and _day_ok(t, d, day, month)
            and (zones is None or t.zone in zones)
        ]
    due.sort()
    return due


def _due_over(
    last: datetime,
    current: datetime,
    tasks: Mapping[int, Timing],
    wildcard_all: bool,
    zones: Container[str] | None,
) -> tuple[tuple[datetime, int], ...]:
    """Runs for the minutes of (last, current], in minute then id order (of the tasks
    of `zones`, or all when it is None).

    With `wildcard_all` every task is considered for every minute (catch-up);
    without it wildcard tasks are considered for `current` only (forward jump).
    The minutes are cut into hours: within one hour the hour and day tests are the
    same, so a task costs two tests per hour plus a mask of its minutes, rather
    than one `matches` per minute.
    """
    # (hour, (weekday, day, month), mask of the span's minutes in this hour, its minute 0)
    hours: list[tuple[int, tuple[int, int, int], int, datetime]] = []
    minute = last + _MINUTE
    while minute <= current:
        top = minute.replace(minute=0)
        end = min(current, top + timedelta(minutes=59))
        mask = ((1 << (end.minute + 1)) - 1) ^ ((1 << minute.minute) - 1)
        hours.append((minute.hour, (_weekday(minute), minute.day, minute.month), mask, top))
        minute = end + _MINUTE
    now_hour, now_bit = current.hour, 1 << current.minute
    now_day = (_weekday(current), current.day, current.month)

    found: dict[datetime, list[int]] = {}
    for task_id, t in tasks.items():
        if zones is not None and t.zone not in zones:
            continue
        mins, hrs = t.minutes, t.hours
        if not wildcard_all and (mins == FULL_MINUTES or hrs == FULL_HOURS):
            if mins & now_bit and hrs >> now_hour & 1 and _day_ok(t, *now_day):
                found.setdefault(current, []).append(task_id)
            continue
        for hour, day, mask, top in hours:
            if not (hrs >> hour & 1 and mins & mask):
                continue
            if t.daysofmonth == FULL_DAYSOFMONTH and t.months == FULL_MONTHS:
                if not t.daysofweek >> day[0] & 1:  # the course's three fields: hot
                    continue
            elif not _day_ok(t, *day):
                continue
            bits = mins & mask
            while bits:
                low = bits & -bits
                bits ^= low
                found.setdefault(top.replace(minute=low.bit_length() - 1), []).append(task_id)
    return tuple((when, task_id) for when in sorted(found) for task_id in sorted(found[when]))


def plan(
    last: datetime | None,
    current: datetime,
    tasks: Mapping[int, Timing],
    zones: Container[str] | None = None,
) -> Plan:
    """Decide the runs for the real minute whose wall-clock reading is `current`.

    `last` is the `Plan.last` of the previous call, or None on the very first start
    (the current minute then counts as handled and nothing runs). Both are wall-clock
    minutes, naive; seconds, tzinfo and fold are ignored. The executor calls this once
    per real minute and zone, never twice for the same one. Only the tasks whose
    `Timing.zone` is in `zones` are planned (all of them when None): the clock read is
    that of one zone.
    """
    current = _wall(current)
    if last is None:
        return Plan((), current, "none")
    last = _wall(last)
    delta = (current - last) // _MINUTE
    if 1 <= delta <= CATCH_UP_LIMIT:
        if delta == 1:
            return Plan(
                tuple((current, i) for i in _due_at(current, tasks, False, zones)),
                current,
                "normal",
            )
        return Plan(_due_over(last, current, tasks, True, zones), current, "catch-up")
    if CATCH_UP_LIMIT < delta <= JUMP_LIMIT:
        return Plan(_due_over(last, current, tasks, False, zones), current, "forward-jump")
    if -JUMP_LIMIT <= delta <= 0:
        # The wall minutes up to `last` have run already: only wildcard tasks, which
        # run every minute of their hour or every hour, run again.
        runs = tuple((current, i) for i in _due_at(current, tasks, True, zones))
        return Plan(runs, last, "backward")
    runs = tuple((current, i) for i in _due_at(current, tasks, False, zones))
    return Plan(runs, current, "correction")


def missed(timing: Timing, last: datetime, current: datetime) -> bool:
    """True when `timing` matches a wall minute strictly between `last` and `current`
    (wall-clock minutes of one zone): a start that a daemon stopped, or a machine off,
    from `last` to `current` did not make. An @reboot task never misses one. A wall
    minute that a spring-forward gap skipped counts: the rule would have run it."""
    upcoming = timing.next_after(_wall(last))
    return upcoming is not None and upcoming < _wall(current)


@dataclass(frozen=True)
class ZoneGroup:
    """Tasks read in one time zone: `tz` (None: the daemon's, the process's local time),
    the `tasks` to look at, and the `zones` names whose tasks among them are read in
    `tz` (None: all of them)."""

    tz: tzinfo | None
    tasks: Mapping[int, Timing]
    zones: Container[str] | None = None


@dataclass(frozen=True)
class ZonePlan:
    """One zone's part of a real minute: its wall-clock reading and its `Plan`."""

    current: datetime
    plan: Plan


def plan_zones(
    previous: int | None,
    marks: Mapping[str, datetime],
    epoch_minute: int,
    groups: Mapping[str, ZoneGroup],
) -> dict[str, ZonePlan]:
    """`plan` for each zone group, for one real minute (an epoch minute).

    Each zone keeps its own wall-clock high-water mark in `marks`, so a DST change or a
    clock jump is judged in the zone that sees it. A zone without a mark (its first
    task is new) starts from the wall reading, in that zone, of the `previous` real
    minute handled: its tasks then run from the next minute on, as a new task does in
    any zone. With no `previous` (the very first start) nothing runs.
    """
    plans: dict[str, ZonePlan] = {}
    for name, group in groups.items():
        current = local_minute(epoch_minute, group.tz)
        last = marks.get(name)
        if last is None and previous is not None:
            last = local_minute(previous, group.tz)
        plans[name] = ZonePlan(current, plan(last, current, group.tasks, group.zones))
    return plans


def local_minute(epoch_minute: int, tz: tzinfo | None) -> datetime:
    """The naive wall-clock minute of an epoch minute (epoch seconds // 60) in `tz`.

    `tz` None is the process's local time zone. The fold is dropped, and so are the
    seconds of the odd historical offsets that are not whole minutes.
    """
    return _wall(datetime.fromtimestamp(epoch_minute * 60, tz))


def _offset(epoch_minute: int, tz: tzinfo | None) -> timedelta | None:
    """Wall clock minus UTC at an epoch minute; only ever compared for equality."""
    seconds = epoch_minute * 60
    if tz is None:
        return datetime.fromtimestamp(seconds) - (_EPOCH + timedelta(seconds=seconds))
    return datetime.fromtimestamp(seconds, tz).utcoffset()


def _next_change(start: int, stop: int, tz: tzinfo | None) -> int | None:
    """The first epoch minute in (start, stop] whose offset differs from `start`'s."""
    base = _offset(start, tz)
    low = start
    while low < stop:
        high = min(low + _PROBE, stop)
        if _offset(high, tz) != base:
            while high - low > 1:  # offset(low) == base != offset(high)
                middle = (low + high) // 2
                if _offset(middle, tz) == base:
                    low = middle
                else:
                    high = middle
            return high
        low = high
    return None


def next_runs(timing: Timing, after: int, count: int, tz: tzinfo | None) -> list[int]:
    """The epoch seconds of the next `count` run starts of `timing` after epoch second `after`.

    This is what a daemon running continuously in `tz` (None = local time) would do
    under the rule of `plan`: a fixed-time task whose wall minutes fall into a
    spring-forward gap runs at the first real minute after the gap, once per skipped
    matching minute (so an epoch second may repeat); in a fall-back repeated hour a
    fixed-time task runs the first time its wall minute occurs, a wildcard task both times.

    Real time is walked in stretches of constant UTC offset: within one, the next run
    is found with `Timing.next_after` on the wall clock and mapped back by the offset;
    the minute an offset changes is handed to `plan` itself, for this task alone.
    """
    if count <= 0 or not (timing.minutes and timing.hours) or timing.never_day():
        return []
    first = after // 60 + 1  # the first real minute starting strictly after `after`
    wildcard = timing.is_wildcard
    handled = first - 1 - _WARM_UP  # the last real minute handled
    wall = local_minute(handled, tz)  # its wall-clock minute
    last = wall  # the high-water mark: above `wall` while a fall-back hour repeats
    found: list[int] = []
    while len(found) < count:
        # The next real minute worth stopping at, assuming the offset does not change.
        steady = last == wall
        upcoming = timing.next_after(wall) if steady or wildcard else None
        if upcoming is not None and (steady or upcoming <= last):
            target, runs = handled + (upcoming - wall) // _MINUTE, 1
        elif steady:  # pragma: no cover - never matches: bits outside the fields' ranges
            return found
        else:
            # In a repeated hour a fixed-time task, or a wildcard one with no match
            # left in it, runs nothing until the wall clock passes `last` again.
            target, runs = handled + (last - wall) // _MINUTE, 0
        if target < first:
            # Still before `after`: go straight there. Without an offset change the
            # state stays steady, or leaves a repeated hour by itself (max below).
            target, runs = first - 1, 0
        change = _next_change(handled, target, tz)
        if change is None:
            found.extend([target * 60] * runs)
            wall += (target - handled) * _MINUTE
            last = max(last, wall)
            handled = target
            continue
        # Nothing runs before the change (target was the first run); then the minute
        # of the change is a clock jump: let the rule decide.
        last = max(last, wall + (change - 1 - handled) * _MINUTE)
        wall = local_minute(change, tz)
        step = plan(last, wall, {0: timing})  # the zone of `tz`, whatever its name
        if change >= first:
            found.extend([change * 60] * len(step.runs))
        last = step.last
        handled = change
    return found[:count]
