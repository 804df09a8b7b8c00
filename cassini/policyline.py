"""The crontab forms of a task's run policies and of a paused task (`--export`, `--import`).

This module owns two comment forms, which cron reads as comments and so ignores:
- `#saturnd: --timeout 5m --jitter 30s --no-overlap --catch-up --on-failure 'CMD'`: the
  policies of the next task line (settings and comments may come between; another
  `#saturnd:` line, or the end of the file, before a task line is refused). The words
  are read like sh words (`shlex`) and as `cassini -c` reads them: the same options,
  the same DURATION, the same checks.
- `#saturnd-paused: M H DOM MON DOW COMMAND`: a task line of a paused task. cron skips
  it, so the task does not run there either; `--import` creates it paused.
Both prefixes are exact (no space after `#`): `# saturnd: ...` is an ordinary comment.

Rules: pure; `read_policies` raises `ValueError` with a one-line reason, and reads
back from `write_policies`'s line the fields it was written from.
"""

from __future__ import annotations

import shlex

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from saturnd.task import Extras

__all__ = ["PAUSED_PREFIX", "POLICY_PREFIX", "read_policies", "write_policies"]

POLICY_PREFIX = "#saturnd:"
"""A comment line holding the policies of the next task line."""
PAUSED_PREFIX = "#saturnd-paused:"
"""A comment line holding the task line of a paused task."""
_OPTIONS = ("timeout=", "jitter=", "no-overlap", "catch-up", "on-failure=")


def read_policies(text: str) -> dict[str, object]:
    """The `Extras` fields of the words after `#saturnd:`; `ValueError` with the reason."""
    from cassini.cli import UsageError
    from cassini.creating import policies_of
    from cassini.options import GetoptError, getopt

    try:
        words = shlex.split(text)
    except ValueError as error:  # an unbalanced quote
        raise ValueError(f"{POLICY_PREFIX} {error}") from None
    try:
        options, rest = getopt(words, "", _OPTIONS)
    except GetoptError as error:
        raise ValueError(f"{POLICY_PREFIX} {error.msg}") from None
    if rest:
        raise ValueError(f"{POLICY_PREFIX} unexpected word {rest[0]!r}")
    if not options:
        raise ValueError(f"{POLICY_PREFIX} names no policy")
    try:
        return policies_of(options)
    except UsageError as error:
        raise ValueError(f"{POLICY_PREFIX} {error}") from None


def write_policies(extras: Extras) -> str | None:
    """The `#saturnd:` line of `extras`' policies (no newline), or None when it has none;
    `ValueError` when its on-failure command holds a newline (no line can hold it)."""
    words = []
    for option, seconds in (("--timeout", extras.timeout), ("--jitter", extras.jitter)):
        if seconds:
            from cassini.duration import format_duration  # only for a task that has one

            words += [option, format_duration(seconds)]
    if extras.no_overlap:
        words.append("--no-overlap")
    if extras.catch_up:
        words.append("--catch-up")
    if extras.on_failure:
        command = extras.on_failure.decode("utf-8", "surrogateescape")
        if "\n" in command or "\r" in command:
            raise ValueError("its on-failure command holds a newline, which a line cannot")
        words += ["--on-failure", shlex.quote(command)]
    return f"{POLICY_PREFIX} {' '.join(words)}" if words else None
