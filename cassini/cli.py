"""cassini's command line and output, sans I/O (PROTOCOL.md, "cassini's command line").

This module owns:
- `parse_args`: the arguments (without the program name) -> `Help`, an `Invocation`
  (the request to send, the pipes directory and how to show the reply) or an `Import`
  (`--import FILE`, which sends one CREATE per crontab line), or `UsageError`;
- `USAGE`, the help text.
What cassini prints for a reply is `cassini.replies`'.

Rules:
- Pure: no file descriptor, no clock. The only environment-dependent step, turning a run's
  epoch seconds into local time, is a function the caller passes in.
- Options are parsed like `getopt.getopt` (by `cassini.options`, which behaves the same
  without importing `re`) with PROTOCOL.md's option string plus the newer
  options (`-n: -N: -v` and the long `--export --export-k8s --image= --import= --json
  --start= --run= --pause= --resume= --kill=`, and for -c `--dom= --month= --cron= --tz= --env=` and
  the run policies), so parsing stops at the
  first non-option argument: it and everything after it are the command of `-c`. An
  argument list the original option string accepts parses exactly as before (the new
  letters were errors there; long options were errors there).
- Nothing is sent for invalid arguments: every check happens here or in
  `cassini.creating` (`-c`'s request), before any I/O.
- The listings ask for LIST-EX, whose tasks are whole; over the FIFOs (a C daemon) the
  course's LIST is sent instead (`fifo_request`). A `-l` line is PROTOCOL.md's for a
  task the course can say; otherwise `timing_text`'s words follow the day of week.
- Start-up speed: `cassini -h` must cost little more than starting Python, so this module
  imports only `cassini.options` when it loads. `saturnd.protocol` and
  `saturnd.timing` are imported by the functions that need them, and this module's own
  classes are plain classes: `import dataclasses` alone costs about a third of the
  interpreter's start-up. The
  newer outputs live in `cassini.output`, `cassini.history`, `cassini.table` and
  `cassini.crontab`, and `-c` in `cassini.creating`, imported only by the
  invocations that use them, so the plain options load nothing new.
"""

from __future__ import annotations

from cassini.options import GetoptError, getopt

# `typing.TYPE_CHECKING` would import `typing`; mypy treats any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import time
    from collections.abc import Callable, Sequence

    from saturnd.protocol import (
        Request,
    )

    LocalTime = Callable[[int], time.struct_time]
    """Epoch seconds -> local wall-clock time, i.e. `time.localtime`."""

__all__ = [
    "DEFAULT_COUNT",
    "LONG_OPTIONS",
    "MAX_COUNT",
    "OPTIONS",
    "PROTOCOL_OPTIONS",
    "TRY_HELP",
    "USAGE",
    "Edit",
    "ExportSystemd",
    "Help",
    "Import",
    "Invocation",
    "UsageError",
    "parse_args",
    "parse_count",
    "parse_task_id",
    "single_value",
    "TIMING_OPTIONS",
    "parse_start",
    "TASK_PATH",
    "fifo_request",
]

PROTOCOL_OPTIONS = "hlcqm:H:d:p:r:x:o:e:"
"""The getopt option string of PROTOCOL.md."""
OPTIONS = PROTOCOL_OPTIONS + "n:N:v"
"""PROTOCOL.md's option string and the newer short options (-n ID, -N COUNT, -v)."""
LONG_OPTIONS = (
    "catch-up",
    "check",
    "cron=",
    "dom=",
    "edit",
    "env=",
    "export",
    "export-k8s",
    "export-systemd=",
    "help",
    "host=",
    "image=",
    "import=",
    "jitter=",
    "json",
    "kill=",
    "month=",
    "no-overlap",
    "on-failure=",
    "pause=",
    "replace",
    "resume=",
    "run=",
    "start=",
    "timeout=",
    "tz=",
    "version",
)
"""The long options, for getopt: --check, --cron SCHEDULE, --dom DAYS, --edit, --env
NAME=VALUE, --export, --export-k8s (with --image IMAGE), --export-systemd DIR, --help
(the same as -h), --import FILE, --json, --month MONTHS, --replace, --tz ZONE, --version
(--check and --replace go with --import); the run policies of -c (--timeout D, --jitter D,
--no-overlap, --catch-up, --on-failure CMD); acting on a task (--run, --pause, --resume,
--kill ID); -o/-e's --start TIME; --host DEST (run on DEST over ssh: cassini.remote takes
it out before `parse_args` sees the rest)."""
TASK_PATH = b"/usr/bin:/bin"
"""The PATH a task gets unless its own environment sets one (cron's, DESIGN.md)."""

DEFAULT_COUNT = 5
"""How many start times `-n` prints without `-N`."""
MAX_COUNT = 1000
"""The largest `-N`: enough for years of a daily task, quick to compute."""

USAGE = """\
usage: cassini [-p PIPES_DIR] [-l] [-v [-v]] [--json]
       cassini [-p PIPES_DIR] -c [-m MINUTES] [-H HOURS] [-d DAYSOFWEEK] [--dom DAYS]
                  [--month MONTHS] [--tz ZONE] [--env NAME=VALUE]... [POLICY...]
                  COMMAND [ARG...]
       cassini [-p PIPES_DIR] -c --cron SCHEDULE [--tz ZONE] [--env NAME=VALUE]...
                  [POLICY...] COMMAND [ARG...]
       cassini [-p PIPES_DIR] -r TASKID
       cassini [-p PIPES_DIR] -o|-e TASKID [--start TIME]
       cassini [-p PIPES_DIR] -x TASKID [-v] [--json]
       cassini [-p PIPES_DIR] --run|--pause|--resume|--kill TASKID
       cassini [-p PIPES_DIR] -n TASKID [-N COUNT] [--json]
       cassini [-p PIPES_DIR] --export
       cassini [-p PIPES_DIR] --export-k8s --image IMAGE
       cassini [-p PIPES_DIR] --export-systemd DIR
       cassini [-p PIPES_DIR] --import FILE [--replace] [--check]
       cassini [-p PIPES_DIR] --edit
       cassini [-p PIPES_DIR] -q
       cassini [-p PIPES_DIR] --version
       cassini --host DEST [--host DEST]... [OPTION...]
       cassini -h|--help

  -l              list the tasks (the default)
  -v              with -l: a table of next start, last run and its result;
                  -v -v: each task's next start time and a description;
                  with -x: each run's duration, outcome and marks
  -c              create a task running COMMAND [ARG...] (options after COMMAND are its own)
  -m MINUTES      minutes of the new task, crontab syntax such as 0-2,5 (default *)
  -H HOURS        hours of the new task (default *)
  -d DAYSOFWEEK   days of week of the new task, 0 = Sunday (default *)
  --dom DAYS      days of month of the new task, 1-31 (default *)
  --month MONTHS  months of the new task, 1-12 or jan-dec (default *)
  --cron SCHEDULE all five crontab fields at once, 'M H DOM MON DOW', or @daily,
                  @hourly, @weekly, @monthly, @yearly, @reboot (not with -m -H -d
                  --dom --month)
  --tz ZONE       read the new task's schedule in time zone ZONE (Europe/Paris)
  --env NAME=VALUE
                  a variable of the new task's environment (repeatable)
  POLICY is one of:
  --timeout DURATION  stop a run still going after DURATION (90s, 5m, 2h, 1d, 1h30m)
  --jitter DURATION   delay each start by a random time up to DURATION
  --no-overlap        skip a start while the task's previous run is still going
  --catch-up          run once after the daemon was down across a start
  --on-failure CMD    run CMD with /bin/sh -c when a run fails
  -r TASKID       remove a task
  -x TASKID       print a task's run times and exit codes
  -o TASKID       print the standard output of a task's last run
  -e TASKID       print the standard error of a task's last run
  --start TIME    with -o or -e: of the kept run that started at TIME (as -x
                  shows it, YYYY-MM-DD HH:MM:SS, or epoch seconds)
  --run TASKID    start a run of a task now
  --pause TASKID  stop starting a task (it keeps its schedule and history)
  --resume TASKID start a paused task again
  --kill TASKID   stop a task's runs in progress
  -n TASKID       print the next start times of a task, in local time
  -N COUNT        with -n: how many start times (default 5, at most 1000)
  --json          with -l, -x or -n: print one JSON document instead of text
  --export        print every task as a crontab line
  --export-k8s    print every task as a Kubernetes CronJob manifest (YAML)
  --image IMAGE   with --export-k8s: the container image that runs the commands
  --export-systemd DIR
                  write every task as systemd user units (a .timer and a .service)
                  into DIR, with a README saying how to enable them
  --import FILE   create a task per line of crontab FILE (- for standard input)
  --replace       with --import: make the tasks those of FILE, keeping unchanged ones
  --check         with --import: only say what would be created, kept and removed
  --edit          edit the tasks as a crontab in $VISUAL or $EDITOR, then apply it
  -q              terminate the daemon
  -p PIPES_DIR    directory of the pipes (default $SATURND_PIPES_DIR if set,
                  else /tmp/USERNAME/saturnd/pipes)
  --version       print cassini's version and the daemon's
  --host DEST     do it on DEST over ssh ($CASSINI_SSH, else ssh), repeatable:
                  each line is then prefixed `DEST: ', --json gives one document
  -h, --help      print this help
"""

TRY_HELP = "Try 'cassini -h' for more information."
"""The line that follows a usage error's reason, in place of the whole usage."""

_MAX_TASK_ID = (1 << 64) - 1
_MAX_TASK_ID_DIGITS = len(str(_MAX_TASK_ID))

# Options that choose what to do; at most one of them (repeating the same one with the
# same argument is harmless and accepted).
_OPERATIONS = frozenset(
    {"-l", "-c", "-q", "-r", "-x", "-o", "-e", "-n", "--export", "--import", "--edit"}
    | {"--export-k8s", "--export-systemd"}
    | {"--version", "--run", "--pause", "--resume", "--kill"}
)
TIMING_OPTIONS = {
    "-m": "minutes",
    "-H": "hours",
    "-d": "daysofweek",
    "--dom": "daysofmonth",
    "--month": "months",
}
"""The options of -c that set a timing field, and the field (cassini.creating)."""
_POLICY_OPTIONS = ("--timeout", "--jitter", "--no-overlap", "--catch-up", "--on-failure")
_TASK_OPTIONS = (*TIMING_OPTIONS, "--cron", "--tz", "--env", *_POLICY_OPTIONS)
# Every option that only makes sense with some operations: the operations, and how the
# usage error names them.
_MODIFIERS: dict[str, tuple[frozenset[str], str]] = {
    **{option: (frozenset({"-c"}), "-c") for option in _TASK_OPTIONS},
    "-N": (frozenset({"-n"}), "-n"),
    "--image": (frozenset({"--export-k8s"}), "--export-k8s"),
    "-v": (frozenset({"-l", "-x"}), "-l or -x"),
    "--json": (frozenset({"-l", "-x", "-n"}), "-l, -x or -n"),
    "--start": (frozenset({"-o", "-e"}), "-o or -e"),
    **{option: (frozenset({"--import"}), "--import") for option in ("--replace", "--check")},
}
# Why an operation refuses a word after its options: those that take an argument take
# exactly one (`cassini -r 4 5` is not two removals); for the others, a word there is
# most likely a command that forgot -c.
_ONE_ARGUMENT = {
    **{
        option: f"{option} takes one task id"
        for option in ("-r", "-x", "-o", "-e", "-n", "--run", "--pause", "--resume", "--kill")
    },
    "--import": "--import takes one file",
    "--export-systemd": "--export-systemd takes one directory",
}
_NEEDS_C = "a command needs -c"
# How an invocation shows its reply: "plain" is PROTOCOL.md's output (`render`); the
# others are cassini.output's.
_MODES = ("plain", "verbose", "table", "history", "next", "export", "export-k8s", "version")


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
    """A valid invocation that sends one request, and how to show its reply.

    `pipes_dir` is `-p`'s directory (None: the default). `mode` is "plain" (PROTOCOL.md's
    output), "verbose" (`-l -v`), "next" (`-n task_id`, `count` start times) or "export"
    (`--export`) or "export-k8s" (`--export-k8s`, for containers of `image`); `json` is
    `--json`.
    """

    __slots__ = ("count", "image", "json", "mode", "pipes_dir", "request", "task_id")

    def __init__(
        self,
        request: Request,
        pipes_dir: str | None = None,
        *,
        mode: str = "plain",
        json: bool = False,
        task_id: int | None = None,
        count: int = DEFAULT_COUNT,
        image: str = "",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.request = request
        self.pipes_dir = pipes_dir
        self.mode = mode
        self.json = json
        self.task_id = task_id
        self.count = count
        self.image = image

    def _key(self) -> tuple[object, ...]:
        return (
            self.request,
            self.pipes_dir,
            self.mode,
            self.json,
            self.task_id,
            self.count,
            self.image,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Invocation):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        extra = ""
        if self.mode != "plain":
            extra += f", mode={self.mode!r}"
        if self.json:
            extra += ", json=True"
        if self.mode == "next":
            extra += f", task_id={self.task_id!r}, count={self.count!r}"
        if self.image:
            extra += f", image={self.image!r}"
        return f"Invocation({self.request!r}, {self.pipes_dir!r}{extra})"


class Import:
    """`--import FILE`: the tasks of crontab `path` ("-" is standard input), added, or
    with `replace` in place of the daemon's; with `check`, only said (cassini.importing).
    """

    __slots__ = ("check", "path", "pipes_dir", "replace")

    def __init__(
        self, path: str, pipes_dir: str | None = None, *, replace: bool = False, check: bool = False
    ) -> None:
        self.path = path
        self.pipes_dir = pipes_dir
        self.replace = replace
        self.check = check

    def _key(self) -> tuple[object, ...]:
        return (self.path, self.pipes_dir, self.replace, self.check)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Import):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        flags = (", replace=True" if self.replace else "") + (", check=True" if self.check else "")
        return f"Import({self.path!r}, {self.pipes_dir!r}{flags})"


class ExportSystemd:
    """`--export-systemd DIR`: the tasks as systemd user units in DIR
    (cassini.systemdexport)."""

    __slots__ = ("directory", "pipes_dir")

    def __init__(self, directory: str, pipes_dir: str | None = None) -> None:
        self.directory = directory
        self.pipes_dir = pipes_dir

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExportSystemd):
            return NotImplemented
        return (self.directory, self.pipes_dir) == (other.directory, other.pipes_dir)

    def __hash__(self) -> int:
        return hash((ExportSystemd, self.directory, self.pipes_dir))

    def __repr__(self) -> str:
        return f"ExportSystemd({self.directory!r}, {self.pipes_dir!r})"


class Edit:
    """`--edit`: the tasks as a crontab in an editor, then applied (cassini.edit)."""

    __slots__ = ("pipes_dir",)

    def __init__(self, pipes_dir: str | None = None) -> None:
        self.pipes_dir = pipes_dir

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Edit) and self.pipes_dir == other.pipes_dir

    def __hash__(self) -> int:
        return hash((Edit, self.pipes_dir))

    def __repr__(self) -> str:
        return f"Edit({self.pipes_dir!r})"


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


def single_value(options: list[tuple[str, str]], name: str) -> str | None:
    """The argument of an option that may be given once, or None when it is absent."""
    values = [value for option, value in options if option == name]
    if len(values) > 1:
        raise UsageError(f"option {name} given more than once")
    return values[0] if values else None


def parse_count(text: str) -> int:
    """A COUNT argument of `-N`: decimal digits, from 1 to MAX_COUNT; raises `UsageError`."""
    significant = text.lstrip("0")
    # Bound the length before int(), as for task ids.
    if text.isascii() and text.isdigit() and 0 < len(significant) <= len(str(MAX_COUNT)):
        count = int(significant)
        if count <= MAX_COUNT:
            return count
    raise UsageError(f"invalid count {text!r}: expected a number from 1 to {MAX_COUNT}")


def parse_start(text: str) -> int:
    """`--start TIME`: a run's start as `-x` shows it (`YYYY-MM-DD HH:MM:SS`, local time) or
    as epoch seconds (`-x -v --json`'s `time`); raises `UsageError`.

    Local time is read with `time.mktime` (the zone of the process, as `-x` prints it).
    """
    if text.isascii() and text.isdigit() and len(text) <= 19:
        seconds = int(text)
    else:
        import time

        try:
            parsed = time.strptime(text.replace("T", " ", 1), "%Y-%m-%d %H:%M:%S")
            seconds = int(time.mktime(parsed))
        except (ValueError, OverflowError):
            raise UsageError(
                f"invalid --start {text!r}: expected a run's start as -x shows it "
                "(YYYY-MM-DD HH:MM:SS) or epoch seconds"
            ) from None
    # 0 asks for the last run on the wire: no real run starts at 1970-01-01 00:00:00 UTC.
    if not 0 < seconds < 1 << 63:
        raise UsageError(f"invalid --start {text!r}: out of range")
    return seconds


def _action_classes() -> dict[str, Callable[[int], Request]]:
    from saturnd.protocol import KillRequest, PauseRequest, ResumeRequest, RunNowRequest

    return {
        "--run": RunNowRequest,
        "--pause": PauseRequest,
        "--resume": ResumeRequest,
        "--kill": KillRequest,
    }


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
    from saturnd.protocol import ListExRequest, TerminateRequest

    # LIST-EX: the whole tasks; `fifo_request` gives the course's LIST for the FIFOs.
    return ListExRequest() if option == "-l" else TerminateRequest()


def fifo_request(request: Request) -> Request | None:
    """What to send in place of `request` over the FIFOs, when it is an extension with a
    course equivalent (LIST-EX -> LIST); None when there is none."""
    from saturnd.protocol import ListExRequest, ListRequest

    return ListRequest() if isinstance(request, ListExRequest) else None


def parse_args(args: Sequence[str]) -> Help | Invocation | Import | Edit | ExportSystemd:
    """Parse cassini's arguments (without the program name); raises `UsageError`.

    `-h` or `--help` anywhere among the options wins over everything else; no option at
    all is LIST.
    """
    try:
        options, rest = getopt(list(args), OPTIONS, LONG_OPTIONS)
    except GetoptError as error:
        raise UsageError(error.msg) from None
    if any(option in ("-h", "--help") for option, _ in options):
        return Help()
    pipes_dir = single_value(options, "-p")

    operations = list(dict.fromkeys((o, v) for o, v in options if o in _OPERATIONS))
    if len(operations) > 1:
        shown = " and ".join(f"{o} {v}".rstrip() for o, v in operations)
        raise UsageError(f"conflicting options: {shown}")
    operation, argument = operations[0] if operations else ("-l", "")

    for option, _ in options:
        allowed = _MODIFIERS.get(option)
        if allowed is not None and operation not in allowed[0]:
            raise UsageError(f"option {option} is only valid with {allowed[1]}")
    if operation != "-c" and rest:
        raise UsageError(
            f"unexpected argument {rest[0]!r} ({_ONE_ARGUMENT.get(operation, _NEEDS_C)})"
        )
    json = any(option == "--json" for option, _ in options)

    if operation == "-c":
        from cassini.creating import create_request

        return Invocation(create_request(options, rest), pipes_dir)
    if operation == "--import":
        if argument == "":
            raise UsageError("--import needs a file name (- for standard input)")
        flags = {option for option, _ in options}
        return Import(argument, pipes_dir, replace="--replace" in flags, check="--check" in flags)
    if operation == "--edit":
        return Edit(pipes_dir)
    if operation == "--export-systemd":
        if argument == "":
            raise UsageError("--export-systemd needs a directory")
        return ExportSystemd(argument, pipes_dir)
    verbose = sum(option == "-v" for option, _ in options)
    if operation in ("-l", "-q"):
        # -l -v: the status table (with HISTORY per task); -l -v -v: each task's details.
        mode = ("plain", "table", "verbose")[min(verbose, 2)]
        return Invocation(_plain_request(operation), pipes_dir, mode=mode, json=json)
    if operation in ("--run", "--pause", "--resume", "--kill"):
        return Invocation(_action_classes()[operation](parse_task_id(argument)), pipes_dir)
    if operation == "-x" and verbose:
        from saturnd.protocol import HistoryRequest

        history = HistoryRequest(parse_task_id(argument))
        return Invocation(history, pipes_dir, mode="history", json=json)
    start = single_value(options, "--start")
    if start is not None:
        from saturnd.protocol import OutputExRequest

        stream = 1 if operation == "-o" else 2
        output = OutputExRequest(parse_task_id(argument), stream, parse_start(start))
        return Invocation(output, pipes_dir)
    if operation == "--export":
        return Invocation(_plain_request("-l"), pipes_dir, mode="export")
    if operation == "--export-k8s":
        image = single_value(options, "--image")
        if not image:
            raise UsageError("--export-k8s needs --image IMAGE (the container image)")
        return Invocation(_plain_request("-l"), pipes_dir, mode="export-k8s", image=image)
    if operation == "--version":
        from saturnd import __version__
        from saturnd.protocol import VersionRequest

        request = VersionRequest(f"cassini {__version__}".encode())
        return Invocation(request, pipes_dir, mode="version")
    if operation == "-n":
        count = single_value(options, "-N")
        return Invocation(
            _plain_request("-l"),
            pipes_dir,
            mode="next",
            json=json,
            task_id=parse_task_id(argument),
            count=DEFAULT_COUNT if count is None else parse_count(count),
        )
    return Invocation(_task_request(operation, argument), pipes_dir, json=json)
