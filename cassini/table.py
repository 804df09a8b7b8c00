"""`cassini -l -v`: the tasks at a glance, as `systemctl list-timers` shows timers.

This module owns `render_table`: the tasks of LIST-EX and each one's HISTORY -> one line
per task under a header, ID, NEXT (local time of the next start; `paused`, `@reboot`),
LEFT (time until then), LAST (start of the last run), RESULT (its exit code, or its
outcome: `timed out`, `killed`, `skipped`, `could not start`, `signal`; `running` while a
run is in progress) and TASK (the `-l` line's schedule and command). With `--json`, one
document: each task's `-l --json` fields, plus `next`, `description`, `paused`,
`running`, `last` (the last run, as `-x -v --json` shows it), `result` and `failed`.

Rules:
- Pure: `now`, the local-time function and `color` come in. Colour (red) marks a failed
  RESULT only, and only when the caller says so (a terminal, NO_COLOR unset): the
  table's text is otherwise plain, aligned on the uncoloured widths.
- A task whose history is unknown (`None`: a daemon without HISTORY, over the FIFOs)
  shows `-` for LAST and RESULT, never an error: the table stays useful.
- Control bytes of commands are escaped as `-l` does.
"""

from __future__ import annotations

from cassini.duration import format_duration
from cassini.history import columns, is_failure, is_running, result_text, run_document
from cassini.replies import Outcome, escape, local_text, timing_text

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cassini.cli import Invocation, LocalTime
    from saturnd.protocol import TaskEntry
    from saturnd.runrecord import RunRecord

__all__ = ["HEADER", "RED", "RESET", "render_table"]

HEADER = ("ID", "NEXT", "LEFT", "LAST", "RESULT", "TASK")
"""The table's column names."""
RED = "\x1b[31m"
RESET = "\x1b[0m"


def _left(seconds: int) -> str:
    """Time until a start, to the minute once it is an hour or more away."""
    if seconds >= 3600:
        seconds -= seconds % 60
    return format_duration(max(seconds, 0))


def render_table(
    invocation: Invocation,
    tasks: Sequence[TaskEntry],
    histories: Mapping[int, Sequence[RunRecord] | None],
    localtime: LocalTime,
    now: float,
    *,
    color: bool = False,
) -> Outcome:
    """The status table of `tasks` (or its JSON), their runs from `histories`."""
    from cassini.output import describe, task_json, task_starts

    rows: list[tuple[str, ...]] = [HEADER]
    failed_rows: set[int] = set()
    documents: list[dict[str, object]] = []
    for task in tasks:
        paused = task.extras.paused
        starts = task_starts(task.timing, now, 1, None)
        start = starts[0] if starts and not isinstance(starts, str) else None
        runs = histories.get(task.task_id)
        last = runs[-1] if runs else None
        running = bool(runs) and any(is_running(run) for run in runs or ())
        if running and last is not None and not is_running(last):
            last = next(run for run in reversed(runs or ()) if is_running(run))
        failed = last is not None and is_failure(last)
        if invocation.json:
            document = task_json(task)
            shown = None if start is None or paused else start
            document["next"] = None if shown is None else _start(localtime, shown)
            document["description"] = describe(task.timing)
            document["paused"] = paused
            document["running"] = running
            document["last"] = None if last is None else run_document(last, localtime)
            document["result"] = None if last is None else result_text(last)
            document["failed"] = failed
            documents.append(document)
            continue
        if paused:
            next_text, left = "paused", "-"
        elif task.timing.reboot:
            next_text, left = "@reboot", "-"
        elif start is None:
            next_text, left = "never", "-"
        else:
            next_text = local_text(localtime, start) or "-"
            left = _left(start - int(now))
        last_text = "-" if last is None else (local_text(localtime, last.start) or "-")
        result = "-" if last is None else result_text(last)
        if failed:
            failed_rows.add(len(rows))
        command = b" ".join(escape(arg) for arg in task.argv).decode("utf-8", "replace")
        what = escape(timing_text(task.timing).encode()).decode() + " " + command
        rows.append((str(task.task_id), next_text, left, last_text, result, what))
    if invocation.json:
        import json

        return Outcome(json.dumps(documents, ensure_ascii=True).encode("ascii") + b"\n")
    if len(rows) == 1:
        return Outcome()
    text = columns(rows)
    if color and failed_rows:
        text = _paint(text, rows, failed_rows)
    return Outcome(text.encode())


def _start(localtime: LocalTime, seconds: int) -> dict[str, object]:
    return {"time": seconds, "local": local_text(localtime, seconds)}


def _paint(text: str, rows: list[tuple[str, ...]], failed: set[int]) -> str:
    """`text` with the RESULT cell of each failed row in red (alignment unchanged)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    offset = sum(width + 2 for width in widths[:4])  # where RESULT starts
    lines = text.splitlines(keepends=True)
    for index in failed:
        line = lines[index]
        cell = rows[index][4]
        end = offset + len(cell)
        lines[index] = line[:offset] + RED + cell + RESET + line[end:]
    return "".join(lines)
