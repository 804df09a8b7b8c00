"""Writing a crontab, sans I/O: what `--export` prints and `--edit` opens.

This module owns `export` / `export_tasks`: tasks -> the text of a crontab that
`cassini.crontab.parse` reads back into equal `Task`s, and the tasks it could not write.

For each task it writes the settings that change since the previous line (and
`CRON_TZ`), then `Timing.format_cron`'s compact schedule and `COMMAND[%STDIN]`: a
shell's command as written, other argv quoted for sh (`exec` first when the program has
a builtin's name). cron cannot unset a variable, so tasks go with fewer variable names
(and without MAILTO) first, in whichever of two orders leaves out fewer; a task that
cannot follow is left out as a comment saying why. A task's run policies go on a
`#saturnd:` line just before its line, and a paused task's line is written after
`#saturnd-paused: ` (cassini.policyline): cron ignores both, `--import` reads them.
Every line is read back with `parse` before it is written: what would not come back as
an equal `Task` is left out likewise.
"""

from __future__ import annotations

import shlex

from cassini.crontab import (
    BUILTINS,
    CSPACE,
    KEYWORDS,
    NAME_CHARS,
    State,
    first_word_problem,
    parse,
    stdin_text,
)
from cassini.policyline import PAUSED_PREFIX, write_policies

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from saturnd.protocol import TaskEntry
    from saturnd.task import Task

__all__ = ["HEADER", "export", "export_tasks"]

HEADER = b"# saturnd tasks, written by cassini --export (cassini --import reads them back)\n"
"""The first line of an export: a comment, so any crontab reader skips it."""


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _quote(text: str, first: bool) -> str:
    """One argument as sh reads it back unchanged, with `%` escaped for cron."""
    quoted = shlex.quote(text)
    if first and quoted == text and (text in KEYWORDS or first_word_problem([text])):
        quoted = f"'{text}'"  # a bare word that sh would not run as a command name
    # `\%` can only come from the argument itself, inside single quotes: end the quote
    # after the backslash, since cron would read `\\%` as a backslash and a bare `%`.
    return quoted.replace("\\%", "\\''%").replace("%", "\\%")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _command_texts(task: Task, shell: str) -> list[str]:
    """Candidates for the command part of the task's line (before any `%`), `%` escaped:
    the shell's command as written when the task is `[shell, -c, command]`, then the
    arguments quoted for sh."""
    argv = task.argv
    texts = []
    if len(argv) == 3 and argv[1] == b"-c" and _decode(argv[0]) == shell:
        command = _decode(argv[2])
        if "\\%" not in command:
            texts.append(command.replace("%", "\\%"))
    words = [_quote(_decode(arg), index == 0) for index, arg in enumerate(argv)]
    if _decode(argv[0]) in BUILTINS:
        words.insert(0, "exec")
    texts.append(" ".join(words))
    return texts


def _stdin_suffix(stdin: bytes) -> str | None:
    """`%` and the text cron turns into `stdin` ("" for no input), or None if none does."""
    if not stdin:
        return ""
    text = _decode(stdin)
    # Without its final newline first (cron adds it back): how people write it.
    for body in (text[:-1], text) if text.endswith("\n") else (text,):
        written = body.replace("%", "\\%").replace("\n", "%")
        # (Not ending in a CR, which the reader would take for a CRLF line end.)
        if body and not written.endswith("\r") and stdin_text(written) == text:
            return "%" + written
    return None


def _env_lines(current: dict[str, str], wanted: dict[str, str]) -> list[str] | str:
    """The lines that turn the settings `current` into `wanted`, or why none can."""
    names = list(current)
    if list(wanted)[: len(names)] != names:
        return "its environment variables cannot follow the earlier lines' (cron cannot unset one)"
    return [
        _setting_line(name, value) for name, value in wanted.items() if current.get(name) != value
    ]


def _setting_line(name: str, value: str) -> str:
    if all(c in NAME_CHARS for c in name) and name:
        shown = name
    else:
        shown = f'"{name}"' if '"' not in name else f"'{name}'"
    if value == value.strip(CSPACE) and value and value[0] not in "'\"":
        return f"{shown}={value}"
    return f'{shown}="{value}"' if '"' not in value else f"{shown}='{value}'"


def _unexportable(task: TaskEntry) -> str | None:
    # A set with no value is written as cron reads one: a range backwards (cronform.py).
    if any(b"\n" in arg for arg in task.argv):
        return "an argument holds a newline, which a crontab line cannot"
    if any(b"\0" in arg for arg in task.argv):
        return "an argument holds a NUL byte, which a crontab line cannot"
    if b"\0" in task.extras.stdin:
        return "its standard input holds a NUL byte, which a crontab line cannot"
    return None


def _names(task: TaskEntry) -> tuple[bytes, ...]:
    return tuple(name for name, _ in task.extras.env)


# Two orders of the tasks: cron can add a variable and set MAILTO, never remove either,
# so tasks with fewer names go first, and those without MAILTO first; which of the two
# comes first decides what is lost when the tasks cannot all follow one another.
_ORDERS: tuple[Callable[[TaskEntry], tuple[object, ...]], ...] = (
    lambda task: (_names(task), task.extras.mailto is not None, task.task_id),
    lambda task: (task.extras.mailto is not None, _names(task), task.task_id),
)


def export(tasks: Iterable[TaskEntry]) -> tuple[bytes, list[str]]:
    """The crontab of `tasks`, and one message per task it could not write.

    A task that cannot be written is left as a comment naming it, so the file still
    says something is missing.
    """
    text, skipped = export_tasks(tasks)
    return text, [f"task {task.task_id} is not exported: {reason}" for task, reason in skipped]


def export_tasks(tasks: Iterable[TaskEntry]) -> tuple[bytes, list[tuple[TaskEntry, str]]]:
    """`export`, with the tasks it could not write and why (the fewest of two orders)."""
    tasks = list(tasks)
    results = [_export(sorted(tasks, key=order)) for order in _ORDERS]
    return min(results, key=lambda result: len(result[1]))


def _export(tasks: list[TaskEntry]) -> tuple[bytes, list[tuple[TaskEntry, str]]]:
    lines = [HEADER]
    skipped: list[tuple[TaskEntry, str]] = []
    state = State()
    for task in tasks:
        reason = _unexportable(task)
        written: list[str] = []
        if reason is None:
            found = _task_lines(task, state)
            if isinstance(found, str):
                reason = found
            else:
                written = found
        if reason is not None:
            lines.append(f"# task {task.task_id} is not exported: {reason}\n".encode())
            skipped.append((task, reason))
            continue
        lines.extend(_encode(line + "\n") for line in written)
    return b"".join(lines), skipped


def _task_lines(task: TaskEntry, state: State) -> list[str] | str:
    """The lines that make `task` after `state` (which they update), or why none can."""
    extras = task.extras
    env = {_decode(name): _decode(value) for name, value in extras.env}
    if len(env) != len(extras.env):
        return "it sets a variable twice"
    if any(name in ("CRON_TZ", "MAILTO") for name in env):
        return "it sets CRON_TZ or MAILTO as a variable, which a crontab line cannot"
    if any("\n" in text for text in (*env, *env.values())):
        return "an environment variable holds a newline, which a crontab line cannot"
    lines = _env_lines(state.env, env)
    if isinstance(lines, str):
        return lines
    mailto = None if extras.mailto is None else _decode(extras.mailto)
    if mailto != state.mailto:
        if mailto is None:
            return "its MAILTO is not set, but an earlier task's is (cron cannot unset it)"
        if "\n" in mailto:
            return "its MAILTO holds a newline, which a crontab line cannot"
        lines.append(_setting_line("MAILTO", mailto))
    zone = task.timing.zone
    if zone != state.zone:
        lines.append(_setting_line("CRON_TZ", zone))
    new = State()
    new.env, new.mailto, new.zone = env, mailto, zone
    try:
        schedule = task.timing.format_cron()  # compact: `*/15`, `1-59/2`
    except ValueError:
        return "no crontab schedule means its timing"
    stdin = _stdin_suffix(extras.stdin)
    if stdin is None:
        return "no text after a % gives its standard input"
    try:
        policy = write_policies(extras)
    except ValueError as error:
        return str(error)
    before = [] if policy is None else [policy]
    paused = f"{PAUSED_PREFIX} " if extras.paused else ""
    for text in _command_texts(task.task, new.shell):
        line = f"{paused}{schedule} {text}{stdin}"
        # Read the line back as `parse` will: only what comes back equal is written.
        data = _encode("\n".join([*_setting_lines(new), *before, line]) + "\n")
        back, problems, _ = parse(data)
        if not problems and len(back) == 1 and back[0].task == task.task:
            state.env, state.mailto, state.zone = env, mailto, zone
            return [*lines, *before, line]
    return "no crontab line makes cron run it the same way"


def _setting_lines(state: State) -> list[str]:
    """Lines that set every setting of `state` from nothing (for checking a line)."""
    lines = [_setting_line(name, value) for name, value in state.env.items()]
    if state.mailto is not None:
        lines.append(_setting_line("MAILTO", state.mailto))
    if state.zone:
        lines.append(_setting_line("CRON_TZ", state.zone))
    return lines
