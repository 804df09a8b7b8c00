"""The runs in progress of a task, as their markers show them, and asking one to stop.

This module owns two kinds of entries of `task_<ID>/`:

    running.<P5 pid>.<n>.<START>.<command pid>.<FLAGS>
                       one run in progress (n: its number in P5's batch, FLAGS its
                       runrecord flags); P5 holds an exclusive `flock` on it until the
                       run is recorded, then unlinks it, then closes it. Command pid 0:
                       the run waits out its jitter (START is then the scheduled one)
    stop.<P5 pid>.<n>  a request to stop that run (cassini --kill), with SIGUSR1 to P5

Rules:
- A marker is created under a hidden name, locked, then renamed into place: a visible
  marker whose lock can be taken has lost its P5 (killed): the run is *abandoned*.
  The lock, not the pid, says whether P5 lives, so a reused pid is never signalled.
- A marker opened, then locked, whose link count is 0 was unlinked by its P5 after
  recording: finished, not abandoned.
- The command runs in its own session (pgid = pid): stopping it signals its process
  group. A command pid is signalled after P5's death only if that process is still a
  session leader that started before its marker was made (so never a reused pid).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saturnd.statefile import OPEN_DIR, OPEN_FILE

__all__ = [
    "LiveRun",
    "Marker",
    "create_marker",
    "live_runs",
    "rename_marker",
    "stop_group",
    "want_stop",
]

_RUNNING: Final = re.compile(r"running\.([0-9]+)\.([0-9]+)\.(-?[0-9]+)\.([0-9]+)\.([0-9]+)")
# Slack between the kernel's process start time (in clock ticks) and a file's ctime.
_CLOCK_SLACK: Final = 2.0


@dataclass(frozen=True)
class LiveRun:
    """A run in progress, as its marker names it."""

    p5_pid: int
    number: int
    start: int
    pid: int
    flags: int
    name: str
    alive: bool
    """Its P5 holds the marker's lock; False: abandoned (its P5 was killed)."""
    made: float = 0.0
    """The marker's change time (epoch seconds)."""


@dataclass(frozen=True, slots=True)
class Marker:
    """P5's side of a marker: the open, locked descriptor and the name."""

    fd: int
    name: str


def marker_name(p5_pid: int, number: int, start: int, pid: int, flags: int) -> str:
    return f"running.{p5_pid}.{number}.{start}.{pid}.{flags}"


def stop_name(p5_pid: int, number: int) -> str:
    return f"stop.{p5_pid}.{number}"


def create_marker(
    dir_fd: int, p5_pid: int, number: int, start: int, pid: int, flags: int
) -> Marker:
    """Make a run's marker, locked by P5 (see the module docstring). Raises OSError."""
    hidden = f".running.{p5_pid}.{number}"
    name = marker_name(p5_pid, number, start, pid, flags)
    fd = os.open(hidden, os.O_RDONLY | os.O_CREAT | OPEN_FILE, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(hidden, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(hidden, dir_fd=dir_fd)
        raise
    return Marker(fd, name)


def rename_marker(dir_fd: int, marker: Marker, start: int, pid: int) -> Marker:
    """A waiting run's marker (command pid 0: its jitter not over) once its command has
    started: the real start and pid, the same locked descriptor. Raises OSError."""
    p5_pid, number = _p5_and_number(marker.name)
    flags = int(marker.name.rsplit(".", 1)[1])
    name = marker_name(p5_pid, number, start, pid, flags)
    os.rename(marker.name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return Marker(marker.fd, name)


def drop_marker(dir_fd: int, marker: Marker) -> None:
    """P5, once the run is recorded: unlink the marker, then release its lock."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker.name, dir_fd=dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stop_name(*_p5_and_number(marker.name)), dir_fd=dir_fd)
    finally:
        os.close(marker.fd)


def _p5_and_number(name: str) -> tuple[int, int]:
    parts = name.split(".")
    return int(parts[1]), int(parts[2])


def live_runs(directory: int | str | Path) -> list[LiveRun]:
    """The runs in progress in a task directory (a path or a descriptor), by start,
    each marked alive or abandoned. Empty when the directory is gone or unreadable."""
    close = False
    try:
        if isinstance(directory, int):
            dir_fd = directory
        else:
            dir_fd = os.open(directory, OPEN_DIR)
            close = True
        names = os.listdir(dir_fd)
    except OSError:
        return []
    try:
        runs = []
        for name in names:
            match = _RUNNING.fullmatch(name)
            if match is None:
                continue
            state = _state(dir_fd, name)
            if state is None:
                continue  # recorded meanwhile
            p5, number, start, pid, flags = (int(group) for group in match.groups())
            runs.append(LiveRun(p5, number, start, pid, flags, name, state[0], state[1]))
        return sorted(runs, key=lambda run: (run.start, run.p5_pid, run.number))
    finally:
        if close:
            os.close(dir_fd)


def _state(dir_fd: int, name: str) -> tuple[bool, float] | None:
    """(alive, change time) of a marker; None when its run was recorded meanwhile."""
    try:
        fd = os.open(name, os.O_RDONLY | OPEN_FILE, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, os.fstat(fd).st_ctime
        status = os.fstat(fd)
        if status.st_nlink == 0:
            return None
        return False, status.st_ctime
    finally:
        os.close(fd)


def want_stop(dir_fd: int, run: LiveRun) -> bool:
    """Ask a live run's P5 to stop it (a stop request, then SIGUSR1). False when its
    P5 has gone meanwhile (then it is abandoned)."""
    fd = os.open(
        stop_name(run.p5_pid, run.number),
        os.O_WRONLY | os.O_CREAT | OPEN_FILE,
        0o600,
        dir_fd=dir_fd,
    )
    os.close(fd)
    # Its lock, looked at just before the signal, says P5 is still the one.
    state = _state(dir_fd, run.name)
    if state is None or not state[0]:
        with contextlib.suppress(FileNotFoundError):  # nobody left to read it
            os.unlink(stop_name(run.p5_pid, run.number), dir_fd=dir_fd)
        return False
    try:
        os.kill(run.p5_pid, signal.SIGUSR1)
    except ProcessLookupError:
        return False
    return True


def stop_group(pid: int, signum: int) -> None:
    """Signal a command's process group (it is a session leader); gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def kill_abandoned(run: LiveRun) -> bool:
    """SIGKILL the command of an abandoned run if it is still the process its marker
    names (see the module docstring); True if it was signalled."""
    if run.pid <= 0 or not _same_process(run.pid, run.made):
        return False
    stop_group(run.pid, signal.SIGKILL)
    return True


def _same_process(pid: int, made: float) -> bool:
    """Whether `pid` is a session leader that started before `made` (epoch seconds)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return False
    # After the ")": state is field 3, session 6, starttime 22 (proc(5)).
    session, ticks = int(fields[3]), int(fields[19])
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return session == pid and started <= made + _CLOCK_SLACK
