"""Reading a personal crontab, sans I/O: what `--import` and `--edit` take in.

This module owns:
- `parse`: the bytes of a crontab -> one `Entry` (line number, `Task`) per task line,
  or the refused lines (`Problem`: number, reason), and warnings;
- `command_argv`, `split_percent`, `setting`, `stdin_text`: the rules below, which
  cassini.cronwrite also uses to check what it writes.

What a line means is cron's meaning (cron(5), cronie's and Debian's reading):
- Environment lines: cronie's own state machine, redone here. A name, bare (up to a
  blank or `=`) or quoted (`'…'`, `"…"`); blanks; `=`; blanks; a value, quoted (then
  only blanks may follow) or bare (the rest of the line, trailing blanks dropped). A
  line that is not exactly that is a task line, so `NAME=` with no value is a broken
  task line for cron: it is refused here with a hint (`NAME=""`).
- A setting applies to the task lines after it; a later one of the same name replaces
  the value where the name first stood (cron's env_set), so `Extras.env` is the
  settings in force, in first-set order. `SHELL` is also the shell of the following
  commands. `CRON_TZ` is the zone of the following schedules (cronie), carried in
  `Timing.zone` and not in the environment; `TZ` is an ordinary variable (the task
  sees it; schedules ignore it, as in cronie). `MAILTO` goes to `Extras.mailto` (the
  daemon decides what mail means); without sendmail a non-empty MAILTO gets one warning.
- Task lines: five fields or an `@` name (`Timing.cron` reads them), then the command.
  cron's `%` rule (cronie's do_command.c): the first `%` not after a backslash ends the
  command, `\\%` there is `%` and any other backslash stays; after it, `%` is a newline,
  `\\%` is `%`, other backslashes stay, and a newline is added when the text does not
  end with one. That text is `Extras.stdin` (nothing after `%`: no input).
- The command is what cron runs: `[SHELL, "-c", command]`, except where running its
  words directly is provably the same, which needs all of: the shell is /bin/sh (the
  default; other shells have other syntax), no shell syntax (operators, redirections,
  `$`, backquotes, globs, `~`/`#` at a word start, brace lists, an assignment or a
  keyword first), and a first word that is no builtin of sh or bash, quoted or not
  (`exec`, `cd`, `echo`: `echo -e x` differs between dash and /bin/echo). One more
  form is split: `exec PROG ARG…` with PROG a builtin's name runs the program PROG
  found on PATH, builtins skipped: it is how `export` writes a task `echo hi`.
- A user name before the command (/etc/crontab's format) is refused, or dropped when it
  is the importing user's own name.
- saturnd's own comment lines (cassini.policyline): `#saturnd: OPTIONS` gives the next
  task line its run policies, `#saturnd-paused: LINE` is the task line of a paused task.
- The command runs to the end of the line, trailing blanks included (they matter after
  a `%`), as cron reads it. Lines may end with CRLF (the CR is dropped). All or
  nothing: when any line is refused, no entry is given.
"""

from __future__ import annotations

import shlex

from cassini.policyline import PAUSED_PREFIX, POLICY_PREFIX, read_policies

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Callable

    from saturnd.task import Task

__all__ = [
    "BUILTINS", "CSPACE", "DEFAULT_SHELL", "KEYWORDS", "NAME_CHARS", "Context", "Entry",
    "Problem", "State", "command_argv", "first_word_problem", "parse", "setting",
    "split_percent", "stdin_text",
]  # fmt: skip

DEFAULT_SHELL = "/bin/sh"
"""cron's shell when no SHELL line is in force."""

# What shlex.split takes for blanks (sh itself splits on spaces and tabs only).
_SPLIT_BLANKS = " \t\r\n"
_BLANKS = " \t"
CSPACE = " \t\n\v\f\r"  # C's isspace(), which cron's reading of settings uses
_OPERATORS = frozenset(";&|<>()")
_GLOBS = frozenset("*?[")
# Words sh reads as syntax when they come first, unquoted (POSIX reserved words, and
# bash's, since /bin/sh is bash on some systems).
# fmt: off
KEYWORDS = frozenset((
    "!", "{", "}", "[[", "]]", "case", "coproc", "do", "done", "elif", "else", "esac",
    "fi", "for", "function", "if", "in", "select", "then", "time", "until", "while",
))
BUILTINS = frozenset((
    # POSIX special builtins, then the regular builtins of dash and bash. Those that are
    # also programs (echo, printf, test, [, kill, pwd, true, false) behave otherwise in
    # details (`echo -e`, `pwd -P`, `true --help`), so they count as builtins too.
    ".", ":", "break", "continue", "eval", "exec", "exit", "export", "readonly",
    "return", "set", "shift", "times", "trap", "unset",
    "[", "alias", "bg", "bind", "builtin", "caller", "cd", "chdir", "command", "compgen",
    "complete", "compopt", "declare", "dirs", "disown", "echo", "enable", "false", "fc",
    "fg", "getopts", "hash", "help", "history", "jobs", "kill", "let", "local",
    "logout", "mapfile", "popd", "printf", "pushd", "pwd", "read", "readarray",
    "source", "suspend", "test", "true", "type", "typeset", "ulimit", "umask",
    "unalias", "wait",
))
# fmt: on
"""Command names that sh (dash or bash) runs itself rather than as a program."""

_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
NAME_CHARS = _NAME_START | frozenset("0123456789")


class Context:
    """What `parse` needs to know of the machine, given rather than looked up here.

    `user` is the importing user's name; `is_user(word)` says whether a word names a
    user that exists (and no program: then a line holding it is in system format);
    `has_sendmail` whether mail can be sent; `zone_exists(name)` whether a time zone is
    known.
    """

    __slots__ = ("has_sendmail", "is_user", "user", "zone_exists")

    def __init__(
        self,
        user: str = "",
        is_user: Callable[[str], bool] | None = None,
        has_sendmail: bool = True,
        zone_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self.user = user
        self.is_user: Callable[[str], bool] = is_user or (lambda word: False)
        self.has_sendmail = has_sendmail
        self.zone_exists: Callable[[str], bool] = zone_exists or (lambda name: True)


class Entry:
    """A task line: its number (from 1) and the task it makes."""

    __slots__ = ("line", "task")

    def __init__(self, line: int, task: Task) -> None:
        self.line = line
        self.task = task

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (self.line, self.task) == (other.line, other.task)

    def __hash__(self) -> int:
        return hash((self.line, self.task))

    def __repr__(self) -> str:
        return f"Entry({self.line}, {self.task!r})"


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


# --- environment lines -------------------------------------------------------------


def setting(line: str) -> tuple[str, str] | None:
    """(name, value) when cron reads `line` as an environment setting, else None.

    `line` has no line end; leading blanks are skipped, as cron skips them.
    """
    text = line.lstrip(CSPACE)
    index = 0
    name, index = _word(text, index, name=True)
    if name is None:
        return None
    while index < len(text) and text[index] in CSPACE:
        index += 1
    if index >= len(text) or text[index] != "=":
        return None
    index += 1
    while index < len(text) and text[index] in CSPACE:
        index += 1
    if index >= len(text):
        return None  # `NAME=`: for cron, a task line (a broken one)
    if text[index] in "'\"":
        value, index = _word(text, index, name=False)
        if value is None or text[index:].strip(CSPACE):
            return None  # unclosed quote, or something after the closing one
        return name, value
    return name, text[index:].rstrip(CSPACE)


def _word(text: str, index: int, *, name: bool) -> tuple[str | None, int]:
    """A quoted word at `index` (its text, the index after the closing quote), or for a
    name a bare one (up to a blank or `=`); None when it is not one."""
    if index < len(text) and text[index] in "'\"":
        quote = text[index]
        end = text.find(quote, index + 1)
        if end < 0 or (name and "=" in text[index + 1 : end]):
            return None, index
        return text[index + 1 : end], end + 1
    end = index
    while end < len(text) and text[end] not in CSPACE and text[end] != "=":
        end += 1
    return text[index:end], end


def _is_empty_setting(text: str) -> bool:
    """`NAME=` or `NAME =` alone: what cron does not take for a setting."""
    head, equals, rest = text.partition("=")
    return bool(equals) and not rest.strip(_BLANKS) and head.strip(_BLANKS).isidentifier()


# --- the % rule ----------------------------------------------------------------------


def split_percent(text: str) -> tuple[str, str | None]:
    """cron's reading of a command: (command, standard input or None when no `%`)."""
    out: list[str] = []
    index = 0
    while index < len(text):
        ch = text[index]
        if ch == "\\" and index + 1 < len(text):
            if text[index + 1] == "%":
                out.append("%")  # cron drops the backslash of `\%`, and only of that
            else:
                out.append(ch + text[index + 1])
            index += 2
            continue
        if ch == "%":
            return "".join(out), stdin_text(text[index + 1 :])
        out.append(ch)
        index += 1
    return "".join(out), None


def stdin_text(rest: str) -> str:
    """The input cron writes for the text after the first `%`."""
    if not rest:
        return ""
    out: list[str] = []
    escaped = need_newline = False
    for ch in rest:
        if escaped:
            if ch != "%":
                out.append("\\")
        elif ch == "%":
            ch = "\n"
        escaped = ch == "\\"
        if not escaped:
            out.append(ch)
            need_newline = ch != "\n"
    if escaped:
        out.append("\\")
    if need_newline:
        out.append("\n")
    return "".join(out)


# --- what the shell would do -----------------------------------------------------------


def _shell_syntax(command: str) -> str | None:
    """What in `command` /bin/sh would read otherwise than `shlex.split`, or None.

    Follows sh's quoting: nothing is special inside single quotes; inside double quotes
    only `$`, a backquote and the backslash are (shlex does not expand the first two,
    and keeps the backslash of `\\$`, so both count as syntax there).
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
                reason = first_word_problem(first)
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
    return first_word_problem(first) if first else None


def first_word_problem(written: list[str]) -> str | None:
    word = "".join(written)
    if word in KEYWORDS:
        return f"{word!r} is a shell keyword"
    head, equals, _ = word.partition("=")
    if equals and head[:1] in _NAME_START and all(c in NAME_CHARS for c in head):
        return f"{word!r} sets a shell variable"
    return None


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def command_argv(command: str, shell: str) -> tuple[bytes, ...]:
    """The argv that runs `command` (cron's `%` already applied) as `shell -c` would."""
    whole = (_encode(shell), b"-c", _encode(command))
    if shell != DEFAULT_SHELL or _shell_syntax(command):
        return whole
    try:
        words = shlex.split(command)
    except ValueError:  # an open quote, a backslash at the end: sh says so at run time
        return whole
    if not words or words[0] == "":
        return whole
    if words[0] in BUILTINS:
        # `exec echo x` runs the program echo: the way `export` writes such a task.
        written = command.lstrip(_SPLIT_BLANKS)
        if not (written.startswith("exec") and written[4:5] in _BLANKS and len(words) > 1):
            return whole
        if words[1] not in BUILTINS:
            return whole  # `exec wallswitch` stays with the shell: nothing to gain
        words = words[1:]
    return tuple(_encode(word) for word in words)


# --- import --------------------------------------------------------------------------


class State:
    """The settings in force at a line of a crontab (being read, or written)."""

    __slots__ = ("env", "mailto", "zone")

    def __init__(self) -> None:
        self.env: dict[str, str] = {}
        self.zone = ""
        self.mailto: str | None = None

    @property
    def shell(self) -> str:
        return self.env.get("SHELL", DEFAULT_SHELL)


def _schedule(text: str) -> tuple[str, str]:
    """The schedule (five fields or an `@` name) and the rest of a task line."""
    if text.startswith("@"):
        end = 0
        while end < len(text) and text[end] not in _BLANKS:
            end += 1
        return text[:end], text[end:].lstrip(_BLANKS)
    fields: list[str] = []
    rest = text
    for _ in range(5):
        rest = rest.lstrip(_BLANKS)
        end = 0
        while end < len(rest) and rest[end] not in _BLANKS:
            end += 1
        if end == 0:
            raise _Refused("expected five time fields and a command")
        fields.append(rest[:end])
        rest = rest[end:]
    return " ".join(fields), rest.lstrip(_BLANKS)


def _task_line(text: str, state: State, context: Context) -> tuple[Task, list[str]]:
    """The task of a line, and notes on what cron makes of text that seems to say more
    (cronfields.py), or of a line without a command."""
    from saturnd.cronfields import CronReading
    from saturnd.protocol import MAX_ARGC, MAX_STRING
    from saturnd.task import Extras, Task, check_extras
    from saturnd.timing import Timing, TimingError

    schedule, command = _schedule(text)
    reading = CronReading()
    try:
        timing = Timing.cron(schedule, state.zone, read=reading)
    except TimingError as error:
        raise _Refused(str(error)) from None
    notes = reading.notes
    if command.startswith("*"):  # cron refuses it too
        raise _Refused("the command starts with '*': one time field too many?")
    command = _without_user(command, context)
    command, stdin = split_percent(command)
    if not command.strip(_BLANKS):
        notes.append("no command: cron runs an empty one, which does nothing")
        argv: tuple[bytes, ...] = (_encode(state.shell), b"-c", _encode(command))
    else:
        argv = command_argv(command, state.shell)
    if len(argv) > MAX_ARGC or any(len(arg) > MAX_STRING for arg in argv):
        raise _Refused("the command is longer than saturnd takes")
    env = tuple((_encode(name), _encode(value)) for name, value in state.env.items())
    mailto = None if state.mailto is None else _encode(state.mailto)
    extras = Extras(env, _encode(stdin or ""), mailto)
    reason = check_extras(extras)
    if reason is not None:
        raise _Refused(reason)
    return Task(timing, argv, extras), notes


def _without_user(command: str, context: Context) -> str:
    """The command without /etc/crontab's user field; refused when it names another.

    A user name alone is a command (nothing follows it to run as that user).
    """
    words = command.split(None, 1)
    if len(words) < 2 or not context.is_user(words[0]):
        return command
    word = words[0]
    if word != context.user:
        raise _Refused(
            f"{word!r} before the command is a user name: this is a system crontab line "
            "(/etc/crontab, /etc/cron.d), which a personal crontab cannot hold "
            f"(if {word!r} is the program, write its path)"
        )
    return command[len(word) :].lstrip(_BLANKS)


def _apply_setting(name: str, value: str, state: State, context: Context) -> None:
    if name == "CRON_TZ":
        if value and not context.zone_exists(value):
            raise _Refused(f"CRON_TZ={value}: unknown time zone")
        state.zone = value
    elif name == "MAILTO":
        state.mailto = value
    elif "\0" in name or "\0" in value:
        raise _Refused("invalid environment setting")
    else:
        state.env[name] = value


def parse(
    data: bytes, context: Context | None = None
) -> tuple[list[Entry], list[Problem], list[str]]:
    """Every task line of a crontab as a `Task`, every refused line, and warnings.

    Blank lines and comments (`#` first on the line) are skipped. When any line is
    refused, the entries are empty: nothing should be created.
    """
    context = context or Context()
    entries: list[Entry] = []
    problems: list[Problem] = []
    warnings: list[str] = []
    state = State()
    policies: tuple[int, dict[str, object]] | None = None  # a #saturnd: line waiting
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline ending the last line
    for number, raw in enumerate(lines, 1):
        # A file written with CRLF line ends: cron would keep the carriage return in
        # the command (and the shell would not find it); take it for the line end.
        text = raw.removesuffix(b"\r").decode("utf-8", "surrogateescape")
        stripped = text.strip(_BLANKS)
        try:
            if stripped.startswith(POLICY_PREFIX):
                if policies is not None:
                    raise _Refused(f"line {policies[0]}'s {POLICY_PREFIX} has no task line")
                try:
                    policies = (number, read_policies(stripped[len(POLICY_PREFIX) :]))
                except ValueError as error:
                    raise _Refused(str(error)) from None
                continue
        except _Refused as refused:
            problems.append(Problem(number, str(refused)))
            continue
        paused = stripped.startswith(PAUSED_PREFIX)
        if paused:
            text = stripped[len(PAUSED_PREFIX) :]
        elif not stripped or stripped.startswith("#"):
            continue
        try:
            if "\0" in text:
                raise _Refused("the line holds a NUL byte")
            found = setting(text)
            if found is not None and paused:
                raise _Refused(f"{PAUSED_PREFIX} is for a task line, not a setting")
            if found is not None and not found[0]:
                warnings.append(f"line {number}: a setting without a name changes nothing")
                continue
            if found is not None:
                _apply_setting(*found, state, context)
                mail = found[0] == "MAILTO" and found[1]
                if mail and not context.has_sendmail and not warnings:
                    warnings.append(
                        f"line {number}: MAILTO is kept, but no mail is sent: "
                        "this machine has no sendmail"
                    )
                continue
            if _is_empty_setting(stripped):
                name = stripped.partition("=")[0].strip(_BLANKS)
                raise _Refused(
                    f'cron does not read {name}= as a setting: write {name}="" for an empty value'
                )
            task, notes = _task_line(text.lstrip(_BLANKS), state, context)
            warnings += [f"line {number}: {note}; imported as cron reads it" for note in notes]
            if policies is not None or paused:
                changes = {} if policies is None else policies[1]
                task = type(task)(
                    task.timing, task.argv, task.extras.replace(**changes, paused=paused)
                )
                policies = None
            entries.append(Entry(number, task))
        except _Refused as refused:
            problems.append(Problem(number, str(refused)))
    if policies is not None:
        problems.append(Problem(policies[0], f"{POLICY_PREFIX} has no task line after it"))
    return ([] if problems else entries), problems, warnings
