"""Will a new task's program be found when it runs? The warning of `cassini -c` when not.

This module owns:
- `warning`: a command line, the HOME and PATH the task will see and a probe of the file
  system -> one line saying why the task will fail to start, or None. Pure: the probe
  is passed in;
- `check`: the same with the PATH the task will have, cassini's HOME and the real file
  system.

Rules:
- The daemon starts a task like `execvp` from the task's working directory, $HOME: an
  ARGV0 holding a `/` is a path from there (or absolute); a bare name is looked up in
  each PATH entry, an empty or relative entry also being relative to $HOME; an unset
  PATH is `os.defpath`. The task must find an executable regular file.
- A task's PATH is cron's `/usr/bin:/bin` (DESIGN.md, "What a task sees") unless its
  own environment (`--env PATH=...`, the last one) sets one; its HOME is the user's,
  which cassini's own HOME estimates. A warning, never a refusal: the task is created,
  stdout and the exit status are unchanged.
- An ARGV0 with a space or tab that is not found was most likely meant for a shell: the
  warning then suggests `sh -c '...'`, quoted for the user's shell.
- Cheap: one `stat` and one `access` per PATH entry, no imports; `--import` never calls
  it (an imported line runs through the shell, whose lookup happens at run time).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Probe = Callable[[bytes], "bool | None"]
    """A path -> None when nothing is there, False when it is not an executable file."""

__all__ = ["check", "probe", "shell_quote", "warning"]

# Characters a POSIX shell takes literally outside quotes.
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")
_FAILS = "the task will fail with exit code 127"


def shell_quote(text: str) -> str:
    """`text` as one word for a POSIX shell (shlex.quote, without importing `re`)."""
    if text and _SAFE.issuperset(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def probe(path: bytes) -> bool | None:
    """None when nothing is at `path`; True for an executable regular file, else False."""
    try:
        if not os.path.isfile(path):
            return False if os.path.lexists(path) else None
        return os.access(path, os.X_OK)
    except (OSError, ValueError):  # a NUL byte, a name too long: exec would fail too
        return None


def _shown(path: bytes) -> str:
    # normpath only for the eye (`/home/me/./x` -> `/home/me/x`); the probe used the path.
    return repr(os.fsdecode(os.path.normpath(path)))


def warning(argv: Sequence[bytes], home: bytes, path: bytes | None, look: Probe) -> str | None:
    """Why a task running `argv` will not start, in one line, or None when it will.

    `home` is the task's working directory, `path` its PATH (None: unset), `look` tells
    what is at a path (as `probe` does).
    """
    argv0 = argv[0]
    if b"/" in argv0:
        full = os.path.join(home, argv0)
        found = look(full)
        if found:
            return None
        where = "" if argv0.startswith(b"/") else " (relative paths start from $HOME)"
        if found is None:
            problem = f"no file {_shown(full)}{where}"
        else:
            problem = f"{_shown(full)} is not an executable file{where}"
    else:
        entries = (os.fsencode(os.defpath) if path is None else path).split(b":")
        if any(look(os.path.join(home, entry, argv0)) for entry in entries):
            return None
        # Say which PATH was searched: it is not the user's shell's.
        searched = os.fsdecode(os.defpath if path is None else path)
        problem = f"no program {_shown(argv0)} in the task's PATH ({searched})"
    hint = ""
    if b" " in argv0 or b"\t" in argv0:
        # The other arguments stay arguments: the shell gets them as "$@".
        script = os.fsdecode(argv0) + (' "$@"' if len(argv) > 1 else "")
        words = ["sh", "-c", shell_quote(script)]
        if len(argv) > 1:
            words += ["sh", *(shell_quote(os.fsdecode(arg)) for arg in argv[1:])]
        hint = f"; for a shell command line, give the command as: {' '.join(words)}"
    return f"{problem}: {_FAILS}{hint}"


def check(argv: Sequence[bytes], env: Sequence[tuple[bytes, bytes]] = ()) -> str | None:
    """`warning` for a task running `argv` with its own variables `env`: the PATH the
    task will have, cassini's HOME and the real file system."""
    from cassini.cli import TASK_PATH

    # As the daemon does: a missing HOME means "/".
    home = os.environb.get(b"HOME") or b"/"
    return warning(argv, home, dict(env).get(b"PATH", TASK_PATH), probe)
