"""P5's own set-up, once detached: /dev/null, its descriptor limit, and the signals
that wake its poll loop (SIGCHLD: a command ended; SIGUSR1: a run is to be stopped).

Rules: signal handlers only set a flag (`STOP_ASKED`) or nothing at all: the wakeup
fd (`sigchld_waker`) is what wakes the loop; the loop clears the flag.
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Final

__all__ = [
    "FD_CEILING",
    "STOP_ASKED",
    "empty",
    "on_stop",
    "open_null",
    "raise_fd_limit",
    "sigchld_waker",
]

FD_CEILING: Final = 1 << 20
"""A hard limit this high is as good as none; P5 does not raise its own past it."""
DEV_NULL: Final = b"/dev/null"
STOP_ASKED: Final[set[bool]] = set()
"""Not empty once SIGUSR1 came (a stop request, taskdir.request_stop)."""


def open_null() -> int:
    """/dev/null, at a descriptor >= 3: if the daemon had closed 0, 1 or 2, the numbers
    taken first stay as placeholders (every command gets its own 0, 1 and 2)."""
    null = os.open(DEV_NULL, os.O_RDWR | os.O_CLOEXEC)
    while null < 3:
        null = os.open(DEV_NULL, os.O_RDWR | os.O_CLOEXEC)
    return null


def raise_fd_limit() -> tuple[int | None, int]:
    """Raise P5's soft RLIMIT_NOFILE to its hard limit: (the limit to spawn commands
    under, None if unchanged; the limit P5 now has)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None, 1024
    ceiling = FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, FD_CEILING)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        except (OSError, ValueError):
            return None, soft
        return soft, ceiling
    return None, FD_CEILING if soft == resource.RLIM_INFINITY else soft


def _on_signal(signum: int, frame: object) -> None:
    """SIGCHLD in P5: nothing to do here; the wakeup fd has woken the poll loop."""


def on_stop(signum: int, frame: object) -> None:
    """SIGUSR1 in P5: a run is to be stopped; the wakeup fd wakes the poll loop."""
    STOP_ASKED.add(True)


def sigchld_waker() -> int:
    """A descriptor that becomes readable when a command ends (SIGCHLD on a self-pipe);
    -1 if none can be set up, and then P5 looks for ended commands a few times a
    second."""
    try:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        signal.signal(signal.SIGCHLD, _on_signal)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (OSError, ValueError):  # ValueError: not the main thread
        os.close(read_end)
        os.close(write_end)
        return -1
    return read_end


def empty(fd: int) -> None:
    """Read a non-blocking self-pipe until it is empty."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
