"""What cassini prints for a reply, sans I/O: `Outcome`, `render` and `respond`.

This module owns:
- `Outcome`: bytes for stdout, text for stderr, an exit status;
- `render`: a request and its reply -> an `Outcome`, for the outputs of PROTOCOL.md;
  `respond` does the same for an `Invocation` (cassini.cli), handing the newer outputs
  (`-n`, `-l -v -v`, `--json`, `--export`) to `cassini.output`, `-x -v` to
  `cassini.history`, `-l -v` to `cassini.table` and `--export-k8s` to
  `cassini.k8sexport`;
- `task_line`: a task as `-l` lists it (PROTOCOL.md's line, plus what it cannot say),
  with `timing_text` and `escape`; `local_text`, a run's time as the outputs show it.

Rules: pure (the only environment-dependent step, epoch seconds to local time, is a
function the caller passes in). Like cassini.cli, it imports nothing when it loads:
`saturnd.protocol` and `saturnd.timing` come in with the functions that need them.
"""

from __future__ import annotations

# `typing.TYPE_CHECKING` would import `typing`; mypy treats any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import time
    from collections.abc import Callable, Mapping, Sequence

    from cassini.cli import Invocation
    from saturnd.protocol import (
        CreateReply,
        ErrorReply,
        KillReply,
        ListExReply,
        ListReply,
        OkReply,
        OutputExReply,
        OutputReply,
        Reply,
        Request,
        TaskEntry,
        TimesExitcodesReply,
    )
    from saturnd.runrecord import RunRecord
    from saturnd.timing import Timing

    LocalTime = Callable[[int], time.struct_time]
    """Epoch seconds -> local wall-clock time, i.e. `time.localtime`."""

__all__ = [
    "CUT_MESSAGE",
    "Outcome",
    "escape",
    "local_text",
    "out_of_range",
    "render",
    "respond",
    "task_line",
    "timing_text",
]

CUT_MESSAGE = "cassini: output cut at the cap\n"
"""What stderr says after an output that the daemon cut at its size cap."""


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


# --- output ---------------------------------------------------------------------


def _render_ok(request: Request, reply: OkReply, localtime: LocalTime) -> Outcome:
    return Outcome()


def _render_error(request: Request, reply: ErrorReply, localtime: LocalTime) -> Outcome:
    from saturnd.protocol import ERR_MESSAGE, ERR_NEVER_RAN, ERR_NOT_FOUND

    task_id = getattr(request, "task_id", None)
    never_ran = f"task {task_id} has not run yet"
    start = getattr(request, "start", 0)
    if start:  # OUTPUT-EX for one run: that run's output is not (or no longer) kept
        never_ran = f"task {task_id} keeps no output of a run started at {start}"
        shown = local_text(localtime, start)
        if shown is not None:
            never_ran += f" ({shown})"
    messages = {
        ERR_NOT_FOUND: f"no task with id {task_id}",
        ERR_NEVER_RAN: never_ran,
        # Our daemon's reason, on the socket: printable characters only, on one line.
        ERR_MESSAGE: "".join(c if c.isprintable() else " " for c in reply.message),
    }
    message = messages.get(reply.code, f"the daemon answered error {reply.code.hex(' ')}")
    return Outcome(stderr=f"cassini: {message}\n", status=1)


# Control bytes (C0 and DEL) as `-l` shows them: a newline in an argument must not start
# what looks like another task line, nor an escape sequence reach the terminal.
_CONTROLS = bytes([*range(0x20), 0x7F])
_ESCAPES = {0x09: b"\\t", 0x0A: b"\\n", 0x0D: b"\\r"}


def escape(data: bytes) -> bytes:
    """`data` with each control byte written `\\n`, `\\t`, `\\r` or `\\xHH`.

    Other bytes, backslashes included, are unchanged, so a listing of ordinary commands
    stays PROTOCOL.md's byte for byte; `--json` is the exact form.
    """
    if len(data.translate(None, _CONTROLS)) == len(data):  # the common case, at C speed
        return data
    return b"".join(
        _ESCAPES.get(byte, b"\\x%02x" % byte) if byte in _CONTROLS else bytes((byte,))
        for byte in data
    )


def timing_text(timing: Timing) -> str:
    """The fields of a task's line: `MIN HOUR DOW`, then only what they cannot say.

    `dom=DAYS` (days of month; the day must be in both sets), `or-dom=DAYS` (cron's rule
    when both day fields are restricted: in either set), `mon=MONTHS`, `tz=ZONE`; an
    @reboot task is `- - - @reboot`. Sets are canonical numbers, like the first three.
    """
    from saturnd.timing import FULL_DAYSOFMONTH, FULL_MONTHS, format_field

    if timing.reboot:
        words = ["- - - @reboot"]
    else:
        words = [timing.format()]
        if timing.daysofmonth != FULL_DAYSOFMONTH:
            key = "or-dom" if timing.days_or else "dom"
            words.append(f"{key}={format_field('daysofmonth', timing.daysofmonth)}")
        if timing.months != FULL_MONTHS:
            words.append(f"mon={format_field('months', timing.months)}")
    if timing.zone:
        words.append(f"tz={timing.zone}")
    return " ".join(words)


def task_line(task: TaskEntry) -> bytes:
    """A task as `-l` lists it: `ID: MIN HOUR DOW [EXTRA...] ARGV0 ARGV1 ...` and a newline.

    EXTRA are `timing_text`'s words beyond the course's three fields; control bytes in
    the arguments are escaped (`escape`).
    """
    head = f"{task.task_id}: {timing_text(task.timing)} ".encode()
    return escape(head) + b" ".join(escape(arg) for arg in task.argv) + b"\n"


def _render_list(request: Request, reply: ListReply | ListExReply, localtime: LocalTime) -> Outcome:
    return Outcome(stdout=b"".join(task_line(task) for task in reply.tasks))


def _render_create(request: Request, reply: CreateReply, localtime: LocalTime) -> Outcome:
    return Outcome(stdout=b"%d\n" % reply.task_id)


def local_text(localtime: LocalTime, seconds: int) -> str | None:
    """`YYYY-MM-DD HH:MM:SS`: epoch `seconds` in local time, or None when out of range."""
    try:
        t = localtime(seconds)
    except (OverflowError, OSError, ValueError):
        # An int64 can hold times that no calendar of the C library can show.
        return None
    # Formatted by hand rather than by strftime: %Y is not zero-padded before year 1000.
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


def out_of_range(seconds: int) -> Outcome:
    """The error for a run time that `local_text` cannot show."""
    message = f"malformed reply from daemon: run time {seconds} is out of range"
    return Outcome(stderr=f"cassini: {message}\n", status=1)


def _render_runs(request: Request, reply: TimesExitcodesReply, localtime: LocalTime) -> Outcome:
    lines = []
    for run in reply.runs:
        text = local_text(localtime, run.time)
        if text is None:
            return out_of_range(run.time)
        lines.append(f"{text} {run.exitcode}\n")
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
        protocol.ListExReply: _render_list,
        protocol.CreateReply: _render_create,
        protocol.TimesExitcodesReply: _render_runs,
        protocol.OutputReply: _render_output,
        protocol.KillReply: _render_kill,
        protocol.OutputExReply: _render_output_ex,
    }
    return renderers[type(reply)](request, reply, localtime)


def _render_kill(request: Request, reply: KillReply, localtime: LocalTime) -> Outcome:
    """KILL's reply, by cassini.history (loaded only for it)."""
    from cassini import history

    return history.render_kill(request, reply)


def _render_output_ex(request: Request, reply: OutputExReply, localtime: LocalTime) -> Outcome:
    """`-o`/`-e` (with or without `--start`) over saturnd's socket: the bytes unchanged, and
    one line on stderr when the daemon cut the output at its cap."""
    return Outcome(reply.output, CUT_MESSAGE if reply.cut else "")


def respond(
    invocation: Invocation,
    reply: Reply,
    localtime: LocalTime,
    now: float,
    *,
    histories: Mapping[int, Sequence[RunRecord] | None] | None = None,
    color: bool = False,
) -> Outcome:
    """What to print, and the exit status, for `reply` to `invocation`'s request.

    `now` (epoch seconds) is where `-n` and `-l -v` start looking for the next runs.
    `histories` (task id -> its HISTORY runs, None where unknown) and `color` (red
    failures) are the status table's (`-l -v`). The plain outputs stay here; the others
    load `cassini.output`, `cassini.history` or `cassini.table` only when asked for.
    """
    from saturnd.protocol import HistoryReply, ListExReply, ListReply

    if invocation.mode == "plain" and not invocation.json:
        return render(invocation.request, reply, localtime)
    if invocation.mode == "history" and isinstance(reply, HistoryReply):
        from cassini import history

        return history.render_history(invocation, reply, localtime)
    if invocation.mode == "table" and isinstance(reply, ListReply | ListExReply):
        from cassini import table

        return table.render_table(
            invocation, reply.tasks, histories or {}, localtime, now, color=color
        )
    if invocation.mode == "export-k8s" and isinstance(reply, ListReply | ListExReply):
        from cassini.k8sexport import export_k8s

        text, warnings, skipped = export_k8s(reply.tasks, invocation.image, now)
        notes = [f"cassini: {warning}\n" for warning in warnings]
        notes += [f"cassini: task {task.task_id} is not exported: {why}\n" for task, why in skipped]
        return Outcome(text, "".join(notes), 1 if skipped else 0)
    if invocation.mode in ("history", "table", "export-k8s"):  # an error reply
        return render(invocation.request, reply, localtime)
    from cassini import output

    return output.render(invocation, reply, localtime, now)
