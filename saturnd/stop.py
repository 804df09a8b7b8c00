"""`saturnd stop`: ask the daemon of a state directory to stop, and wait until it has.

This module owns stopping a running daemon from the command line: finding it, making
sure the pipes directory given is the one it listens on, sending TERMINATE as cassini
does, and waiting for its end.

Rules:
- The daemon is the one `saturnd status` finds: the process that holds
  `STATE_DIR/saturnd.pid` open (`status.find_daemon`).
- TERMINATE goes only to pipes that one of that daemon's processes holds open: with a
  wrong `-p`, another daemon (of another state directory) may listen there, and we must
  not stop it. Without /proc the check is skipped (nothing better to go on).
- "Stopped" means the lock on the pid file is free. The file is opened before asking,
  so we wait on the daemon's own lock even after it has unlinked the file, and a new
  daemon starting meanwhile (new file, new lock) neither delays nor fools us. The lock
  is free once the supervisor and its children are gone, and a zombie left to an
  unreaping parent holds nothing, so this is exact where a pid would not be.
- The wait polls a shared lock without blocking and gives it up at once: a held lock
  could make a daemon starting at that very instant on an old file believe another runs.
- Every failure is a `StopError`: one line, without the program name.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Final

import psutil

from cassini.transport import REQUEST_PIPE, TransportError, exchange
from saturnd.protocol import OkReply, TerminateRequest
from saturnd.status import StatusError, find_daemon

__all__ = ["STOP_TIMEOUT", "StopError", "stop"]

STOP_TIMEOUT: Final = 15.0
"""Seconds to wait for the daemon's end after its OK: longer than its own shutdown,
which gives its children 5 s before it kills them."""
_POLL: Final = 0.01


class StopError(Exception):
    """The daemon could not be stopped, or it is unknown whether it was (exit 1)."""


def _open_pid_file(pid_file: Path) -> int | None:
    """A descriptor of the pid file, to wait on its lock; None when there is no file."""
    try:
        return os.open(pid_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise StopError(f"cannot open {pid_file}: {error.strerror}") from error


def _identity(path: Path | int, *, follow: bool = False) -> tuple[int, int] | None:
    """(device, inode) of a descriptor or a path; None when it cannot be seen."""
    try:
        info = os.fstat(path) if isinstance(path, int) else os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _holder(pids: list[int], identity: tuple[int, int]) -> bool | None:
    """Whether one of `pids` holds the file `identity` open; None if /proc cannot tell."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone meanwhile
        for name in names:
            # Followed: /proc's entry is a link to what the descriptor has open.
            if _identity(Path(f"/proc/{pid}/fd/{name}"), follow=True) == identity:
                return True
    return False


def _check_listens(pid: int, pipes_dir: Path, state_dir: Path) -> None:
    """Refuse to send TERMINATE to pipes that this daemon does not hold open."""
    request_pipe = pipes_dir / REQUEST_PIPE
    wrong = f"the saturnd of {state_dir} (pid {pid}) does not listen in {pipes_dir}"
    identity = _identity(request_pipe)
    if identity is None:
        raise StopError(f"{wrong}: no {REQUEST_PIPE} there (give its -p)")
    try:
        processes = [pid, *(child.pid for child in psutil.Process(pid).children())]
    except psutil.Error:
        return  # it ended meanwhile: the exchange will say so, or find nobody
    if _holder(processes, identity) is False:
        raise StopError(f"{wrong} (give its -p)")


def _lock_free(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _terminate(pipes_dir: Path) -> None:
    # cassini's own exchange: its lock, its timeouts, its one-line errors.
    try:
        reply = exchange(str(pipes_dir), TerminateRequest())
    except TransportError as error:
        raise StopError(str(error)) from error
    if not isinstance(reply, OkReply):
        raise StopError(f"the daemon refused to stop: {reply!r}")


def _exited(pid: int) -> bool:
    """Whether process `pid` has ended (gone, or a zombie waiting to be reaped)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def stop(
    pipes_dir: Path, state_dir: Path, pid_file: Path, timeout: float = STOP_TIMEOUT
) -> int | None:
    """Stop the daemon of `state_dir`; its pid once it has exited, None if none ran."""
    fd = _open_pid_file(pid_file)
    if fd is None:
        return None
    try:
        try:
            pid = find_daemon(pid_file)
        except StatusError as error:
            raise StopError(str(error)) from error
        if pid is None:
            return None
        if _identity(fd) != _identity(pid_file):
            # A new daemon replaced the file between our open and its check: its lock
            # is not the one our descriptor would wait on. Rare: let the user retry.
            raise StopError(f"the saturnd of {state_dir} was restarting; try again")
        _check_listens(pid, pipes_dir, state_dir)
        _terminate(pipes_dir)
        deadline = time.monotonic() + timeout
        # The lock is let go a moment before the supervisor's process ends: wait for both.
        while not (_lock_free(fd) and _exited(pid)):
            if time.monotonic() >= deadline:
                raise StopError(f"saturnd (pid {pid}) still runs {timeout:g} s after its OK")
            time.sleep(_POLL)
        return pid
    finally:
        os.close(fd)
