"""`saturnd status`: is a daemon running for this state directory, and how is it doing.

This module owns the status report: finding the daemon, measuring it, counting its
tasks and runs in progress, and writing the result as aligned `key: value` lines or as
one JSON document.

Rules:
- Read only, and never through the FIFOs: a status must work when the listener is
  wedged, and must change nothing on disk (no pid file, directory or `cmds` is
  created). The task count comes from a read-only load of `cmds`.
- Running means: the pid written in `STATE_DIR/saturnd.pid` is a live process that
  holds that very file open (same device and inode, seen through `/proc/PID/fd`). The
  daemon keeps the pid file open, and locked, for its whole life, and a second daemon
  that fails to take the lock closes it at once. We look rather than try the lock:
  a status holding even a shared lock for an instant could make a daemon starting at
  that instant believe another one runs, and exit. Only where `/proc` is missing do
  we fall back to a non-blocking shared lock, released at once.
- A run in progress is a `stdout.<P5 pid>.<n>.tmp` file in a `task_<ID>/` directory
  (spawn creates it when a run starts and renames it away when the run is recorded)
  whose P5 is alive, ours, and older than the file. The last two checks reject a pid reused
  since a run's supervisor was killed and left its temporaries behind.
- Formatting is pure: `Status` and `now` in, text or a JSON-ready dict out.
- Exit status, the LSB convention for `status`: 0 running, 3 not running; a failure to
  find out is a `StatusError` (one line, exit 1 at the program's edge).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import psutil

from saturnd.startup import Paths, running_pid
from saturnd.store import Store, StoreError

__all__ = [
    "EXIT_NOT_RUNNING",
    "EXIT_RUNNING",
    "ProcessInfo",
    "RunInfo",
    "Status",
    "StatusError",
    "exit_status",
    "gather",
    "to_json",
    "to_text",
]

EXIT_RUNNING: Final = 0
EXIT_NOT_RUNNING: Final = 3
"""LSB init-script `status`: 3 is "program is not running"."""

_TASK_DIR: Final = re.compile(r"task_([0-9]+)")
# stdout.<P5 pid>.<run number>.tmp; stdout.<P5 pid>.tmp from a version with one P5 per run.
_RUN_OUTPUT: Final = re.compile(r"stdout\.([0-9]+)(?:\.[0-9]+)?\.tmp")
_CLOCK_SLACK: Final = 2.0
"""Seconds: psutil derives a start time from the boot time, which /proc gives in whole
seconds, so a run's supervisor can look up to about a second younger than its file."""
_PID_FILE_RETRIES: Final = 5
_PID_FILE_PAUSE: Final = 0.02


class StatusError(Exception):
    """Whether a daemon runs cannot be found out (one line, exit status 1)."""


@dataclass(frozen=True)
class ProcessInfo:
    """One of the daemon's processes (the supervisor first, then its descendants)."""

    pid: int
    started: float
    """Epoch seconds."""
    rss: int
    """Resident set size, bytes."""
    pss: int | None
    """Proportional set size, bytes: shared pages divided among their users (Linux)."""
    cpu: float
    """User plus system CPU seconds used so far."""


@dataclass(frozen=True)
class RunInfo:
    """A run in progress: its task and the pid of its supervising process (P5)."""

    task_id: int
    pid: int
    started: float
    """Epoch seconds (the real clock, even under `--clock`)."""


@dataclass(frozen=True)
class Status:
    """What `saturnd status` knows about one state directory."""

    pipes_dir: Path
    state_dir: Path
    log_file: Path
    processes: tuple[ProcessInfo, ...]
    """Empty when no daemon runs; else the supervisor first."""
    tasks: int | None
    """None when `cmds` cannot be read (see `problems`)."""
    runs: tuple[RunInfo, ...]
    problems: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return bool(self.processes)

    @property
    def pid(self) -> int | None:
        return self.processes[0].pid if self.processes else None

    @property
    def rss(self) -> int | None:
        return sum(p.rss for p in self.processes) if self.processes else None

    @property
    def pss(self) -> int | None:
        if not self.processes or any(p.pss is None for p in self.processes):
            return None
        return sum(p.pss or 0 for p in self.processes)

    @property
    def cpu(self) -> float | None:
        return sum(p.cpu for p in self.processes) if self.processes else None


def exit_status(status: Status) -> int:
    """0 when a daemon runs, 3 when none does."""
    return EXIT_RUNNING if status.running else EXIT_NOT_RUNNING


# --- formatting (pure) -------------------------------------------------------------


def _local(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _uptime(status: Status, now: float) -> float | None:
    if not status.processes:
        return None
    return max(0.0, now - status.processes[0].started)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _lines(status: Status, now: float) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = [("status", "running" if status.running else "not running")]
    uptime = _uptime(status, now)
    if status.processes and uptime is not None:
        supervisor = status.processes[0]
        lines.append(("pid", str(supervisor.pid)))
        up = timedelta(seconds=int(uptime))
        lines.append(("started", f"{_local(supervisor.started)} (up {up})"))
        pids = [f"{supervisor.pid} (supervisor)"] + [str(p.pid) for p in status.processes[1:]]
        lines.append(("processes", ", ".join(pids)))
        memory = f"{_mib(status.rss or 0)} RSS"
        if status.pss is not None:
            memory += f", {_mib(status.pss)} PSS"
        lines.append(("memory", memory))
        lines.append(("cpu", f"{status.cpu or 0.0:.2f} s"))
    lines.append(("tasks", "unknown" if status.tasks is None else str(status.tasks)))
    runs = str(len(status.runs))
    if status.runs:
        runs += ": " + ", ".join(
            f"task {run.task_id} (pid {run.pid}, since {_local(run.started)})"
            for run in status.runs
        )
    lines.append(("runs in progress", runs))
    lines.append(("pipes directory", str(status.pipes_dir)))
    lines.append(("state directory", str(status.state_dir)))
    lines.append(("log file", str(status.log_file)))
    lines.extend(("problem", problem) for problem in status.problems)
    return lines


def to_text(status: Status, now: float) -> str:
    """Aligned `key: value` lines, one per fact, ending with a newline."""
    lines = _lines(status, now)
    width = max(len(key) for key, _ in lines) + 2
    return "".join(f"{key + ':':<{width}}{value}\n" for key, value in lines)


def to_json(status: Status, now: float) -> str:
    """One JSON object (keys sorted), ending with a newline. Sizes in bytes, times in
    epoch seconds, durations in seconds; a fact that does not apply is null."""
    document = {
        "running": status.running,
        "pid": status.pid,
        "started": status.processes[0].started if status.processes else None,
        "uptime_seconds": _uptime(status, now),
        "processes": [p.pid for p in status.processes],
        "memory_rss_bytes": status.rss,
        "memory_pss_bytes": status.pss,
        "cpu_seconds": status.cpu,
        "tasks": status.tasks,
        "runs_in_progress": [
            {"task": run.task_id, "pid": run.pid, "started": run.started} for run in status.runs
        ],
        "pipes_dir": str(status.pipes_dir),
        "state_dir": str(status.state_dir),
        "log_file": str(status.log_file),
        "problems": list(status.problems),
    }
    return json.dumps(document, sort_keys=True) + "\n"


# --- gathering (I/O) -----------------------------------------------------------------


def _pid_file_identity(pid_file: Path) -> tuple[int, int] | None:
    """(device, inode) of the pid file, or None if there is none."""
    try:
        info = os.stat(pid_file, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # the state directory is a file: certainly no daemon there
    except OSError as error:
        raise StatusError(f"cannot inspect {pid_file}: {error.strerror}") from error
    return info.st_dev, info.st_ino


def _holds_open(pid: int, identity: tuple[int, int]) -> bool | None:
    """Whether process `pid` has the file `identity` open; None if /proc cannot tell."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except FileNotFoundError:
        return False if os.path.isdir("/proc/self/fd") else None
    except PermissionError:
        return False  # another user's process: the pid was reused, our daemon is gone
    except OSError as error:
        raise StatusError(f"cannot inspect {fd_dir}: {error.strerror}") from error
    for name in names:
        try:
            info = os.stat(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed meanwhile, or a descriptor with nothing to stat
        if (info.st_dev, info.st_ino) == identity:
            return True
    return False


def _lock_is_held(pid_file: Path) -> bool:
    """The fallback without /proc: try a shared lock without waiting, release at once."""
    try:
        fd = os.open(pid_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise StatusError(f"cannot open {pid_file}: {error.strerror}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as error:
        raise StatusError(f"cannot test the lock on {pid_file}: {error.strerror}") from error
    finally:
        os.close(fd)  # also releases a lock we got
    return False


def find_daemon(pid_file: Path) -> int | None:
    """The pid of the daemon of this pid file, or None when none runs."""
    for attempt in range(_PID_FILE_RETRIES):
        identity = _pid_file_identity(pid_file)
        if identity is None:
            return None
        pid = running_pid(pid_file)
        if pid is not None and pid > 0:
            held = _holds_open(pid, identity)
            if held is None:
                held = _lock_is_held(pid_file)
            if held:
                return pid
        # A daemon writes its pid just after taking the lock: a file that is empty,
        # or names a dead process, may be in that instant. Look again, briefly.
        if attempt + 1 < _PID_FILE_RETRIES:
            time.sleep(_PID_FILE_PAUSE)
    return None


def _measure(process: psutil.Process) -> ProcessInfo:
    with process.oneshot():
        started = process.create_time()
        cpu = process.cpu_times()
        rss = process.memory_info().rss
        pss: int | None
        try:
            pss = getattr(process.memory_full_info(), "pss", None)
        except psutil.AccessDenied:
            pss = None
    return ProcessInfo(process.pid, started, rss, pss, cpu.user + cpu.system)


def measure_daemon(pid: int) -> tuple[ProcessInfo, ...]:
    """The supervisor and its live descendants (listener, executor, a passing P4)."""
    try:
        supervisor = psutil.Process(pid)
        infos = [_measure(supervisor)]
        descendants = supervisor.children(recursive=True)
    except psutil.NoSuchProcess:
        return ()  # it stopped while we looked
    except psutil.AccessDenied as error:
        raise StatusError(f"cannot inspect process {pid}: permission denied") from error
    for child in descendants:
        try:
            infos.append(_measure(child))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # a P4 is gone within microseconds: not part of the daemon's cost
    return tuple(infos)


def _run_of(task_id: int, pid: int, file_changed: float) -> RunInfo | None:
    """The run whose supervisor is `pid`, if that process is alive, ours and older
    than its output file (a younger one is a reused pid)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            uid = process.uids().real
            started = process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if uid != os.getuid() or started > file_changed + _CLOCK_SLACK:
        return None
    return RunInfo(task_id, pid, started)


def runs_in_progress(state_dir: Path) -> tuple[RunInfo, ...]:
    """The runs started and not yet recorded, by task id then pid."""
    runs: list[RunInfo] = []
    try:
        entries = list(os.scandir(state_dir))
    except (FileNotFoundError, NotADirectoryError):
        return ()
    except OSError as error:
        raise StatusError(f"cannot list {state_dir}: {error.strerror}") from error
    for entry in entries:
        task = _TASK_DIR.fullmatch(entry.name)
        if task is None or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            files = list(os.scandir(entry.path))
        except OSError:
            continue  # removed meanwhile (or unreadable): no run of ours can be there
        for file in files:
            output = _RUN_OUTPUT.fullmatch(file.name)
            if output is None:
                continue
            try:
                changed = file.stat(follow_symlinks=False).st_ctime
            except OSError:
                continue  # renamed away: that run has just been recorded
            run = _run_of(int(task.group(1)), int(output.group(1)), changed)
            if run is not None:
                runs.append(run)
    return tuple(sorted(runs, key=lambda run: (run.task_id, run.pid)))


def _quiet_logger() -> logging.Logger:
    """A logger for the read-only store: status prints its own report, nothing else."""
    logger = logging.getLogger("saturnd.status")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def count_tasks(state_dir: Path) -> tuple[int | None, str | None]:
    """(number of tasks, None), or (None, why they cannot be counted)."""
    if not state_dir.is_dir():
        return 0, None  # never started here: no task yet, and nothing to create
    try:
        store = Store.open(state_dir, _quiet_logger(), read_only=True)
    except StoreError as error:
        return None, str(error)
    try:
        return len(store.tasks), None
    finally:
        store.close()


def gather(paths: Paths) -> Status:
    """Everything `saturnd status` reports, read without changing anything."""
    pid = find_daemon(paths.pid_file)
    processes = measure_daemon(pid) if pid is not None else ()
    tasks, problem = count_tasks(paths.state_dir)
    return Status(
        pipes_dir=paths.pipes_dir,
        state_dir=paths.state_dir,
        log_file=paths.log_file,
        processes=processes,
        tasks=tasks,
        runs=runs_in_progress(paths.state_dir),
        problems=(problem,) if problem else (),
    )
