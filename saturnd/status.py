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
- A run in progress is a temporary output in a `task_<ID>/` directory (taskdir.py
  names them; spawn creates one when a run starts and renames it away when the run is
  recorded) whose P5 is alive, ours, and older than the file. The last two checks
  reject a pid reused since a run's supervisor was killed and left its temporaries.
- Formatting is pure: `Status` and `now` in, text or a JSON-ready dict out.
- Runs not recorded yet (the disk refused their record: taskdir.py's pending runs)
  are one problem line, with their number and the start of the oldest; it goes away
  once they are recorded, since it is read from the task directories each time.
- Exit status, the LSB convention for `status`: 0 running, 3 not running, 4 running
  on a full state directory or with runs not recorded yet (`disk_full`, `pending`); a
  failure to find out is a `StatusError` (one line, exit 1 at the program's edge).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import psutil

from saturnd import liveruns, proctitle, taskdir
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
    "pending_runs",
    "pending_text",
    "to_json",
    "to_text",
]

EXIT_RUNNING: Final = 0
EXIT_NOT_RUNNING: Final = 3
"""LSB init-script `status`: 3 is "program is not running"."""
EXIT_CANNOT_RECORD: Final = 4
"""Running, but runs cannot be recorded (a full state directory): LSB's 4, "status
unknown", since the daemon no longer does what it is there for."""
_FULL_BELOW: Final = 64 << 10
"""Bytes: with less than this free, the next run may not be recorded (its history
record, its output files and their directory entries)."""

_CLOCK_SLACK: Final = 2.0
"""Seconds: a process's start time is known to a clock tick, a file's change time to
the kernel's timestamp granularity; a run's supervisor older than its file by less than
this is still taken for its own."""
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
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
    role: str | None = None
    """What its title says it is (proctitle.py): supervisor, listener, executor."""


@dataclass(frozen=True)
class RunInfo:
    """A run in progress: its task and the pid of its supervising process (P5)."""

    task_id: int
    pid: int
    started: float
    """Epoch seconds (the real clock, even under `--clock`)."""
    role: str | None = None
    """The supervising process's title: "runs of HH:MM"."""
    commands: tuple[int, ...] = ()
    """The pids of its supervising process's commands: this run's alone when that
    process supervises no other run in progress (one task per minute, as a rule)."""


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
    full: bool = False
    """The state directory's file system is (nearly) full: runs are not recorded."""
    pending: int = 0
    """Finished runs whose record the disk refused, not recorded yet."""

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
    """0 when a daemon runs, 3 when none does, 4 when it runs on a full disk or has
    runs it could not record yet."""
    if not status.running:
        return EXIT_NOT_RUNNING
    return EXIT_CANNOT_RECORD if status.full or status.pending else EXIT_RUNNING


# --- formatting (pure) -------------------------------------------------------------


def _local(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _uptime(status: Status, now: float) -> float | None:
    if not status.processes:
        return None
    return max(0.0, now - status.processes[0].started)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _with_role(process: ProcessInfo) -> str:
    return f"{process.pid} ({process.role})" if process.role else str(process.pid)


def _run_text(run: RunInfo) -> str:
    supervisor = f"pid {run.pid} {run.role}" if run.role else f"pid {run.pid}"
    commands = "".join(f", command {pid}" for pid in run.commands)
    return f"task {run.task_id} ({supervisor}{commands}, since {_local(run.started)})"


def _lines(status: Status, now: float) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = [("status", "running" if status.running else "not running")]
    uptime = _uptime(status, now)
    if status.processes and uptime is not None:
        supervisor = status.processes[0]
        lines.append(("pid", str(supervisor.pid)))
        up = timedelta(seconds=int(uptime))
        lines.append(("started", f"{_local(supervisor.started)} (up {up})"))
        lines.append(("processes", ", ".join(_with_role(p) for p in status.processes)))
        memory = f"{_mib(status.rss or 0)} RSS"
        if status.pss is not None:
            memory += f", {_mib(status.pss)} PSS"
        lines.append(("memory", memory))
        lines.append(("cpu", f"{status.cpu or 0.0:.2f} s"))
    lines.append(("tasks", "unknown" if status.tasks is None else str(status.tasks)))
    runs = str(len(status.runs))
    if status.runs:
        runs += ": " + ", ".join(_run_text(run) for run in status.runs)
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
        "process_roles": {str(p.pid): p.role for p in status.processes},
        "memory_rss_bytes": status.rss,
        "memory_pss_bytes": status.pss,
        "cpu_seconds": status.cpu,
        "tasks": status.tasks,
        "runs_in_progress": [
            {
                "task": run.task_id,
                "pid": run.pid,
                "role": run.role,
                "commands": list(run.commands),
                "started": run.started,
            }
            for run in status.runs
        ],
        "pipes_dir": str(status.pipes_dir),
        "state_dir": str(status.state_dir),
        "log_file": str(status.log_file),
        "problems": list(status.problems),
        "runs_not_recorded": status.pending,
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


def start_time(process: psutil.Process) -> float:
    """When `process` started, in epoch seconds, to a clock tick.

    Not psutil's `create_time()`: it adds the start's clock ticks since boot to the
    boot time that /proc/stat gives in whole seconds, so it is up to a second early,
    and a run started at 12:00:00 would show as started at 11:59:59. The time since
    the process started is measured on the clock /proc counts in (CLOCK_BOOTTIME) and
    taken from the wall clock now."""
    try:
        with open(f"/proc/{process.pid}/stat", "rb") as file:
            fields = file.read().rpartition(b")")[2].split()
        # Field 22 of the whole line; the command name in parentheses is field 2.
        ticks = int(fields[19])
    except (OSError, ValueError, IndexError):
        return process.create_time()  # no /proc: psutil knows other ways
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / _CLOCK_TICKS
    return time.time() - age


def _role(process: psutil.Process) -> str | None:
    try:
        return proctitle.role_of(process.cmdline())
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _measure(process: psutil.Process, role: str | None = None) -> ProcessInfo:
    with process.oneshot():
        role = _role(process) or role
        started = start_time(process)
        cpu = process.cpu_times()
        rss = process.memory_info().rss
        pss: int | None
        try:
            pss = getattr(process.memory_full_info(), "pss", None)
        except psutil.AccessDenied:
            pss = None
    return ProcessInfo(process.pid, started, rss, pss, cpu.user + cpu.system, role)


def measure_daemon(pid: int) -> tuple[ProcessInfo, ...]:
    """The supervisor and its live descendants (listener, executor, a passing P4)."""
    try:
        supervisor = psutil.Process(pid)
        infos = [_measure(supervisor, proctitle.SUPERVISOR)]
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


def _run_of(
    task_id: int, pid: int, file_changed: float, marked: dict[int, list[int]] | None = None
) -> RunInfo | None:
    """The run whose supervisor is `pid`, if that process is alive, ours and older
    than its output file (a younger one is a reused pid). Its commands are those its
    markers name (`marked`: command pids by P5 pid), else all its supervisor's
    children (a P5 of a version without markers)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            uid = process.uids().real
            started = start_time(process)
            role = _role(process)
        mine = (marked or {}).get(pid)
        commands = tuple(sorted(mine or (child.pid for child in process.children())))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if uid != os.getuid() or started > file_changed + _CLOCK_SLACK:
        return None
    return RunInfo(task_id, pid, started, role, commands)


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
        task_id = taskdir.task_id_of(entry.name)
        if task_id is None or not entry.is_dir(follow_symlinks=False):
            continue
        temporaries = taskdir.run_temporaries(entry.path)
        marked: dict[int, list[int]] = {}
        if temporaries:
            for live in liveruns.live_runs(entry.path):
                if live.alive:
                    marked.setdefault(live.p5_pid, []).append(live.pid)
        for pid, changed in temporaries:
            run = _run_of(task_id, pid, changed, marked)
            if run is not None:
                runs.append(run)
    return tuple(sorted(runs, key=lambda run: (run.task_id, run.pid)))


def pending_text(count: int, oldest: int, tasks: Iterable[int]) -> str:
    """The problem line for runs the disk refused to record (pure)."""
    ids = sorted(set(tasks))
    plural = "run" if count == 1 else "runs"
    which = ("task " if len(ids) == 1 else "tasks ") + ", ".join(map(str, ids))
    return (
        f"{count} {plural} of {which} not recorded yet, the oldest from {_local(oldest)}: "
        "the disk refused them; they are recorded when it has room again"
    )


def pending_runs(state_dir: Path) -> tuple[int, str | None]:
    """(number of runs not recorded yet, the problem line saying so or None)."""
    try:
        entries = list(os.scandir(state_dir))
    except OSError:
        return 0, None  # not listable: runs_in_progress has said why
    count, oldest, tasks = 0, 0, []
    for entry in entries:
        task_id = taskdir.task_id_of(entry.name)
        if task_id is None or not entry.is_dir(follow_symlinks=False):
            continue
        runs = taskdir.pending_runs(entry.path)
        if runs:
            oldest = runs[0].start if not count else min(oldest, runs[0].start)
            count += len(runs)
            tasks.append(task_id)
    return count, pending_text(count, oldest, tasks) if count else None


def abandoned_runs(state_dir: Path) -> str | None:
    """The problem line for runs whose supervising process was killed, or None."""
    try:
        entries = list(os.scandir(state_dir))
    except OSError:
        return None  # not listable: runs_in_progress has said why
    found: list[str] = []
    for entry in entries:
        task_id = taskdir.task_id_of(entry.name)
        if task_id is None or not entry.is_dir(follow_symlinks=False):
            continue
        found.extend(
            f"task {task_id} (command {run.pid})"
            for run in liveruns.live_runs(entry.path)
            if not run.alive
        )
    if not found:
        return None
    return (
        f"runs whose supervising process was killed: {', '.join(found)}; each is recorded "
        "as killed, and its command killed, at its task's next run or cassini --kill"
    )


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


def disk_full(state_dir: Path) -> str | None:
    """Why runs cannot be recorded in `state_dir` for lack of space, or None.

    Free space and inodes as the daemon's user sees them (statvfs): one call, and it
    needs no write, which a full disk would refuse (a marker file written by the
    run's supervisor could not be). It also warns before the first record is lost."""
    try:
        info = os.statvfs(state_dir)
    except OSError:
        return None  # no directory yet: nothing to record into either
    blocks = info.f_bfree if os.geteuid() == 0 else info.f_bavail
    inodes = info.f_ffree if os.geteuid() == 0 else info.f_favail
    free = blocks * info.f_frsize
    if free < _FULL_BELOW or (info.f_files > 0 and inodes == 0):
        return (
            f"the file system of {state_dir} is full ({free >> 10} KiB, {inodes} inodes "
            "free): runs are not being recorded"
        )
    return None


def gather(paths: Paths) -> Status:
    """Everything `saturnd status` reports, read without changing anything."""
    pid = find_daemon(paths.pid_file)
    processes = measure_daemon(pid) if pid is not None else ()
    tasks, problem = count_tasks(paths.state_dir)
    full = disk_full(paths.state_dir)
    pending, unrecorded = pending_runs(paths.state_dir)
    abandoned = abandoned_runs(paths.state_dir)
    return Status(
        pipes_dir=paths.pipes_dir,
        state_dir=paths.state_dir,
        log_file=paths.log_file,
        processes=processes,
        tasks=tasks,
        runs=runs_in_progress(paths.state_dir),
        problems=tuple(p for p in (problem, full, unrecorded, abandoned) if p),
        full=full is not None,
        pending=pending,
    )
