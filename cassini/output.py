"""cassini's newer outputs, sans I/O: `-n`, `-l -v`, `--json` and `--export`.

This module owns:
- `render`: an `Invocation` whose mode or `--json` asks for more than PROTOCOL.md's
  output, and its reply -> an `Outcome`;
- `next_starts`: the next start times of a timing, after DESIGN.md's clock-jump and
  daylight-saving rule;
- `describe`: a timing in words, for `-l -v`.

Rules:
- Pure: no file descriptor and no clock. `now` and the local-time function come in as
  arguments. A task's fields are read in its own zone (`--tz`, `task_zone`), else in the
  process's (`tz` None), the one `localtime` shows times in: the daemon's, when both
  run with the same `TZ`. Start times are always shown in the process's local time, like
  `-x`. An @reboot task has no start time to show: `-n` says so on stderr.
- Start times come from `saturnd.schedule.next_runs`, the daemon's own rule, so `-n`
  says what the daemon will do: a wall-clock minute skipped by a spring-forward change
  runs at the first minute after the gap (the same second may then appear more than
  once); in a repeated fall-back hour a fixed-time task starts once, a wildcard one at
  every matching minute of both passes.
- JSON: a task carries the course's fields (`minutes`, `hours`, `daysofweek`, `argv`),
  then `daysofmonth`, `months` (canonical text), `days_or`, `reboot`, `zone` (null: the
  daemon's), `env` (a list of {name, value}, in order), `stdin` and `mailto` (null:
  not set), then the run policies `timeout` and `jitter` (seconds, 0: none),
  `no_overlap`, `catch_up`, `on_failure` (null: none) and `paused`. One document per
  call, on one line, ASCII only (`ensure_ascii`), so it is valid
  UTF-8 whatever bytes the commands hold. An argument is decoded as UTF-8; a byte that
  is not part of valid UTF-8 becomes the lone surrogate U+DC80 + byte (Python's
  `surrogateescape`, written `\\udcXX`), so the exact bytes can be recovered. Errors
  stay one line of text on stderr and print no JSON.
- Descriptions use `cron-descriptor` when it is installed, in English and 24-hour time
  like the rest of cassini's output. (Its translations take day names from the C
  library's LC_TIME, which cassini does not set: a French sentence would name the day
  "Wednesday".) When it is missing or fails, a plain English description of our own
  is used: `-l -v` never fails because of it.
- Imports: this module loads only for the invocations that need it; `json`,
  `saturnd.schedule` and `cron_descriptor` load inside the functions that use them.
"""

from __future__ import annotations

import itertools

from cassini.replies import Outcome, escape, local_text, out_of_range, task_line
from cassini.replies import render as render_plain

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import tzinfo
    from typing import Any

    from cassini.cli import Invocation, LocalTime
    from saturnd.protocol import (
        ListExReply,
        ListReply,
        Reply,
        TaskEntry,
        TimesExitcodesReply,
        VersionReply,
    )
    from saturnd.task import Extras
    from saturnd.timing import Timing

__all__ = [
    "describe",
    "next_starts",
    "plain_description",
    "render",
    "task_json",
    "task_starts",
    "task_zone",
]

_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_REBOOT_TEXT = "At each start of the daemon (@reboot)"
# At most this many "HH:MM" times are listed one by one in a plain description.
_MAX_LISTED_TIMES = 6


# --- next start times --------------------------------------------------------------


def next_starts(timing: Timing, now: float, count: int, tz: tzinfo | None = None) -> list[int]:
    """The epoch seconds of the next `count` starts of `timing` after `now`.

    A run starts at second 0 of its minute, so a minute that has begun is over: the
    first start is in a later minute. `tz` None is the process's local time zone.
    """
    from saturnd.schedule import next_runs

    return next_runs(timing, int(now // 1), count, tz)


def task_zone(timing: Timing, default: tzinfo | None) -> tzinfo | None:
    """The zone a task's fields are read in: its own (`--tz`), else `default`.

    A zone this machine does not know (the daemon's database may differ) raises
    `LookupError`; `zoneinfo` is imported only for a zoned task.
    """
    if not timing.zone:
        return default
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(timing.zone)
    except (ValueError, LookupError, OSError):
        raise LookupError(f"unknown time zone {timing.zone!r}") from None


def task_starts(timing: Timing, now: float, count: int, tz: tzinfo | None) -> list[int] | str:
    """`next_starts` in the task's own zone, or why there are none to show (a string)."""
    if timing.reboot:
        return "at each start of the daemon (@reboot)"
    try:
        zone = task_zone(timing, tz)
    except LookupError as error:
        return str(error)
    return next_starts(timing, now, count, zone)


# --- descriptions -------------------------------------------------------------------


def _values(bits: int, high: int) -> list[int]:
    return [value for value in range(high + 1) if bits >> value & 1]


def _join(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _day_runs(bits: int, names: tuple[str, ...] = _DAY_NAMES, low: int = 0) -> list[str]:
    """Values named by `names[value - low]`, as maximal runs: `Monday to Friday`, `Sunday`."""
    runs: list[str] = []
    high = low + len(names) - 1
    day = low
    while day <= high:
        if bits >> day & 1:
            start = day
            while day < high and bits >> (day + 1) & 1:
                day += 1
            name = names[start - low]
            if day == start:
                runs.append(name)
            elif day == start + 1:
                runs.extend((name, names[day - low]))
            else:
                runs.append(f"{name} to {names[day - low]}")
        day += 1
    return runs


def _calendar_text(timing: Timing) -> str:
    """The day-of-month and month part of a plain description (empty when both are *)."""
    from saturnd.timing import FULL_DAYSOFMONTH, FULL_DAYSOFWEEK, FULL_MONTHS, format_field

    text = ""
    if timing.daysofmonth != FULL_DAYSOFMONTH:
        days = format_field("daysofmonth", timing.daysofmonth)
        plural = "s" if len(_values(timing.daysofmonth, 31)) > 1 else ""
        if timing.days_or:
            text += f" or on day{plural} {days} of the month"
        elif timing.daysofweek & FULL_DAYSOFWEEK != FULL_DAYSOFWEEK:
            text += f", if it is day{plural} {days} of the month"
        else:
            text += f", on day{plural} {days} of the month"
    if timing.months != FULL_MONTHS:
        text += ", in " + _join(_day_runs(timing.months, _MONTH_NAMES, 1))
    return text


def plain_description(timing: Timing) -> str:
    """A timing in plain English, without cron-descriptor: `At 09:00, on Wednesday`."""
    if timing.reboot:
        return _REBOOT_TEXT
    if not all((timing.daysofmonth, timing.months)):
        return "Never"  # a set with no value (cron's `5-3`)
    return _plain_clock(timing) + _calendar_text(timing) + _zone_text(timing)


def _zone_text(timing: Timing) -> str:
    return f" ({timing.zone} time)" if timing.zone else ""


def _plain_clock(timing: Timing) -> str:
    """The minutes, hours and days of week of a plain description."""
    from saturnd.timing import FULL_DAYSOFWEEK, FULL_HOURS, FULL_MINUTES, format_field

    minutes, hours = _values(timing.minutes, 59), _values(timing.hours, 23)
    if not (minutes and hours and timing.daysofweek & FULL_DAYSOFWEEK):
        return "Never"
    minutes_text = format_field("minutes", timing.minutes)
    hours_text = format_field("hours", timing.hours)
    minute_word = "minute" if len(minutes) == 1 else "minutes"
    if timing.minutes == FULL_MINUTES and timing.hours == FULL_HOURS:
        when = "Every minute"
    elif timing.minutes == FULL_MINUTES:
        when = f"Every minute of hour{'s' if len(hours) > 1 else ''} {hours_text}"
    elif timing.hours == FULL_HOURS:
        when = f"At {minute_word} {minutes_text} of every hour"
    elif len(minutes) * len(hours) <= _MAX_LISTED_TIMES:
        when = "At " + _join([f"{h:02d}:{m:02d}" for h in hours for m in minutes])
    else:
        when = f"At {minute_word} {minutes_text} of hours {hours_text}"
    if timing.daysofweek & FULL_DAYSOFWEEK == FULL_DAYSOFWEEK:
        return when
    return f"{when}, on {_join(_day_runs(timing.daysofweek))}"


def _step_text(bits: int, high: int) -> str:
    """A field for cron-descriptor: canonical, or with a step when the values have one.

    `0,15,30,45` is described "At 0, 15, 30, and 45 minutes past the hour", `*/15`
    "Every 15 minutes": the step form is what people write and read.
    """
    from saturnd.timing import format_field

    values = _values(bits, high)
    canonical = format_field("minutes" if high == 59 else "hours", bits)
    if len(values) < 3 or canonical == "*":
        return canonical
    step = values[1] - values[0]
    if step < 2 or any(b - a != step for a, b in itertools.pairwise(values)):
        return canonical
    if values[-1] + step <= high:
        return f"{values[0]}-{values[-1]}/{step}"
    return f"*/{step}" if values[0] == 0 else f"{values[0]}/{step}"


def _cron_descriptor() -> Callable[[str], str] | None:
    """cron-descriptor's describer for a crontab expression, or None when not installed."""
    try:
        from cron_descriptor import ExpressionDescriptor, Options
    except ImportError:
        return None
    # The locale is given: left out, cron-descriptor guesses it and warns when unset.
    try:
        options = Options(use_24hour_time_format=True, locale_code="en_US")
    except TypeError:  # versions before 2.0 take no arguments
        options = Options()
        options.use_24hour_time_format = True
        options.locale_code = "en_US"

    def describe(expression: str) -> str:
        return str(ExpressionDescriptor(expression, options).get_description())

    return describe


def describe(timing: Timing) -> str:
    """A timing in words, for people: cron-descriptor's when possible, else our own."""
    return _Describer()(timing)


class _Describer:
    """Describes timings one after the other, loading cron-descriptor once."""

    __slots__ = ("_cache", "_describe", "_loaded")

    def __init__(self) -> None:
        self._loaded = False
        self._describe: Callable[[str], str] | None = None
        self._cache: dict[Timing, str] = {}

    def __call__(self, timing: Timing) -> str:
        cached = self._cache.get(timing)
        if cached is None:
            cached = self._cache[timing] = self._compute(timing)
        return cached

    def _compute(self, timing: Timing) -> str:
        if timing.reboot:
            return _REBOOT_TEXT
        sets = (timing.minutes, timing.hours, timing.daysofweek, timing.daysofmonth, timing.months)
        if not all(sets):  # a set with no value (cron's `5-3`): it never runs
            return plain_description(timing)
        try:
            # The day and month fields as cron reads them (the OR rule included).
            _, _, dom, month, days = timing.format_cron().split(" ")
        except ValueError:  # no crontab text says it: our own words do
            return plain_description(timing)
        minutes, hours = _step_text(timing.minutes, 59), _step_text(timing.hours, 23)
        if not (minutes and hours and days and dom and month):
            return plain_description(timing)  # a field with no value: it never runs
        if not self._loaded:
            self._loaded = True
            self._describe = _cron_descriptor()
        if self._describe is None:
            return plain_description(timing)
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                description = self._describe(f"{minutes} {hours} {dom} {month} {days}")
        except Exception:  # a third-party library: any failure costs only the wording
            return plain_description(timing)
        # One line, whatever the catalogue holds.
        description = " ".join(description.split())
        return description + _zone_text(timing) if description else plain_description(timing)


# --- rendering ------------------------------------------------------------------------


def _json(document: object) -> bytes:
    import json

    return json.dumps(document, ensure_ascii=True).encode("ascii") + b"\n"


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", "surrogateescape")


def _task_fields(task: TaskEntry) -> dict[str, object]:
    """A task as JSON: the course's fields, then the whole task's (LIST-EX's; over the
    FIFOs, LIST says none, and these are the defaults)."""
    from saturnd.timing import format_field

    timing, extras = task.timing, task.extras
    return {
        "id": task.task_id,
        "minutes": format_field("minutes", timing.minutes),
        "hours": format_field("hours", timing.hours),
        "daysofweek": format_field("daysofweek", timing.daysofweek),
        "argv": [_text(arg) for arg in task.argv],
        "daysofmonth": format_field("daysofmonth", timing.daysofmonth),
        "months": format_field("months", timing.months),
        "days_or": timing.days_or,
        "reboot": timing.reboot,
        "zone": timing.zone or None,
        "env": [{"name": _text(name), "value": _text(value)} for name, value in extras.env],
        "stdin": _text(extras.stdin),
        "mailto": None if extras.mailto is None else _text(extras.mailto),
        "timeout": extras.timeout,
        "jitter": extras.jitter,
        "no_overlap": extras.no_overlap,
        "catch_up": extras.catch_up,
        "on_failure": _text(extras.on_failure) or None,
        "paused": extras.paused,
    }


def task_json(task: TaskEntry) -> dict[str, object]:
    """A task as `--json` shows it (a new dict each call: the caller may add to it)."""
    return _task_fields(task)


class _Context:
    """What every renderer needs besides the reply."""

    __slots__ = ("invocation", "localtime", "now", "tz")

    def __init__(
        self, invocation: Invocation, localtime: LocalTime, now: float, tz: tzinfo | None
    ) -> None:
        self.invocation = invocation
        self.localtime = localtime
        self.now = now
        self.tz = tz

    def start(self, seconds: int) -> dict[str, object]:
        """A start time as JSON shows it: epoch seconds and the text of `-x`."""
        return {"time": seconds, "local": local_text(self.localtime, seconds)}


def _render_list(context: _Context, reply: ListReply | ListExReply) -> Outcome:
    return Outcome(_json([_task_fields(task) for task in reply.tasks]))


def _extras_lines(extras: Extras) -> bytes:
    """`-l -v`'s lines for a task's environment, standard input and MAILTO, escaped."""
    lines = [b"    env: " + escape(name + b"=" + value) + b"\n" for name, value in extras.env]
    if extras.stdin:
        lines.append(b"    stdin: " + escape(extras.stdin) + b"\n")
    if extras.mailto is not None:
        lines.append(b"    mailto: " + escape(extras.mailto) + b"\n")
    return b"".join(lines)


def _render_verbose(context: _Context, reply: ListReply | ListExReply) -> Outcome:
    describer = _Describer()
    nexts: dict[Timing, list[int] | str] = {}
    documents: list[dict[str, object]] = []
    lines: list[bytes] = []
    for task in reply.tasks:
        if task.timing not in nexts:
            nexts[task.timing] = task_starts(task.timing, context.now, 1, context.tz)
        starts = nexts[task.timing]
        start = starts[0] if starts and not isinstance(starts, str) else None
        description = describer(task.timing)
        if context.invocation.json:
            document = _task_fields(task)
            document["next"] = None if start is None else context.start(start)
            document["description"] = description
            documents.append(document)
        else:
            if start is not None:
                shown = local_text(context.localtime, start)
            else:
                shown = starts if isinstance(starts, str) else "never"
            lines.append(task_line(task))
            lines.append(f"    next run: {shown}\n    description: {description}\n".encode())
            lines.append(_extras_lines(task.extras))
    if context.invocation.json:
        return Outcome(_json(documents))
    return Outcome(b"".join(lines))


def _render_next(context: _Context, reply: ListReply | ListExReply) -> Outcome:
    invocation = context.invocation
    for task in reply.tasks:
        if task.task_id == invocation.task_id:
            break
    else:
        return Outcome(stderr=f"cassini: no task with id {invocation.task_id}\n", status=1)
    starts = task_starts(task.timing, context.now, invocation.count, context.tz)
    if isinstance(starts, str):
        # No start time to print: say why on stderr (@reboot: status 0; a zone unknown
        # here: 1), and keep stdout what a script can read (nothing, or `[]`).
        status = 0 if task.timing.reboot else 1
        stdout = _json([]) if invocation.json else b""
        return Outcome(stdout, f"cassini: task {task.task_id} runs {starts}\n", status)
    if invocation.json:
        return Outcome(_json([context.start(start) for start in starts]))
    return Outcome("".join(f"{local_text(context.localtime, s)}\n" for s in starts).encode())


def _render_export(context: _Context, reply: ListReply | ListExReply) -> Outcome:
    from cassini import cronwrite

    text, problems = cronwrite.export(reply.tasks)
    return Outcome(
        text, "".join(f"cassini: {problem}\n" for problem in problems), 1 if problems else 0
    )


def _render_runs(context: _Context, reply: TimesExitcodesReply) -> Outcome:
    runs = []
    for run in reply.runs:
        local = local_text(context.localtime, run.time)
        if local is None:
            return out_of_range(run.time)
        runs.append({"time": run.time, "local": local, "exitcode": run.exitcode})
    return Outcome(_json(runs))


def _render_version(context: _Context, reply: VersionReply) -> Outcome:
    """`--version`: ours, then the daemon's, one per line."""
    from saturnd import __version__

    daemon = reply.version.decode("utf-8", "replace")
    return Outcome(stdout=f"cassini {__version__}\ndaemon: {daemon}\n".encode())


def render(
    invocation: Invocation,
    reply: Reply,
    localtime: LocalTime,
    now: float,
    tz: tzinfo | None = None,
) -> Outcome:
    """What to print, and the exit status, for `reply` to `invocation`.

    `localtime` shows epoch seconds in local time (`time.localtime`) and `tz` is the
    same zone for the scheduling rule (None: the process's); `now` is epoch seconds.
    A reply of another type than the
    mode expects (an error) is shown as PROTOCOL.md says.
    """
    from saturnd.protocol import ListExReply, ListReply, TimesExitcodesReply, VersionReply

    # (mode, reply type) -> renderer; "plain" comes here only with --json.
    renderers: dict[tuple[str, type], Callable[[_Context, Any], Outcome]] = {
        ("plain", ListReply): _render_list,
        ("plain", ListExReply): _render_list,
        ("plain", TimesExitcodesReply): _render_runs,
        ("verbose", ListReply): _render_verbose,
        ("verbose", ListExReply): _render_verbose,
        ("next", ListReply): _render_next,
        ("next", ListExReply): _render_next,
        ("export", ListReply): _render_export,
        ("export", ListExReply): _render_export,
        ("version", VersionReply): _render_version,
    }
    renderer = renderers.get((invocation.mode, type(reply)))
    if renderer is None:  # an error reply, shown as PROTOCOL.md says
        return render_plain(invocation.request, reply, localtime)
    return renderer(_Context(invocation, localtime, now, tz), reply)
