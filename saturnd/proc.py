"""Process plumbing, in one place: the stop flag, the wake-up pipe, forks that cannot
lose a stop signal, the one decoder of wait statuses, and the C library.

Invariants:
- Signal handlers only set a `StopFlag`; the loop learns of them through the wake-up
  pipe (`signal.set_wakeup_fd`), which `install_stop_handlers` creates.
- A process forked with `fork_for_part` has the stop signals blocked until it calls
  `install_stop_handlers`: until then it still has its parent's Python handlers, which
  would set the parent's flag (a copy that nobody reads) and write into the parent's
  wake-up pipe, so a stop signal arriving then would be lost and the part would live on
  until the supervisor's SIGKILL, seconds later.
- A wait status is decoded here only: `decode_status` gives the exit code the run
  history keeps (0-255, else 0xFFFF) and the words the log says.
- The C library is opened once per process (`libc`), lazily: ctypes costs a few
  milliseconds to import, which only daemon processes should pay.
"""

from __future__ import annotations

import functools
import os
import select
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    import ctypes

__all__ = [
    "EXITCODE_ABNORMAL",
    "STOP_SIGNALS",
    "Ended",
    "StopFlag",
    "decode_status",
    "die_with_parent",
    "drain",
    "fork_for_part",
    "install_stop_handlers",
    "libc",
    "wait_readable",
]

EXITCODE_ABNORMAL: Final = 0xFFFF
"""The EXITCODE of a run that did not exit normally (killed by a signal, ...)."""
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals that ask a daemon process to stop cleanly."""
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class StopFlag:
    """Set from a signal handler; loops check it."""

    stopping: bool = False


class Ended(NamedTuple):
    """How a process ended: the exit code for the history, the words for the log."""

    exitcode: int
    text: str


def decode_status(status: int | None) -> Ended:
    """Decode a `waitpid` status (None: the process never started)."""
    if status is None:
        return Ended(EXITCODE_ABNORMAL, "not started")
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return Ended(code, f"exit status {code}")
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return Ended(EXITCODE_ABNORMAL, f"killed by {name}{core}")
    return Ended(EXITCODE_ABNORMAL, "ended abnormally")


# --- stop signals and the wake-up pipe ---------------------------------------------------


def fork_for_part() -> int:
    """`os.fork()`, with the stop signals blocked in the child until it calls
    `install_stop_handlers` (see the module docstring). The parent's mask is unchanged."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pid


def install_stop_handlers(stop: StopFlag) -> int:
    """Make the stop signals set `stop`; return the read end of a new wake-up pipe,
    which becomes readable at each signal. Then unblock the stop signals: one that
    arrived since `fork_for_part` is delivered now, to these handlers."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def handler(signum: int, frame: object) -> None:
        stop.stopping = True

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return read_fd


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def wait_readable(fd: int, timeout: float) -> None:
    """Wait until the wake-up pipe `fd` has bytes (then empty it) or `timeout` passes."""
    readable, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if readable:
        drain(fd)


# --- the C library -----------------------------------------------------------------------


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The process's C library (errno kept for ctypes.get_errno), or None if it cannot
    be loaded. Opened once: callers look their function up with getattr, since a C
    library may lack it (musl has no malloc_trim)."""
    try:
        import ctypes  # here, not at the top: see the module docstring

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `signum` when our parent dies (Linux prctl); elsewhere,
    nothing (the parts' idle checks still notice)."""
    lib = libc()
    prctl = getattr(lib, "prctl", None) if lib is not None else None
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signum)
