"""crontab lines out and in, sans I/O: `cassini --export` and `cassini --import`.

This module owns:
- `export`: tasks -> the text of a crontab, and the tasks it could not write;
- `parse`: the bytes of a crontab -> one CREATE request per task line, or the refused
  lines with their numbers and reasons.

Rules:
- A task is written `M H * * DOW COMMAND`: the canonical timing fields, day of month and
  month `*`, then the arguments joined by spaces, each quoted by `shlex.quote`. cron
  hands COMMAND to /bin/sh; `shlex.quote` quotes everything sh would interpret, so sh
  gives back the task's argv, and so does `parse` (`shlex.split`). A first argument
  that sh would take for a keyword or an assignment (`if`, `A=b`) is quoted too.
- Bytes: an argument is text decoded as UTF-8 with `surrogateescape`, and encoded back
  the same way, so bytes that are not UTF-8 go out and come back unchanged (shlex
  quotes them like any non-ASCII character). This does not depend on the locale.
- `%`: cron ends the command at a `%` (the rest becomes its standard input) and turns
  `\\%` into `%`. `export` writes every `%` as `\\%` (and keeps a backslash of the
  argument away from it, which cron cannot escape, by closing the quote between the
  two); `parse` undoes `\\%` exactly as cron does and refuses a bare `%`.
- saturnd runs argv without a shell, cron runs every command with `/bin/sh -c`. A
  command that means the same either way (no unquoted operators, globs, `$` or
  backquotes outside single quotes, `~` or `#` at the start of a word, keyword or
  assignment as the first word, brace lists) is split with `shlex.split`, so it lists
  as the user wrote it and an export comes back identical. Any other command becomes
  `/bin/sh -c COMMAND`, exactly what cron would have run: a crontab full of
  `>/dev/null 2>&1` imports as it is, instead of being refused.
- What saturnd cannot express is refused with the reason: a day of month or month
  other than `*`, `@reboot`, `@monthly`, `@yearly`, environment settings.
- Lines may end with CRLF.
- All or nothing: `parse` returns every request or every problem, so a caller creates
  nothing when one line is bad.
"""

from __future__ import annotations

import re
import shlex

from cassini.cli import UsageError, make_create_request

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Iterable

    from saturnd.protocol import Request, TaskEntry

__all__ = ["HEADER", "Entry", "Problem", "export", "parse"]

HEADER = b"# saturnd tasks, written by cassini --export (cassini --import reads them back)\n"
"""The first line of an export: a comment, so any crontab reader skips it."""

# The @ shortcuts saturnd can express: minutes, hours, days of week.
_SPECIALS = {
    "@hourly": ("0", "*", "*"),
    "@daily": ("0", "0", "*"),
    "@midnight": ("0", "0", "*"),
    "@weekly": ("0", "0", "0"),
}
_MONTHLY = "runs on a day of the month, which saturnd cannot express"
_REFUSED_SPECIALS = {
    "@reboot": "@reboot is not supported: saturnd runs tasks at times of day, not at start-up",
    "@monthly": f"@monthly {_MONTHLY}",
    "@yearly": f"@yearly {_MONTHLY}",
    "@annually": f"@annually {_MONTHLY}",
}

# cron's field separators; the command is the rest of the line after them.
_BLANKS = re.compile(r"[ \t]+")
# `NAME=value`, `NAME = value`, `"NAME"=value`: cron reads such a line as a setting.
_SETTING = re.compile(r"""(?:"[^"]*"|'[^']*'|[^ \t="']+)[ \t]*=""")

# What shlex.split takes for blanks (sh itself splits on spaces and tabs only).
_SPLIT_BLANKS = " \t\r\n"
_OPERATORS = frozenset(";&|<>()")
_GLOBS = frozenset("*?[")
# Words sh reads as syntax when they come first, unquoted (POSIX reserved words).
_KEYWORDS = frozenset(
    [
        "!",
        "{",
        "}",
        "case",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "fi",
        "for",
        "if",
        "in",
        "then",
        "until",
        "while",
    ]
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


class Entry:
    """A task line: its number (from 1) and the CREATE request it makes."""

    __slots__ = ("line", "request")

    def __init__(self, line: int, request: Request) -> None:
        self.line = line
        self.request = request

    def __repr__(self) -> str:
        return f"Entry({self.line}, {self.request!r})"


class Problem:
    """A refused line: its number (from 1) and why, in one line."""

    __slots__ = ("line", "reason")

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Problem):
            return NotImplemented
        return (self.line, self.reason) == (other.line, other.reason)

    def __hash__(self) -> int:
        return hash((self.line, self.reason))

    def __repr__(self) -> str:
        return f"Problem({self.line}, {self.reason!r})"


class _Refused(ValueError):
    """A line that cannot become a task; the message is the reason."""


# --- export ------------------------------------------------------------------------


def _quote(text: str, first: bool) -> str:
    """One argument as sh and `parse` both read back unchanged, with `%` escaped for cron."""
    quoted = shlex.quote(text)
    if first and quoted == text and (text in _KEYWORDS or _ASSIGNMENT.match(text)):
        quoted = f"'{text}'"  # a bare word that sh would not run as a command name
    # `\%` can only come from the argument itself, inside single quotes: end the quote
    # after the backslash, since cron would read `\\%` as a backslash and a bare `%`.
    return quoted.replace("\\%", "\\''%").replace("%", "\\%")


def _unexportable(task: TaskEntry) -> str | None:
    from saturnd.timing import FULL_DAYSOFWEEK, FULL_HOURS, FULL_MINUTES

    timing = task.timing
    if not (
        timing.minutes & FULL_MINUTES
        and timing.hours & FULL_HOURS
        and timing.daysofweek & FULL_DAYSOFWEEK
    ):
        return "it never runs (a timing field has no value)"
    if any(b"\n" in arg for arg in task.argv):
        return "an argument holds a newline, which a crontab line cannot"
    if any(b"\0" in arg for arg in task.argv):
        return "an argument holds a NUL byte, which a crontab line cannot"
    return None


def export(tasks: Iterable[TaskEntry]) -> tuple[bytes, list[str]]:
    """The crontab of `tasks`, and one message per task it could not write.

    A task that cannot be written is left as a comment naming it, so the file still
    says something is missing.
    """
    lines = [HEADER]
    problems: list[str] = []
    for task in tasks:
        reason = _unexportable(task)
        if reason is not None:
            lines.append(f"# task {task.task_id} is not exported: {reason}\n".encode())
            problems.append(f"task {task.task_id} is not exported: {reason}")
            continue
        minutes, hours, days = task.timing.format().split(" ")
        words = [
            _quote(arg.decode("utf-8", "surrogateescape"), index == 0)
            for index, arg in enumerate(task.argv)
        ]
        line = f"{minutes} {hours} * * {days} {' '.join(words)}\n"
        lines.append(line.encode("utf-8", "surrogateescape"))
    return b"".join(lines), problems


# --- import --------------------------------------------------------------------------


def _cron_unescape(command: str) -> str:
    """The command as cron hands it to the shell: `\\%` is `%`, a bare `%` is refused."""
    out: list[str] = []
    escaped = False
    for ch in command:
        if escaped:
            escaped = False
            if ch == "%":
                out[-1] = "%"  # cron drops the backslash of `\%`, and only of that
                continue
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            raise _Refused(
                "a '%' in the command would be cron's standard-input separator, "
                "which saturnd does not have (write \\% for a percent sign)"
            )
        out.append(ch)
    return "".join(out)


def _shell_syntax(command: str) -> str | None:
    """What in `command` /bin/sh would read otherwise than `shlex.split`, or None.

    Follows sh's quoting: nothing is special inside single quotes; inside double quotes
    only `$`, a backquote and the backslash are (shlex does not expand the first two,
    and keeps the backslash of `\\$`, so both are refused there).
    """
    quote = ""
    at_word_start = True
    first: list[str] | None = []  # the first word as written, until it ends
    brace = comma = False  # an unquoted `{`, then `,`, in the current word
    index = 0
    while index < len(command):
        ch = command[index]
        written = ch
        if quote:
            if ch == quote:
                quote = ""
            elif quote == '"' and ch in "$`":
                return f"{ch!r} inside double quotes"
            elif quote == '"' and ch == "\\" and index + 1 < len(command):
                if command[index + 1] in "$`":
                    return f"{command[index + 1]!r} inside double quotes"
                index += 1
                written += command[index]
        elif ch in _SPLIT_BLANKS:
            if not at_word_start and first is not None:
                reason = _first_word(first)
                if reason:
                    return reason
                first = None
            at_word_start = True
            brace = comma = False
            index += 1
            continue
        elif ch == "\\":
            if index + 1 < len(command):
                index += 1
                written += command[index]
        elif ch in "'\"":
            quote = ch
        elif ch in _OPERATORS or ch in "$`":
            return f"unquoted {ch!r}"
        elif ch in _GLOBS:
            return f"unquoted {ch!r}, a file name pattern"
        elif at_word_start and ch in "~#":
            return f"unquoted {ch!r} at the start of a word"
        elif ch == "{":
            brace = True
        elif ch == "," and brace:
            comma = True
        elif ch == "}" and comma:
            return "unquoted braces around a list, a brace expansion in some shells"
        at_word_start = False
        if first is not None:
            first.append(written)
        index += 1
    return _first_word(first) if first else None


def _first_word(written: list[str]) -> str | None:
    word = "".join(written)
    if word in _KEYWORDS:
        return f"{word!r} is a shell keyword"
    if _ASSIGNMENT.match(word):
        return f"{word!r} sets a shell variable"
    return None


def _argv(command: str) -> tuple[bytes, ...]:
    """The argv of a command: cron's `%` rule, then sh's words as shlex splits them."""
    text = _cron_unescape(command)
    if _shell_syntax(text):
        # What cron itself would run; sh reports its own syntax errors at run time.
        return (b"/bin/sh", b"-c", text.encode("utf-8", "surrogateescape"))
    try:
        words = shlex.split(text)
    except ValueError as error:  # an open quote, a backslash at the end
        raise _Refused(f"cannot split the command: {str(error).lower()}") from None
    return tuple(word.encode("utf-8", "surrogateescape") for word in words)


def _fields(line: str) -> tuple[tuple[str, str, str], str]:
    """The (minutes, hours, days of week) and the command of a task line."""
    if line.startswith("@"):
        pieces = _BLANKS.split(line, maxsplit=1)
        keyword, command = pieces[0], pieces[1] if len(pieces) > 1 else ""
        if keyword in _REFUSED_SPECIALS:
            raise _Refused(_REFUSED_SPECIALS[keyword])
        if keyword not in _SPECIALS:
            raise _Refused(f"unknown special time {keyword!r}")
        if not command:
            raise _Refused(f"{keyword} needs a command after it")
        return _SPECIALS[keyword], command
    parts = _BLANKS.split(line, maxsplit=5)
    if len(parts) < 6:
        raise _Refused("expected five time fields and a command")
    minutes, hours, monthdays, months, days, command = parts
    for name, value in (("day of month", monthdays), ("month", months)):
        if value != "*":
            raise _Refused(
                f"the {name} field is {value!r}, not '*': saturnd schedules tasks by "
                "minute, hour and day of week only"
            )
    if command.startswith("*"):
        raise _Refused("the command starts with '*': one time field too many?")
    return (minutes, hours, days), command


def _parse_line(line: str) -> Request | None:
    """The CREATE request of one line, None for a blank line or a comment."""
    from saturnd.timing import Timing, TimingError

    text = line.strip(" \t")
    if not text or text.startswith("#"):
        return None
    if "\0" in text:
        raise _Refused("the line holds a NUL byte")
    if _SETTING.match(text):
        raise _Refused(
            "environment settings (NAME=value) are not supported: "
            "tasks run in the daemon's environment"
        )
    (minutes, hours, days), command = _fields(text)
    try:
        timing = Timing.parse(minutes, hours, days)
    except TimingError as error:
        raise _Refused(str(error)) from None
    try:
        return make_create_request(timing, _argv(command))
    except UsageError as error:
        raise _Refused(str(error)) from None


def parse(data: bytes) -> tuple[list[Entry], list[Problem]]:
    """Every task line of a crontab as a CREATE request, or every refused line.

    Blank lines and comments (`#` first on the line) are skipped. When any line is
    refused, the entries are empty: nothing should be created.
    """
    entries: list[Entry] = []
    problems: list[Problem] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline ending the last line
    for number, raw in enumerate(lines, 1):
        # A file written with CRLF line ends: cron would keep the carriage return in
        # the command (and the shell would not find it); take it for the line end.
        raw = raw.removesuffix(b"\r")
        try:
            request = _parse_line(raw.decode("utf-8", "surrogateescape"))
        except _Refused as refused:
            problems.append(Problem(number, str(refused)))
            continue
        if request is not None:
            entries.append(Entry(number, request))
    return ([] if problems else entries), problems
