"""`cassini -c`, sans I/O: its options and command -> the request that creates the task.

This module owns:
- `create_request`: `-c`'s options (timing fields or `--cron`, `--tz`, `--env`, the run
  policies) and command -> CREATE, or CREATE-EX for a whole task;
- `make_create_request`: a timing, argv and extras -> CREATE (the course's, when it says
  the whole task) or CREATE-EX, within the daemon's limits (`--import` uses it too);
- `policies_of`: the run policies among getopt's options (`-c`, a crontab's
  `#saturnd:` line) as `Extras` fields;
- `beyond_course`: what of a task the course's CREATE cannot carry, in words;
- `check_zone`, `parse_env`: `--tz` and `--env`.

Rules: pure (`--tz` reads the zone database: the one look at the file system, and
`zoneinfo` is imported only then); every problem is a `cli.UsageError` with a one-line
reason, raised before anything is sent. Loaded only by the invocations that create.
"""

from __future__ import annotations

import os

from cassini.cli import TIMING_OPTIONS, UsageError, single_value

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from saturnd.protocol import Request
    from saturnd.task import Extras, Task
    from saturnd.timing import Timing

__all__ = [
    "beyond_course",
    "check_zone",
    "create_request",
    "create_timing",
    "make_create_request",
    "parse_env",
    "policies_of",
]


def make_create_request(
    timing: Timing, argv: tuple[bytes, ...], extras: Extras | None = None
) -> Request:
    """The request creating a task, or `UsageError` when the daemon could not take it.

    The course's CREATE when it says the whole task (any daemon takes it, over the FIFOs
    too), else CREATE-EX (saturnd's socket only). The daemon drops a request beyond its
    limits without replying; say why here instead.
    """
    from saturnd.protocol import (
        MAX_ARGC,
        MAX_REQUEST,
        MAX_STRING,
        CreateExRequest,
        CreateRequest,
        encode,
    )
    from saturnd.task import NO_EXTRAS, Task, check_extras

    if not argv:
        raise UsageError("the command is empty")
    if argv[0] == b"":
        raise UsageError("the command's name is empty")
    if len(argv) > MAX_ARGC:
        raise UsageError(f"too many arguments ({len(argv)}; at most {MAX_ARGC})")
    task = Task(timing, argv, NO_EXTRAS if extras is None else extras)
    problem = check_extras(task.extras)
    if problem is not None:
        raise UsageError(problem)
    strings = [*argv, *(b for pair in task.extras.env for b in pair), task.extras.stdin]
    strings.append(task.extras.on_failure)
    for data in strings:
        if len(data) > MAX_STRING:
            raise UsageError(f"an argument of {len(data)} bytes is longer than {MAX_STRING}")
    request: Request = CreateRequest(timing, argv) if task.is_course else CreateExRequest(task)
    if len(encode(request)) > MAX_REQUEST:
        raise UsageError(f"the command line is longer than {MAX_REQUEST} bytes")
    return request


def beyond_course(task: Task) -> list[str]:
    """What of `task` the course's CREATE cannot carry, in words (empty: nothing)."""
    from saturnd.timing import FULL_DAYSOFMONTH, FULL_MONTHS

    timing, extras = task.timing, task.extras
    clock = not timing.reboot  # an @reboot timing's sets are all empty
    named = [
        (timing.reboot, "@reboot"),
        (clock and timing.daysofmonth != FULL_DAYSOFMONTH, "a day of month"),
        (clock and timing.months != FULL_MONTHS, "a month"),
        (bool(timing.zone), "a time zone"),
        (bool(extras.env), "environment variables"),
        (bool(extras.stdin), "standard input"),
        (extras.mailto is not None, "MAILTO"),
        (extras.timeout != 0, "a timeout"),
        (extras.jitter != 0, "a jitter"),
        (extras.no_overlap, "--no-overlap"),
        (extras.catch_up, "--catch-up"),
        (bool(extras.on_failure), "an on-failure command"),
        (extras.paused, "a paused state"),
    ]
    return [words for present, words in named if present]


def check_zone(zone: str) -> None:
    """Raise `UsageError` unless `zone` is a time zone this machine knows (`Europe/Paris`).

    `zoneinfo` is imported here, only for `--tz`: cassini's other calls never pay for it.
    """
    import zoneinfo

    if not zone:
        raise UsageError("--tz needs a time zone name, such as Europe/Paris")
    try:
        zoneinfo.ZoneInfo(zone)
    except (ValueError, LookupError, OSError):
        # LookupError: ZoneInfoNotFoundError; ValueError: `../x`, an absolute path;
        # OSError: a directory of the database (`America`).
        raise UsageError(f"unknown time zone {zone!r}") from None


def parse_env(text: str) -> tuple[bytes, bytes]:
    """A `--env NAME=VALUE` argument -> (name, value); raises `UsageError`."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise UsageError(f"invalid --env {text!r}: expected NAME=VALUE")
    return os.fsencode(name), os.fsencode(value)


def create_timing(options: list[tuple[str, str]]) -> Timing:
    from saturnd.timing import Timing, TimingError

    zone = single_value(options, "--tz")
    if zone is not None:
        check_zone(zone)
    schedule = single_value(options, "--cron")
    try:
        if schedule is not None:
            for option, _ in options:
                if option in TIMING_OPTIONS:
                    raise UsageError(f"option --cron cannot be combined with {option}")
            return Timing.cron(schedule, zone or "")
        fields = {}
        for option, field in TIMING_OPTIONS.items():
            value = single_value(options, option)
            fields[field] = "*" if value is None else value
        return Timing.parse(
            fields["minutes"],
            fields["hours"],
            fields["daysofweek"],
            fields["daysofmonth"],
            fields["months"],
            zone or "",
        )
    except TimingError as error:
        raise UsageError(str(error)) from None


def create_request(options: list[tuple[str, str]], command: list[str]) -> Request:
    from saturnd.task import Extras

    if not command:
        raise UsageError("-c needs a command to run")
    timing = create_timing(options)
    env = tuple(parse_env(value) for option, value in options if option == "--env")
    argv = tuple(os.fsencode(arg) for arg in command)
    return make_create_request(timing, argv, Extras(env).replace(**policies_of(options)))


def policies_of(options: list[tuple[str, str]]) -> dict[str, object]:
    """The run policies among `options` (getopt's, from `-c` or a crontab's `#saturnd:`
    line), as `Extras` fields; raises `UsageError`."""
    policies: dict[str, object] = {}
    for option in ("--timeout", "--jitter"):
        text = single_value(options, option)
        if text is not None:
            # Imported only here: a `-c` without durations loads nothing new.
            from cassini.duration import DurationError, parse_duration

            try:
                policies[option[2:]] = parse_duration(text)
            except DurationError as error:
                raise UsageError(f"{error} (option {option})") from None
    if policies.get("timeout") == 0:
        raise UsageError("--timeout 0 would stop every run at once: leave --timeout out")
    flags = {option for option, _ in options}
    policies["no_overlap"] = "--no-overlap" in flags
    policies["catch_up"] = "--catch-up" in flags
    command = single_value(options, "--on-failure")
    if command is not None:
        if not command.strip():
            raise UsageError("--on-failure needs a command")
        policies["on_failure"] = os.fsencode(command)
    return policies
