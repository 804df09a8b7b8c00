"""Writing systemd user units for saturnd's tasks, sans I/O: `cassini --export-systemd DIR`.

This module owns `export`: tasks -> the files of DIR (`saturnd-task-ID.timer` and
`.service` per task, `saturnd-task-ID-onfailure.service` for an on-failure command, a
README saying how to enable them) and the warning lines, one per task and field that
systemd cannot say as saturnd means it (cassini.exportfields lists which fields those
are). Nothing is dropped silently: a task that cannot be written at all is a warning too.

How each field is said (systemd 252's syntax, checked by `systemd-analyze verify`):
- the schedule: `OnCalendar=DOW *-MONTHS-DAYS HOURS:MINUTES:00 ZONE` with the sets as
  lists of values and `A..B` ranges (equal meanings, not the crontab's text); cron's OR
  of the day fields is two OnCalendar= lines (one per day field); AccuracySec=1s, since
  systemd's default of a minute would move starts by up to a minute;
- argv: ExecStart= with each word double-quoted (`\\`, `\"`, C escapes for control
  bytes and bytes that are not UTF-8; `%` -> `%%`, `$` -> `$$`). A program name without
  a `/` goes through `/usr/bin/env`, which looks for it in the task's PATH, as saturnd
  does (ExecStart= alone would use systemd's own search path);
- the environment: Environment= SHELL=/bin/sh and PATH=/usr/bin:/bin (saturnd's), then
  the task's variables in order; a task's HOME is its WorkingDirectory= (`-`: a missing
  one is not fatal, as saturnd falls back to `/`); UMask=0022;
- stdin: StandardInput=data with StandardInputData= (base64, so any byte is exact);
- daylight saving: saturnd's rule (saturnd.schedule) and systemd's part in a spring-
  forward gap and a repeated fall-back hour; `dst_difference` says, from the zone's
  changes in the year after `now`, whether a task meets either (a `zone` warning).

Rules: pure (tasks in, bytes and strings out); file names and their order are stable, so
exporting the same tasks twice writes the same files.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, tzinfo

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from saturnd.messages import TaskEntry
    from saturnd.timing import Timing

__all__ = [
    "README",
    "calendars",
    "changes",
    "dst_difference",
    "export",
    "export_task",
    "quote",
    "unit_name",
]

README = "README"
"""The name of the file in DIR that says how to enable the units."""

_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_STOP_GRACE = 10  # seconds between SIGTERM and SIGKILL, saturnd.runpolicy.STOP_GRACE
_BASE_ENV = (("SHELL", "/bin/sh"), ("PATH", "/usr/bin:/bin"))  # saturnd.taskenv's
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def unit_name(task_id: int) -> str:
    """The stem of a task's unit names."""
    return f"saturnd-task-{task_id}"


def _runs(bits: int, low: int, high: int, name: tuple[str, ...] | None = None) -> str:
    """The values of `bits` in [low, high] as systemd writes a list: `1,3..5`."""
    parts: list[str] = []
    value = low
    while value <= high:
        if bits >> value & 1:
            start = value
            while value + 1 <= high and bits >> (value + 1) & 1:
                value += 1
            first, last = (name[start], name[value]) if name else (f"{start:02d}", f"{value:02d}")
            parts.append(first if start == value else f"{first}..{last}")
        value += 1
    return ",".join(parts)


def _spec(timing: Timing, days_of_week: bool, days_of_month: bool) -> str:
    """One OnCalendar= expression; each day set is written only when asked for and
    restricted (a full set is systemd's default: any day)."""
    from saturnd.timing import (
        FULL_DAYSOFMONTH,
        FULL_DAYSOFWEEK,
        FULL_HOURS,
        FULL_MINUTES,
        FULL_MONTHS,
    )

    words = []
    if days_of_week and timing.daysofweek != FULL_DAYSOFWEEK:
        words.append(_runs(timing.daysofweek, 0, 6, _DAYS))
    months = "*" if timing.months == FULL_MONTHS else _runs(timing.months, 1, 12)
    full_days = not days_of_month or timing.daysofmonth == FULL_DAYSOFMONTH
    days = "*" if full_days else _runs(timing.daysofmonth, 1, 31)
    words.append(f"*-{months}-{days}")
    hours = "*" if timing.hours == FULL_HOURS else _runs(timing.hours, 0, 23)
    minutes = "*" if timing.minutes == FULL_MINUTES else _runs(timing.minutes, 0, 59)
    words.append(f"{hours}:{minutes}:00")
    if timing.zone:
        words.append(timing.zone)
    return " ".join(words)


def calendars(timing: Timing) -> list[str]:
    """The OnCalendar= expressions of `timing` (two for cron's OR day rule), or none
    when it never runs by the clock (@reboot, or an empty set)."""
    if timing.reboot or timing.never_day() or not (timing.minutes and timing.hours):
        return []
    if timing.days_or:
        return [_spec(timing, False, True), _spec(timing, True, False)]
    return [_spec(timing, True, True)]


def changes(start: int, tz: tzinfo | None) -> Iterator[tuple[int, int]]:
    """(epoch minute, offset change in minutes) of each change of `tz`'s UTC offset in
    the year after epoch minute `start`, probed hourly (no zone changes twice in an
    hour), then found to the minute by halving."""
    from saturnd.schedule import local_minute

    def offset(minute: int) -> int:
        return int((local_minute(minute, tz) - datetime(1970, 1, 1)).total_seconds()) // 60 - minute

    hour = start
    for _ in range(366 * 24):
        low, high = hour, hour + 60
        if offset(low) != offset(high):
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == offset(low) else (low, middle)
            yield high, offset(high) - offset(low)
        hour += 60


def dst_difference(
    timing: Timing, tz: tzinfo | None, offset_changes: Iterable[tuple[int, int]]
) -> str | None:
    """How saturnd and systemd part at `offset_changes` (`changes`: the daylight-saving
    changes of `tz`, None: local time) for `timing`, or None when they do not.

    saturnd runs a fixed-time start that a spring-forward gap skips just after the gap,
    systemd skips it; in a repeated fall-back hour saturnd runs a wildcard task's
    starts both times, systemd once (saturnd.schedule's rule, checked by the tests
    against `systemd-analyze calendar`).
    """
    from saturnd.schedule import local_minute

    if timing.reboot:
        return None
    for minute, change in offset_changes:
        wall = local_minute(minute, tz)
        if change > 0 and not timing.is_wildcard:
            first = wall - timedelta(minutes=change)  # the first wall minute skipped
            upcoming = timing.next_after(first - timedelta(minutes=1))
            if upcoming is not None and upcoming < wall:
                return f"systemd skips the start at {upcoming:%Y-%m-%d %H:%M} (a DST gap)"
        if change < 0 and timing.is_wildcard:
            upcoming = timing.next_after(wall - timedelta(minutes=1))
            if upcoming is not None and upcoming < wall - timedelta(minutes=change):
                return f"systemd runs the repeated {upcoming:%Y-%m-%d %H:%M} once (DST)"
    return None


def _escape(text: str) -> str:
    """`text` for inside systemd's double quotes (specifiers not yet escaped)."""
    out = []
    for char in text:
        if char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out).replace("%", "%%")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def quote(word: bytes) -> str:
    """One ExecStart= word that systemd reads back as `word`: quoted, with `%` and `$`
    doubled (systemd expands specifiers and $VARIABLES in command lines)."""
    return '"' + _escape(_text(word)).replace("$", "$$") + '"'


def _env_quote(name: str, value: str) -> str:
    """One Environment= assignment (no `$` expansion there, specifiers only)."""
    return '"' + _escape(f"{name}={value}") + '"'


def _env_problem(name: bytes, value: bytes) -> str | None:
    """Why systemd 252 refuses the assignment name=value, or None."""
    text = _text(name)
    if not (text[:1].isascii() and (text[0].isalpha() or text[0] == "_")):
        return f"variable {text!r}: systemd takes only names like [A-Za-z_][A-Za-z0-9_]*"
    if not all(c.isascii() and (c.isalnum() or c == "_") for c in text):
        return f"variable {text!r}: systemd takes only names like [A-Za-z_][A-Za-z0-9_]*"
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"variable {text}: systemd takes only UTF-8 values"
    if any((ord(c) < 0x20 and c not in "\t\n") or ord(c) == 0x7F for c in decoded):
        return f"variable {text}: systemd takes no control character but tab and newline"
    return None


def _exec_words(argv: tuple[bytes, ...]) -> list[str]:
    """ExecStart='s words: a program found by PATH goes through /usr/bin/env."""
    if argv[0].startswith(b"/"):
        return [quote(word) for word in argv]
    return ['"/usr/bin/env"', *(quote(word) for word in argv)]


def export_task(task: TaskEntry, dst: str | None = None) -> tuple[dict[str, str], list[str]]:
    """One task's unit files (name -> text) and its warnings, each naming the field;
    `dst` is `dst_difference`'s answer for it.

    No files (and a warning) when systemd cannot run it at all.
    """
    stem = unit_name(task.task_id)
    extras = task.extras
    warnings: list[str] = []

    def warn(field: str, why: str) -> None:
        warnings.append(f"task {task.task_id}: {field}: {why}")

    timer = ["[Unit]", f"Description=saturnd task {task.task_id} (cassini --export-systemd)", ""]
    timer.append("[Timer]")
    specs = calendars(task.timing)
    if task.timing.reboot:
        timer.append("OnStartupSec=0")
        warn(
            "reboot",
            "@reboot is OnStartupSec=0: once per start of the user's systemd (first login,"
            " or boot with lingering), and at once on `enable --now`",
        )
    elif not specs:
        timing = task.timing
        field = next(
            (name for name in ("minutes", "hours", "months") if not getattr(timing, name)),
            "daysofmonth",  # days that no month has (31 February)
        )
        warn(field, "the task never runs by the clock: not exported")
        return {}, warnings
    timer.extend(f"OnCalendar={spec}" for spec in specs)
    if dst:
        warn("zone", dst)
    timer.append("AccuracySec=1s")
    if extras.jitter:
        timer.append(f"RandomizedDelaySec={extras.jitter}s")
    if extras.catch_up and specs:  # an @reboot start is never missed (saturnd.schedule)
        timer.append("Persistent=true")
    timer += ["", "[Install]", "WantedBy=timers.target", ""]

    service = ["[Unit]", f"Description=saturnd task {task.task_id}"]
    if extras.on_failure:
        service.append(f"OnFailure={stem}-onfailure.service")
    service += ["", "[Service]", "Type=oneshot"]
    service.append("ExecStart=" + " ".join(_exec_words(task.argv)))
    if b"/" not in task.argv[0] and b"=" in task.argv[0]:
        warn("argv", "/usr/bin/env takes a program name with a `=` for a variable")
    environment = list(_BASE_ENV)
    for name, value in extras.env:
        problem = _env_problem(name, value)
        if problem:
            warn("env", f"{problem}: left out")
        else:
            environment.append((_text(name), _text(value)))
    service.append("Environment=" + " ".join(_env_quote(n, v) for n, v in environment))
    home = extras.variables().get(b"HOME")
    if home is not None and home.startswith(b"/"):
        # WorkingDirectory= takes the path as written (specifiers aside): no quotes or
        # escapes to say a backslash, a quote or a control character with.
        if _escape(_text(home)).replace("%%", "%") == _text(home):
            service.append("WorkingDirectory=-" + _escape(_text(home)))
        else:
            warn("env", "HOME cannot be a WorkingDirectory= of systemd: the home is used")
    service.append("UMask=0022")
    if extras.stdin:
        service.append("StandardInput=data")
        service.append("StandardInputData=" + base64.b64encode(extras.stdin).decode("ascii"))
    if extras.timeout:
        service.append(f"TimeoutStartSec={extras.timeout}s")
        service.append(f"TimeoutStopSec={_STOP_GRACE}s")
    service.append("")

    files = {f"{stem}.timer": "\n".join(timer), f"{stem}.service": "\n".join(service)}
    if extras.on_failure:
        files[f"{stem}-onfailure.service"] = _on_failure_unit(task, environment)
        warn(
            "on_failure",
            "systemd gives the command $MONITOR_SERVICE_RESULT, $MONITOR_EXIT_CODE and"
            " $MONITOR_EXIT_STATUS, not saturnd's SATURND_EXIT_CODE, SATURND_OUTCOME,"
            " SATURND_START, SATURND_STDOUT, SATURND_STDERR",
        )
    if not extras.no_overlap:
        warn(
            "no_overlap",
            "systemd never starts a running service again: a start while the previous"
            " run goes on is skipped (as with --no-overlap), cron's overlap cannot be said",
        )
    if extras.mailto:
        warn("mailto", "systemd mails nobody: the output goes to the journal")
    if extras.paused:
        warn("paused", "the task is paused: its timer is written but not enabled")
    return files, warnings


def _on_failure_unit(task: TaskEntry, environment: list[tuple[str, str]]) -> str:
    """The service OnFailure= starts: the on-failure command under /bin/sh -c."""
    env = [*environment, ("SATURND_TASK_ID", str(task.task_id))]
    lines = [
        "[Unit]",
        f"Description=saturnd task {task.task_id}: on failure",
        "",
        "[Service]",
        "Type=oneshot",
        f'ExecStart="/bin/sh" "-c" {quote(task.extras.on_failure)}',
        "Environment=" + " ".join(_env_quote(n, v) for n, v in env),
        "UMask=0022",
        "",
    ]
    return "\n".join(lines)


def export(
    tasks: Iterable[TaskEntry], now: float | None = None, tz: tzinfo | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """Every task's files plus the README (name -> bytes), and all warnings in task
    order. A paused task's timer is not in the README's enable line. With `now`, the
    daylight-saving changes of the year after it are checked, in each task's zone (`tz`
    for a task without one, None: local time)."""
    from cassini.output import task_zone

    files: dict[str, bytes] = {}
    warnings: list[str] = []
    enabled: list[str] = []
    paused: list[str] = []
    zones: dict[str, list[tuple[int, int]]] = {}  # the year's changes, once per zone
    for task in sorted(tasks, key=lambda entry: entry.task_id):
        dst = None
        if now is not None and not task.timing.reboot:
            try:
                zone = task_zone(task.timing, tz)
            except LookupError as error:
                dst = f"{error} here: its daylight-saving changes are not checked"
            else:
                if task.timing.zone not in zones:
                    zones[task.timing.zone] = list(changes(int(now) // 60, zone))
                dst = dst_difference(task.timing, zone, zones[task.timing.zone])
        written, said = export_task(task, dst)
        warnings += said
        for name, text in written.items():
            files[name] = text.encode("utf-8", "surrogateescape")
        if written:
            timer = f"{unit_name(task.task_id)}.timer"
            (paused if task.extras.paused else enabled).append(timer)
    files[README] = _readme(enabled, paused).encode()
    return files, warnings


def _readme(enabled: list[str], paused: list[str]) -> str:
    lines = [
        "saturnd's tasks as systemd user units, written by cassini --export-systemd.",
        "",
        "Install and start them (each task: a .timer starting its .service):",
        "",
        "    mkdir -p ~/.config/systemd/user",
        "    cp saturnd-task-* ~/.config/systemd/user/",
        "    systemctl --user daemon-reload",
    ]
    lines += [f"    systemctl --user enable --now {timer}" for timer in enabled]
    if paused:
        lines += ["", "Paused in saturnd, so not enabled here (enable them to resume):", ""]
        lines += [f"    {timer}" for timer in paused]
    lines += [
        "",
        "Then stop saturnd's copies (cassini -r ID), or each task runs twice.",
        "Their output goes to the journal: journalctl --user -u saturnd-task-ID.service",
        "Without lingering (loginctl enable-linger) they run only while you are logged in.",
        "",
    ]
    return "\n".join(lines)
