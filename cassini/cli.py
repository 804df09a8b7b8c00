"""cassini's command line and output, sans I/O (PROTOCOL.md, "cassini's command line").

This module owns:
- `parse_args`: the arguments (without the program name) -> `Help` or an `Invocation`
  (the request to send and the pipes directory), or `UsageError`;
- `render`: a request and its reply -> an `Outcome` (stdout bytes, stderr text, exit
  status);
- `USAGE`, the help text.

Rules:
- Pure: no file descriptor, no clock. The only environment-dependent step, turning a run's
  epoch seconds into local time, is a function the caller passes in.
- Options are parsed by `getopt.getopt` with PROTOCOL.md's option string, so parsing stops
  at the first non-option argument: it and everything after it are the command of `-c`.
- Nothing is sent for invalid arguments: every check happens here, before any I/O.
- Start-up speed: `cassini -h` must cost little more than starting Python, so this module
  imports only `getopt` and `os` when it loads. `saturnd.protocol` and `saturnd.timing`
  (which pull in `dataclasses`, `typing`, `datetime`) are imported by the functions that
  need them, and this module's own classes are plain classes for the same reason:
  `import dataclasses` alone costs about a third of the interpreter's start-up.
"""

from __future__ import annotations

import getopt
import os

# `typing.TYPE_CHECKING` would import `typing`; mypy treats any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import time
    from collections.abc import Callable, Sequence

    from saturnd.protocol import (
        CreateReply,
        ErrorReply,
        ListReply,
        OkReply,
        OutputReply,
        Reply,
        Request,
        TimesExitcodesReply,
    )

    LocalTime = Callable[[int], time.struct_time]
    """Epoch seconds -> local wall-clock time, i.e. `time.localtime`."""

__all__ = [
    "OPTIONS",
    "USAGE",
    "Help",
    "Invocation",
    "Outcome",
    "UsageError",
    "parse_args",
    "parse_task_id",
    "render",
]

OPTIONS = "hlcqm:H:d:p:r:x:o:e:"
"""The getopt option string of PROTOCOL.md."""

USAGE = """\
usage: cassini [-p PIPES_DIR] [-l]
       cassini [-p PIPES_DIR] -c [-m MINUTES] [-H HOURS] [-d DAYSOFWEEK] COMMAND [ARG...]
       cassini [-p PIPES_DIR] -r|-x|-o|-e TASKID
       cassini [-p PIPES_DIR] -q
       cassini -h

  -l              list the tasks (the default)
  -c              create a task running COMMAND [ARG...] (options after COMMAND are its own)
  -m MINUTES      minutes of the new task, crontab syntax such as 0-2,5 (default *)
  -H HOURS        hours of the new task (default *)
  -d DAYSOFWEEK   days of week of the new task, 0 = Sunday (default *)
  -r TASKID       remove a task
  -x TASKID       print a task's run times and exit codes
  -o TASKID       print the standard output of a task's last run
  -e TASKID       print the standard error of a task's last run
  -q              terminate the daemon
  -p PIPES_DIR    directory of the pipes (default /tmp/USERNAME/saturnd/pipes)
  -h              print this help
"""

_MAX_TASK_ID = (1 << 64) - 1
_MAX_TASK_ID_DIGITS = len(str(_MAX_TASK_ID))

# Options that choose the request; at most one of them (repeating the same one with the
# same argument is harmless and accepted).
_OPERATIONS = frozenset({"-l", "-c", "-q", "-r", "-x", "-o", "-e"})
# Options that only make sense with -c.
_TIMING_OPTIONS = {"-m": "minutes", "-H": "hours", "-d": "daysofweek"}


class UsageError(ValueError):
    """Arguments that do not form a valid invocation; the message is one line."""


class Help:
    """`-h`: print the usage on stdout and exit 0."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Help)

    def __hash__(self) -> int:
        return hash(Help)

    def __repr__(self) -> str:
        return "Help()"


class Invocation:
    """A valid invocation: the request to send and `-p`'s directory (None: the default)."""

    __slots__ = ("pipes_dir", "request")

    def __init__(self, request: Request, pipes_dir: str | None = None) -> None:
        self.request = request
        self.pipes_dir = pipes_dir

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Invocation):
            return NotImplemented
        return (self.request, self.pipes_dir) == (other.request, other.pipes_dir)

    def __hash__(self) -> int:
        return hash((self.request, self.pipes_dir))

    def __repr__(self) -> str:
        return f"Invocation({self.request!r}, {self.pipes_dir!r})"


class Outcome:
    """What cassini does with a reply: bytes for stdout, text for stderr, exit status."""

    __slots__ = ("status", "stderr", "stdout")

    def __init__(self, stdout: bytes = b"", stderr: str = "", status: int = 0) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.status = status

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return (self.stdout, self.stderr, self.status) == (
            other.stdout,
            other.stderr,
            other.status,
        )

    def __hash__(self) -> int:
        return hash((self.stdout, self.stderr, self.status))

    def __repr__(self) -> str:
        return f"Outcome({self.stdout!r}, {self.stderr!r}, {self.status})"


# --- parsing --------------------------------------------------------------------


def parse_task_id(text: str) -> int:
    """A TASKID argument: decimal digits only, at most 2**64 - 1; raises `UsageError`.

    Stricter than `int()`, which accepts signs, spaces, underscores and non-ASCII digits.
    """
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"invalid task id {text!r}: expected a decimal number")
    # Bound the length before int(): Python refuses to convert very long digit strings.
    significant = text.lstrip("0")
    if len(significant) > _MAX_TASK_ID_DIGITS or int(significant or "0") > _MAX_TASK_ID:
        raise UsageError(f"invalid task id {text!r}: larger than {_MAX_TASK_ID}")
    return int(significant or "0")


def _single(options: list[tuple[str, str]], name: str) -> str | None:
    """The argument of an option that may be given once, or None when it is absent."""
    values = [value for option, value in options if option == name]
    if len(values) > 1:
        raise UsageError(f"option {name} given more than once")
    return values[0] if values else None


def _create_request(options: list[tuple[str, str]], command: list[str]) -> Request:
    from saturnd.protocol import MAX_ARGC, MAX_REQUEST, MAX_STRING, CreateRequest, encode
    from saturnd.timing import Timing, TimingError

    if not command:
        raise UsageError("-c needs a command to run")
    fields = {}
    for option, field in _TIMING_OPTIONS.items():
        value = _single(options, option)
        fields[field] = "*" if value is None else value
    try:
        timing = Timing.parse(**fields)
    except TimingError as error:
        raise UsageError(str(error)) from None
    argv = tuple(os.fsencode(arg) for arg in command)
    if argv[0] == b"":
        raise UsageError("the command's name is empty")
    # The daemon drops requests beyond its limits without replying; say so here instead.
    if len(argv) > MAX_ARGC:
        raise UsageError(f"too many arguments ({len(argv)}; at most {MAX_ARGC})")
    for arg in argv:
        if len(arg) > MAX_STRING:
            raise UsageError(f"an argument of {len(arg)} bytes is longer than {MAX_STRING}")
    request = CreateRequest(timing, argv)
    if len(encode(request)) > MAX_REQUEST:
        raise UsageError(f"the command line is longer than {MAX_REQUEST} bytes")
    return request


def _task_request(option: str, text: str) -> Request:
    from saturnd.protocol import RemoveRequest, StderrRequest, StdoutRequest, TimesExitcodesRequest

    classes: dict[
        str,
        type[RemoveRequest | TimesExitcodesRequest | StdoutRequest | StderrRequest],
    ] = {
        "-r": RemoveRequest,
        "-x": TimesExitcodesRequest,
        "-o": StdoutRequest,
        "-e": StderrRequest,
    }
    return classes[option](parse_task_id(text))


def _plain_request(option: str) -> Request:
    from saturnd.protocol import ListRequest, TerminateRequest

    return ListRequest() if option == "-l" else TerminateRequest()


def parse_args(args: Sequence[str]) -> Help | Invocation:
    """Parse cassini's arguments (without the program name); raises `UsageError`.

    `-h` anywhere among the options wins over everything else; no option at all is LIST.
    """
    try:
        options, rest = getopt.getopt(list(args), OPTIONS)
    except getopt.GetoptError as error:
        raise UsageError(error.msg) from None
    if any(option == "-h" for option, _ in options):
        return Help()
    pipes_dir = _single(options, "-p")

    operations = list(dict.fromkeys((o, v) for o, v in options if o in _OPERATIONS))
    if len(operations) > 1:
        shown = " and ".join(f"{o} {v}".rstrip() for o, v in operations)
        raise UsageError(f"conflicting options: {shown}")
    operation, argument = operations[0] if operations else ("-l", "")

    if operation != "-c":
        misplaced = [option for option, _ in options if option in _TIMING_OPTIONS]
        if misplaced:
            raise UsageError(f"option {misplaced[0]} is only valid with -c")
        if rest:
            raise UsageError(f"unexpected argument {rest[0]!r} (a command needs -c)")

    if operation == "-c":
        request = _create_request(options, rest)
    elif operation in ("-l", "-q"):
        request = _plain_request(operation)
    else:
        request = _task_request(operation, argument)
    return Invocation(request, pipes_dir)


# --- output ---------------------------------------------------------------------


def _render_ok(request: Request, reply: OkReply, localtime: LocalTime) -> Outcome:
    return Outcome()


def _render_error(request: Request, reply: ErrorReply, localtime: LocalTime) -> Outcome:
    from saturnd.protocol import ERR_NEVER_RAN, ERR_NOT_FOUND

    task_id = getattr(request, "task_id", None)
    messages = {
        ERR_NOT_FOUND: f"no task with id {task_id}",
        ERR_NEVER_RAN: f"task {task_id} has not run yet",
    }
    message = messages.get(reply.code, f"the daemon answered error {reply.code.hex(' ')}")
    return Outcome(stderr=f"cassini: {message}\n", status=1)


def _render_list(request: Request, reply: ListReply, localtime: LocalTime) -> Outcome:
    lines = [
        f"{task.task_id}: {task.timing.format()} ".encode() + b" ".join(task.argv) + b"\n"
        for task in reply.tasks
    ]
    return Outcome(stdout=b"".join(lines))


def _render_create(request: Request, reply: CreateReply, localtime: LocalTime) -> Outcome:
    return Outcome(stdout=b"%d\n" % reply.task_id)


def _render_runs(request: Request, reply: TimesExitcodesReply, localtime: LocalTime) -> Outcome:
    lines = []
    for run in reply.runs:
        try:
            t = localtime(run.time)
        except (OverflowError, OSError, ValueError):
            # An int64 can hold times that no calendar of the C library can show.
            message = f"malformed reply from daemon: run time {run.time} is out of range"
            return Outcome(stderr=f"cassini: {message}\n", status=1)
        # Formatted by hand rather than by strftime: %Y is not zero-padded before year 1000.
        lines.append(
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {run.exitcode}\n"
        )
    return Outcome(stdout="".join(lines).encode())


def _render_output(request: Request, reply: OutputReply, localtime: LocalTime) -> Outcome:
    return Outcome(stdout=reply.output)


def render(request: Request, reply: Reply, localtime: LocalTime) -> Outcome:
    """What to print, and the exit status, for `reply` to `request`.

    `localtime` turns epoch seconds into local wall-clock time (`time.localtime`).
    """
    from saturnd import protocol

    # Each renderer gets a reply of the type it is keyed by.
    renderers: dict[type, Callable[..., Outcome]] = {
        protocol.OkReply: _render_ok,
        protocol.ErrorReply: _render_error,
        protocol.ListReply: _render_list,
        protocol.CreateReply: _render_create,
        protocol.TimesExitcodesReply: _render_runs,
        protocol.OutputReply: _render_output,
    }
    return renderers[type(reply)](request, reply, localtime)
