"""A task's runs as `cassini -x ID -v` shows them, and the replies of acting on a task.

This module owns:
- `render_history`: HISTORY's reply -> a table, one run per line, oldest first: START
  (local time, as `-x`), EXIT (`-` when the run did not exit by itself), DURATION
  (`cassini.duration`'s form; `running` for a run in progress), OUTCOME and MARKS (`by
  hand`, `catch-up`, `stdout cut`, `stderr cut`); with `--json`, one document holding
  every field of every run;
- `run_marks`, `result_text` and `is_failure`: a run's marks, its one-word result (the exit
  code, or the outcome) and whether it failed, shared with the status table;
- `render_kill`: KILL's count (OUTPUT-EX's bytes are cassini.cli's: `-o` shows them).

Rules: pure (the local-time function comes in); a run in progress is one whose `end` is
before its `start` (the daemon's HISTORY lists one with `end` 0). Control bytes never
reach the terminal: nothing here prints a task's own text.
"""

from __future__ import annotations

from cassini.duration import format_duration
from cassini.replies import Outcome, local_text, out_of_range

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from cassini.cli import Invocation, LocalTime
    from saturnd.protocol import HistoryReply, KillReply, Request
    from saturnd.runrecord import RunRecord

__all__ = [
    "is_failure",
    "is_running",
    "render_history",
    "render_kill",
    "result_text",
    "run_document",
    "run_marks",
]

_NO_EXIT = 0xFFFF
_HEADER = ("START", "EXIT", "DURATION", "OUTCOME", "MARKS")


def is_running(run: RunRecord) -> bool:
    """True for a run still in progress (its end is not known yet)."""
    return run.end < run.start


def run_marks(run: RunRecord) -> list[str]:
    """What else is known of `run`, in words: `by hand`, `catch-up`, `stdout cut`, ..."""
    from saturnd.runrecord import BY_HAND, CAUGHT_UP, CUT_STDERR, CUT_STDOUT

    named = (
        (BY_HAND, "by hand"),
        (CAUGHT_UP, "catch-up"),
        (CUT_STDOUT, "stdout cut"),
        (CUT_STDERR, "stderr cut"),
    )
    return [words for flag, words in named if run.flags & flag]


def result_text(run: RunRecord) -> str:
    """The run's result in one word: its exit code when it exited, else its outcome."""
    from saturnd.runrecord import EXITED

    if is_running(run):
        return "running"
    if run.outcome == EXITED:
        return "signal" if run.exitcode == _NO_EXIT else str(run.exitcode)
    return run.outcome_name


def is_failure(run: RunRecord) -> bool:
    """True when `run` ended badly: a non-zero exit, a signal, a timeout, a kill, or it
    could not start (a skipped run is not a failure: the previous one was running)."""
    from saturnd.runrecord import EXITED, SKIPPED

    if is_running(run) or run.outcome == SKIPPED:
        return False
    return run.outcome != EXITED or run.exitcode != 0


def run_document(run: RunRecord, localtime: LocalTime) -> dict[str, object]:
    """`run` as `--json` shows it: every field, times as epoch seconds and local text."""
    running = is_running(run)
    return {
        "start": {"time": run.start, "local": local_text(localtime, run.start)},
        "end": None if running else {"time": run.end, "local": local_text(localtime, run.end)},
        "duration": None if running else run.duration,
        "exitcode": None if running else run.exitcode,
        "outcome": "running" if running else run.outcome_name,
        "result": result_text(run),
        "failed": is_failure(run),
        "by_hand": "by hand" in run_marks(run),
        "catch_up": "catch-up" in run_marks(run),
        "stdout_cut": "stdout cut" in run_marks(run),
        "stderr_cut": "stderr cut" in run_marks(run),
        "pid": run.pid,
    }


def columns(rows: list[tuple[str, ...]]) -> str:
    """`rows` aligned in columns two spaces apart, the last one unpadded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip() + "\n")
    return "".join(lines)


def render_history(invocation: Invocation, reply: HistoryReply, localtime: LocalTime) -> Outcome:
    """`-x ID -v` (or with `--json`): every run HISTORY keeps, oldest first."""
    if invocation.json:
        import json

        document = [run_document(run, localtime) for run in reply.runs]
        return Outcome(json.dumps(document, ensure_ascii=True).encode("ascii") + b"\n")
    rows: list[tuple[str, ...]] = [_HEADER]
    for run in reply.runs:
        start = local_text(localtime, run.start)
        if start is None:
            return out_of_range(run.start)
        running = is_running(run)
        exited = not running and run.outcome == 0 and run.exitcode != _NO_EXIT
        rows.append(
            (
                start,
                str(run.exitcode) if exited else "-",
                "running" if running else format_duration(max(run.duration, 0)),
                "running" if running else run.outcome_name,
                ", ".join(run_marks(run)),
            )
        )
    return Outcome(columns(rows).encode() if reply.runs else b"")


def render_kill(request: Request, reply: KillReply) -> Outcome:
    """`--kill ID`: how many runs in progress were told to stop (0 is not an error)."""
    task_id = getattr(request, "task_id", None)
    if reply.count == 0:
        return Outcome(f"task {task_id} has no run in progress\n".encode())
    runs = "run" if reply.count == 1 else "runs"
    return Outcome(f"stopping {reply.count} {runs} of task {task_id}\n".encode())
