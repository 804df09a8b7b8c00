"""`cassini -n ID [-N COUNT]` and `cassini -l -v`: next start times and descriptions.

The start times follow DESIGN.md's clock-jump rule. The oracle here is written from
that rule alone: croniter lists the matching wall-clock minutes, and each is mapped to
real time by hand (a minute in a spring-forward gap starts at the end of the gap for a
fixed-time task and not at all for a wildcard one; a minute of a repeated fall-back
hour starts once for a fixed-time task, twice for a wildcard one).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from cassini import output
from cassini.cli import Invocation
from cassini.replies import Outcome, respond
from saturnd.protocol import (
    ErrorReply,
    ListExReply,
    ListExRequest,
    ListReply,
    ListRequest,
    TaskEntry,
)
from saturnd.task import Extras
from saturnd.timing import Timing
from tests.daemon_harness import Daemon

MakeDaemon = Callable[..., Daemon]

PARIS = ZoneInfo("Europe/Paris")
SPRING = int(datetime(2027, 3, 25, 12, tzinfo=PARIS).timestamp())  # Thursday before the change
FALL = int(datetime(2027, 10, 28, 12, tzinfo=PARIS).timestamp())  # Thursday before the change


def paris_time(seconds: int) -> time.struct_time:
    return datetime.fromtimestamp(seconds, PARIS).timetuple()


def timing_of(expression: str) -> Timing:
    minutes, hours, _, _, days = expression.split()
    return Timing.parse(minutes, hours, days)


# --- the oracle ------------------------------------------------------------------------


def _wall(seconds: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(seconds, tz).replace(tzinfo=None)


def _starts_of(wall: datetime, tz: ZoneInfo, wildcard: bool) -> list[int]:
    """The real start times of one matching wall-clock minute, under DESIGN.md's rule."""
    first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [int(first.timestamp())]
    if _wall(int(first.timestamp()), tz) == wall:  # it happens twice: fall back
        return (
            [int(first.timestamp()), int(second.timestamp())]
            if wildcard
            else [int(first.timestamp())]
        )
    if wildcard:  # in a spring-forward gap
        return []
    minute = min(int(first.timestamp()), int(second.timestamp())) // 60 * 60
    while _wall(minute, tz) < wall:  # the first real minute after the gap
        minute += 60
    return [minute]


def oracle(expression: str, after: int, count: int, tz: ZoneInfo) -> list[int]:
    """The next `count` starts after `after`, from croniter's wall-clock minutes."""
    minutes, hours, dom, _, dow = expression.split()
    wildcard = minutes == "*" or hours == "*"
    # cron's OR rule holds when neither day field starts with `*`; croniter would OR
    # `*/2` with a day of week too.
    day_or = not (dom.startswith("*") or dow.startswith("*"))
    matches = croniter(expression, _wall(after, tz) - timedelta(days=1), day_or=day_or)
    found: list[int] = []
    # Enough beyond `count` that a later wall minute cannot start earlier (at most the
    # second pass of a repeated hour).
    while len(found) < count + 130:
        wall = matches.get_next(datetime)
        found.extend(s for s in _starts_of(wall, tz, wildcard) if s // 60 > after // 60)
    return sorted(found)[:count]


def test_the_oracle_follows_the_examples_of_the_man_page() -> None:
    spring = oracle("30 2 * * *", SPRING, 5, PARIS)
    assert [datetime.fromtimestamp(s, PARIS).strftime("%d %H:%M %Z") for s in spring] == [
        "26 02:30 CET",
        "27 02:30 CET",
        "28 03:00 CEST",
        "29 02:30 CEST",
        "30 02:30 CEST",
    ]
    fall = oracle("30 2 * * *", FALL, 5, PARIS)
    assert [datetime.fromtimestamp(s, PARIS).strftime("%d %H:%M %Z") for s in fall][2:4] == [
        "31 02:30 CEST",
        "01 02:30 CET",
    ]


# --- pure: next_starts and the -n output ------------------------------------------------

EXPRESSIONS = [
    "30 2 * * *",  # fixed-time, in the gap and in the repeated hour
    "0,30 2 * * *",  # two minutes skipped by the gap: two starts at 03:00
    "59 1 * * *",  # just before the change
    "0 3 * * *",  # just after the gap
    "15 * * * *",  # wildcard (every hour)
    "* 2 * * *",  # wildcard (every minute of hour 2)
    "*/20 1-3 * * 0",  # fixed-time, Sundays only
    "0 9,14 * * 3",  # far from the change
    "* * * * *",
]


@pytest.mark.parametrize("start", [SPRING, FALL], ids=["spring", "fall"])
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_it_computes_next_starts_across_a_change_of_time(expression: str, start: int) -> None:
    count = 400 if expression.startswith("*") else 40
    expected = oracle(expression, start, count, PARIS)
    assert output.next_starts(timing_of(expression), start + 0.5, count, PARIS) == expected


def test_it_agrees_with_croniter_far_from_a_change() -> None:
    # Between the changes, croniter's own time-zone handling has no choice to make.
    start = datetime(2027, 11, 3, 10, 17, tzinfo=PARIS)
    for expression in ["*/7 3-5 * * 1-5", "0 0 * * 0", "5 * * * *", "0 9,14 * * 3"]:
        runs = croniter(expression, start)
        expected = [int(runs.get_next(datetime).timestamp()) for _ in range(50)]
        assert output.next_starts(timing_of(expression), start.timestamp(), 50, PARIS) == expected


def test_it_starts_in_the_next_minute() -> None:
    at_nine = int(datetime(2027, 1, 6, 9, 0, tzinfo=PARIS).timestamp())  # a Wednesday
    timing = timing_of("0 9 * * 3")
    # At 09:00:00 the run of 09:00 has started already: the next is a week later.
    for now in (at_nine - 1, at_nine, at_nine + 59):
        expected = at_nine if now < at_nine else at_nine + 7 * 86400
        assert output.next_starts(timing, now, 1, PARIS) == [expected]


def _next(task_id: int, count: int = 5, json: bool = False) -> Invocation:
    return Invocation(ListRequest(), mode="next", task_id=task_id, count=count, json=json)


TASKS = ListReply(
    (
        TaskEntry(3, timing_of("0,30 2 * * *"), (b"backup",)),
        TaskEntry(8, Timing(0, 1, 1), (b"never",)),  # no minute: it never runs
    )
)


def test_it_prints_next_starts_in_the_format_of_x() -> None:
    outcome = output.render(_next(3, 6), TASKS, paris_time, SPRING, tz=PARIS)
    assert outcome == Outcome(
        b"2027-03-26 02:00:00\n"
        b"2027-03-26 02:30:00\n"
        b"2027-03-27 02:00:00\n"
        b"2027-03-27 02:30:00\n"
        b"2027-03-28 03:00:00\n"
        b"2027-03-28 03:00:00\n"
    )


def test_it_prints_nothing_for_a_task_that_never_runs() -> None:
    assert output.render(_next(8), TASKS, paris_time, SPRING, tz=PARIS) == Outcome()


@pytest.mark.parametrize("reply", [TASKS, ListReply(())])
def test_it_says_when_no_task_has_the_id(reply: ListReply) -> None:
    outcome = output.render(_next(4), reply, paris_time, SPRING, tz=PARIS)
    assert outcome == Outcome(stderr="cassini: no task with id 4\n", status=1)


def test_it_shows_an_error_reply_as_before() -> None:
    outcome = respond(_next(4), ErrorReply(b"ZZ"), paris_time, SPRING)
    assert outcome == Outcome(stderr="cassini: the daemon answered error 5a 5a\n", status=1)


# --- descriptions ------------------------------------------------------------------------

PLAIN = [
    ("* * * * *", "Every minute"),
    ("* 9 * * *", "Every minute of hour 9"),
    ("* 9-17 * * 1-5", "Every minute of hours 9-17, on Monday to Friday"),
    ("5 * * * *", "At minute 5 of every hour"),
    ("0,30 * * * 0,6", "At minutes 0,30 of every hour, on Sunday and Saturday"),
    ("0 9 * * 3", "At 09:00, on Wednesday"),
    ("0 9,14 * * 3,5", "At 09:00 and 14:00, on Wednesday and Friday"),
    ("0,30 8-10 * * *", "At 08:00, 08:30, 09:00, 09:30, 10:00 and 10:30"),
    ("0-30 8-10 * * 1-3,5", "At minutes 0-30 of hours 8-10, on Monday to Wednesday and Friday"),
    ("59 23 * * 1,2", "At 23:59, on Monday and Tuesday"),
]


@pytest.mark.parametrize(("expression", "text"), PLAIN)
def test_it_describes_timings_without_cron_descriptor(expression: str, text: str) -> None:
    assert output.plain_description(timing_of(expression)) == text


def test_it_describes_a_timing_that_never_runs() -> None:
    assert output.plain_description(Timing(0, 1, 1)) == "Never"
    assert output.describe(Timing(1, 1, 0)) == "Never"
    # Imported from cron's ranges backwards (`mon-sun`, `mar-jan`): no value, never.
    assert output.describe(Timing(1, 1, months=0)) == "Never"
    assert output.describe(Timing(1, 1, daysofmonth=0)) == "Never"


@pytest.mark.parametrize(
    ("expression", "text"),
    [
        ("0,15,30,45 * * * *", "Every 15 minutes"),
        ("5,20,35,50 * * * *", "Every 15 minutes, starting at 5 minutes past the hour"),
        ("0,20,40 1-3 * * 0", "Every 20 minutes, between 01:00 and 03:59, only on Sunday"),
        (
            "5,10,15 9 * * *",
            "Every 5 minutes, minutes 5 through 15 past the hour, between 09:00 and 09:59",
        ),
        ("0,10,30 9 * * *", "At 0, 10, and 30 minutes past the hour, at 09:00"),
        ("0 9,11,13 * * 1-5", "Every 2 hours, between 09:00 and 13:59, Monday through Friday"),
    ],
)
def test_it_gives_cron_descriptor_steps_where_there_are(expression: str, text: str) -> None:
    assert output.describe(timing_of(expression)) == text


def test_it_describes_with_cron_descriptor_in_24_hour_time() -> None:
    assert output.describe(timing_of("0 9 * * 3")) == "At 09:00, only on Wednesday"
    assert output.describe(timing_of("* * * * *")) == "Every minute"
    assert output.describe(timing_of("30 14 * * 0")) == "At 14:30, only on Sunday"


def test_it_describes_in_english_whatever_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "fr_FR.UTF-8")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    assert output.describe(timing_of("0 9 * * 3")) == "At 09:00, only on Wednesday"


def test_it_falls_back_when_cron_descriptor_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cron_descriptor", None)  # import raises ImportError
    assert output.describe(timing_of("0 9 * * 3")) == "At 09:00, on Wednesday"


def test_it_falls_back_when_cron_descriptor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Callable[[str], str]:
        def describe(expression: str) -> str:
            raise RuntimeError("no")

        return describe

    monkeypatch.setattr(output, "_cron_descriptor", broken)
    assert output.describe(timing_of("0 9 * * 3")) == "At 09:00, on Wednesday"


def test_it_lists_verbosely_with_the_lines_of_l() -> None:
    reply = ListReply(
        (
            TaskEntry(0, timing_of("0 9,14 * * 3"), (b"echo", b"test-1")),
            TaskEntry(5, Timing(), (b"\xff",)),
            TaskEntry(8, Timing(0, 1, 1), (b"never",)),
        )
    )
    outcome = output.render(
        Invocation(ListRequest(), mode="verbose"), reply, paris_time, SPRING, tz=PARIS
    )
    assert outcome == Outcome(
        b"0: 0 9,14 3 echo test-1\n"
        b"    next run: 2027-03-31 09:00:00\n"
        b"    description: At 09:00 and 14:00, only on Wednesday\n"
        b"5: * * * \xff\n"
        b"    next run: 2027-03-25 12:01:00\n"
        b"    description: Every minute\n"
        b"8:  0 0 never\n"
        b"    next run: never\n"
        b"    description: Never\n"
    )


# --- the fields beyond the course's: day of month, month, zone, @reboot -------------------

NEW_YORK = ZoneInfo("America/New_York")

CALENDAR = [
    "0 3 1 * *",  # the first of every month
    "0 0 29 2 *",  # leap days only
    "0 20 1-7 * 5",  # cron's OR rule: days 1-7 and every Friday
    "0 0 */2 * 1",  # a star step: odd days that are Mondays (AND)
    "30 2 * 3,10 0",  # Sundays of the months of the changes, in the gap and the repeat
    "15 * 25-31 mar *",  # a wildcard task over the spring change
]


@pytest.mark.parametrize("start", [SPRING, FALL], ids=["spring", "fall"])
@pytest.mark.parametrize("expression", CALENDAR)
def test_it_computes_next_starts_of_days_of_month_and_months(expression: str, start: int) -> None:
    count = 200 if expression.startswith("15") else 12
    expected = oracle(expression, start, count, PARIS)
    assert output.next_starts(Timing.cron(expression), start + 0.5, count, PARIS) == expected


def _entry(task_id: int, schedule: str, zone: str = "") -> TaskEntry:
    return TaskEntry(task_id, Timing.cron(schedule, zone), (b"true",))


def test_it_reads_a_zoned_task_in_its_own_zone() -> None:
    # Shown in the process's local time (Paris), computed in New York's.
    reply = ListExReply((_entry(2, "0 9 * * *", "America/New_York"),))
    invocation = Invocation(ListExRequest(), mode="next", task_id=2, count=40)
    outcome = output.render(invocation, reply, paris_time, SPRING, tz=PARIS)
    expected = oracle("0 9 * * *", SPRING, 40, NEW_YORK)
    assert outcome.stdout.decode().splitlines() == [_local(s, PARIS) for s in expected]
    # New York changed on March 14, Paris on the 28th: 14:00, then 15:00 in Paris.
    assert outcome.stdout.decode().splitlines()[:4] == [
        "2027-03-25 14:00:00",
        "2027-03-26 14:00:00",
        "2027-03-27 14:00:00",
        "2027-03-28 15:00:00",
    ]


def test_it_says_when_an_at_reboot_task_starts() -> None:
    reply = ListExReply((_entry(5, "@reboot"),))
    invocation = Invocation(ListExRequest(), mode="next", task_id=5)
    outcome = output.render(invocation, reply, paris_time, SPRING, tz=PARIS)
    message = "cassini: task 5 runs at each start of the daemon (@reboot)\n"
    assert outcome == Outcome(b"", message, 0)
    json_invocation = Invocation(ListExRequest(), mode="next", task_id=5, json=True)
    outcome = output.render(json_invocation, reply, paris_time, SPRING, tz=PARIS)
    assert outcome == Outcome(b"[]\n", message, 0)


def test_it_says_when_a_zone_is_unknown_here() -> None:
    # A zone the daemon knew and this machine does not: no times rather than wrong ones.
    reply = ListExReply((TaskEntry(1, Timing(zone="Mars/Olympus"), (b"true",)),))
    outcome = output.render(
        Invocation(ListExRequest(), mode="next", task_id=1), reply, paris_time, SPRING, tz=PARIS
    )
    assert outcome == Outcome(b"", "cassini: task 1 runs unknown time zone 'Mars/Olympus'\n", 1)


CALENDAR_PLAIN = [
    ("0 3 1 * *", "At 03:00, on day 1 of the month"),
    ("0 20 1-7 * 5", "At 20:00, on Friday or on days 1-7 of the month"),
    (
        "0 0 */2 * 1",
        "At 00:00, on Monday, if it is days 1,3,5,7,9,11,13,15,17,19,21,23,25,"
        "27,29,31 of the month",
    ),
    ("0 0 29 2 *", "At 00:00, on day 29 of the month, in February"),
    ("0 9 * 1-3,12 *", "At 09:00, in January to March and December"),
    ("@reboot", "At each start of the daemon (@reboot)"),
]


@pytest.mark.parametrize(("expression", "text"), CALENDAR_PLAIN)
def test_it_describes_days_of_month_and_months_plainly(expression: str, text: str) -> None:
    assert output.plain_description(Timing.cron(expression)) == text


def test_it_describes_days_of_month_months_and_zones_with_cron_descriptor() -> None:
    assert output.describe(Timing.cron("0 3 1 * *")) == "At 03:00, on day 1 of the month"
    described = output.describe(Timing.cron("0 20 1-7 * 5"))
    assert "between day 1 and 7 of the month" in described and "Friday" in described
    assert output.describe(Timing.cron("0 9 * * *", "Asia/Tokyo")).endswith(" (Asia/Tokyo time)")
    assert output.describe(Timing.cron("@reboot")) == "At each start of the daemon (@reboot)"


def test_it_lists_the_new_fields_verbosely() -> None:
    reply = ListExReply(
        (
            TaskEntry(
                0,
                Timing.cron("0 9 1 * *", "America/New_York"),
                (b"report",),
                Extras(((b"PATH", b"/opt/bin"), (b"X", b"a\nb")), b"in", b""),
            ),
            _entry(1, "@reboot"),
        )
    )
    outcome = output.render(
        Invocation(ListExRequest(), mode="verbose"), reply, paris_time, SPRING, tz=PARIS
    )
    assert outcome == Outcome(
        b"0: 0 9 * dom=1 tz=America/New_York report\n"
        b"    next run: 2027-04-01 15:00:00\n"
        b"    description: At 09:00, on day 1 of the month (America/New_York time)\n"
        b"    env: PATH=/opt/bin\n"
        b"    env: X=a\\nb\n"
        b"    stdin: in\n"
        b"    mailto: \n"
        b"1: - - - @reboot true\n"
        b"    next run: at each start of the daemon (@reboot)\n"
        b"    description: At each start of the daemon (@reboot)\n"
    )


# --- end to end --------------------------------------------------------------------------


def _stable(run: Callable[[], Any]) -> tuple[Any, float]:
    """Run `run` within one minute of the real clock; its result and the time before it."""
    for _ in range(3):
        before = time.time()
        result = run()
        if int(before) // 60 == int(time.time()) // 60:
            return result, before
    raise AssertionError("three attempts straddled a minute boundary")


def _lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def _local(seconds: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(seconds, tz).strftime("%Y-%m-%d %H:%M:%S")


def test_it_prints_next_starts_across_changes_of_time_end_to_end(
    make_daemon: MakeDaemon,
) -> None:
    # A year of a daily task, and of a wildcard one, in Paris: both changes of time.
    daemon = make_daemon(tz="Europe/Paris")
    cases = [
        ("30 2 * * *", daemon.create("-m", "30", "-H", "2", "true"), 400),
        ("0,30 2 * * 0", daemon.create("-m", "0,30", "-H", "2", "-d", "0", "true"), 120),
        ("15 * * * 0", daemon.create("-m", "15", "-d", "sun", "true"), 1000),
    ]
    for expression, task_id, count in cases:
        args = ("-n", str(task_id), "-N", str(count))
        result, before = _stable(lambda args=args: daemon.cassini(*args))  # type: ignore[misc]
        expected = oracle(expression, int(before), count, PARIS)
        assert _lines(result.stdout) == [_local(s, PARIS) for s in expected]
        # Both changes of time are in there.
        years = {_local(s, PARIS)[:7] for s in expected}
        assert {"2027-03", "2027-10"} <= years or expression.startswith("15")


def test_it_prints_five_next_starts_by_default(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(tz="America/New_York")
    task_id = daemon.create("-m", "*/10", "-H", "9-17", "-d", "1-5", "true")
    result, before = _stable(lambda: daemon.cassini("-n", str(task_id)))
    expected = oracle("*/10 9-17 * * 1-5", int(before), 5, ZoneInfo("America/New_York"))
    assert _lines(result.stdout) == [_local(s, ZoneInfo("America/New_York")) for s in expected]
    assert result.stderr == b""


def test_it_refuses_an_unknown_task_end_to_end(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.create("true")
    result = daemon.cassini("-n", "1", check=False)
    assert (result.stdout, result.stderr, result.returncode) == (
        b"",
        b"cassini: no task with id 1\n",
        1,
    )


def test_it_lists_verbosely_end_to_end(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(tz="Europe/Paris")
    daemon.create("-m", "0", "-H", "9,14", "-d", "3", "echo", "test-1")
    daemon.create("-m", "*/15", "printf", "%s\\n", os.fsdecode(b"caf\xc3\xa9 \xff"))
    plain = daemon.cassini("-l").stdout
    verbose, before = _stable(lambda: daemon.cassini("-l", "-v", "-v").stdout)
    lines = verbose.split(b"\n")
    # Every third line is the line of -l, byte for byte.
    assert b"".join(line + b"\n" for line in lines[0:-1:3]) == plain
    starts = [oracle(e, int(before), 1, PARIS)[0] for e in ("0 9,14 * * 3", "*/15 * * * *")]
    assert lines[1::3] == [f"    next run: {_local(s, PARIS)}".encode() for s in starts]
    assert lines[2::3] == [
        b"    description: At 09:00 and 14:00, only on Wednesday",
        b"    description: Every 15 minutes",
    ]
    # `-vv` alone lists verbosely too.
    assert _stable(lambda: daemon.cassini("-vv").stdout)[0] == verbose


def test_it_lists_verbosely_without_cron_descriptor(
    make_daemon: MakeDaemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A module of that name that cannot be imported, first on the path.
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "cron_descriptor.py").write_text("raise ImportError('hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden))
    daemon = make_daemon(root=tmp_path)
    daemon.create("-m", "0", "-H", "9", "-d", "3", "true")
    result = daemon.cassini("-l", "-v", "-v")
    assert result.stdout.endswith(b"    description: At 09:00, on Wednesday\n")
    assert result.stderr == b""
