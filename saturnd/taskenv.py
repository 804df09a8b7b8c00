"""What a task's command sees of the daemon's world: its environment, umask and
working directory (pure: the I/O code passes in who the user is).

Rules, those of Debian's cron (cron(5), cron(8)), so that the shell or session that
happened to start the daemon changes nothing a task sees:
- The environment is exactly HOME, LOGNAME, USER, SHELL=/bin/sh, PATH=/usr/bin:/bin,
  then the task's own variables in their order (a later one wins), and MAILTO when the
  task sets one (a crontab variable: cron's commands see it). A task may change
  HOME, SHELL and PATH (and add any other); LOGNAME and USER always name the user the
  task runs as, as cron(5) says of LOGNAME ("may not be changed"); Debian sets USER too.
- HOME is the home the daemon was started with (login sets $HOME from the password
  database), else the password database's; the task's own HOME, if it sets one, is its
  working directory, as cron changes to the entry's HOME (`/` when that fails).
- umask 022 for the command: the daemon keeps 077 for its own files.
- PATH, as the task sees it, is also where its program is looked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_SHELL",
    "FIXED",
    "TASK_UMASK",
    "Identity",
    "environment",
]

DEFAULT_PATH: Final = b"/usr/bin:/bin"
"""cron's PATH (cron(5))."""
DEFAULT_SHELL: Final = b"/bin/sh"
"""cron's SHELL (cron(5))."""
TASK_UMASK: Final = 0o022
"""The umask a command starts with (cron's, through init's default)."""
FIXED: Final = frozenset({b"LOGNAME", b"USER"})
"""Variables a task cannot change: they name the user it runs as."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The user the tasks run as: login name and home directory."""

    user: bytes
    home: bytes


def environment(
    identity: Identity,
    own: Iterable[tuple[bytes, bytes]] = (),
    mailto: bytes | None = None,
) -> dict[bytes, bytes]:
    """The environment of a command: cron's five variables, then the task's `own`
    variables in order (a later one wins; LOGNAME and USER stay the user's), then
    MAILTO when the task sets it and its variables do not (cron's MAILTO is a crontab
    variable: its commands see it)."""
    env = {
        b"HOME": identity.home,
        b"LOGNAME": identity.user,
        b"USER": identity.user,
        b"SHELL": DEFAULT_SHELL,
        b"PATH": DEFAULT_PATH,
    }
    for name, value in own:
        if name not in FIXED:
            env[name] = value
    if mailto is not None:
        env.setdefault(b"MAILTO", mailto)
    return env
