"""Process titles: what `ps` and `saturnd status` call each of the daemon's processes.

    saturnd: supervisor | saturnd: listener | saturnd: executor
    saturnd: runs of HH:MM      a minute's runs' supervising process (P5)

Rules:
- A title is set once, first thing in the process it names, and only through `set_role`;
  `role_of` reads one back from a command line (what /proc shows), so the names and
  their parsing live side by side.
- A title is cosmetic: a process whose title cannot be set runs on unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

__all__ = ["EXECUTOR", "LISTENER", "SUPERVISOR", "role_of", "runs_role", "set_role"]

_PREFIX: Final = "saturnd: "
SUPERVISOR: Final = "supervisor"
LISTENER: Final = "listener"
EXECUTOR: Final = "executor"


def runs_role(minute: datetime) -> str:
    """The role of the process supervising the runs of `minute` (local wall time)."""
    return f"runs of {minute:%H:%M}"


def set_role(role: str) -> None:
    """Name the calling process `saturnd: <role>`."""
    try:
        import setproctitle  # the extension rewrites argv's memory: what ps reads
    except ImportError:
        return
    setproctitle.setproctitle(_PREFIX + role)


def role_of(cmdline: Sequence[str]) -> str | None:
    """The role in a process's command line, or None if it has no title of ours.

    Joined by spaces: a title has no NUL between its words, and psutil then splits
    the command line at the spaces."""
    line = " ".join(cmdline)
    if not line.startswith(_PREFIX):
        return None
    return line[len(_PREFIX) :].strip() or None
