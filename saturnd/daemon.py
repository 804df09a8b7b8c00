"""Start-up and supervision: directory checks, single instance, daemonizing, two processes.

This module owns the daemon's life:
1. Create or check the pipes and state directories like tmux checks its socket
   directory: `lstat`, a real directory (not a symlink), owned by us; group/other bits
   are tightened to 0700 and logged; a symlink or another owner is refused with one line.
   Every directory we create on the way (`/tmp/<USERNAME>`, ...) is checked the same way.
2. Take the single-instance lock: `saturnd.pid` held with `fcntl.flock`. A second
   daemon on the same state directory says so and exits 0 (starting at every login is
   harmless).
3. Load and repair the store, create the FIFOs, then detach with python-daemon's
   `DaemonContext` (double fork, setsid, chdir /, umask 077) unless `-f`.
4. Supervise: fork the listener and the executor; if either dies unexpectedly, log it
   and start it again, so a crash of one part never leaves a daemon that answers but
   never runs tasks, or the reverse. A part that dies within STABLE_AFTER of its start
   is crash-looping and waits a growing pause before the next start (like supervisord's
   startsecs); one that lived longer was killed or hit a bug once, and starts again at
   once. A part that cannot start for a known reason (its `cmds` unreadable, its FIFOs
   impossible to create) says why in one log line, not a traceback. The children ask
   the kernel for SIGTERM when the supervisor dies, so a killed daemon never leaves a
   half behind holding the lock.
TERMINATE: the listener replies OK and exits with EXIT_TERMINATED; the supervisor stops
the executor, removes the pid file and exits 0. Runs already started finish on their
own and are still recorded (they are not our children).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import logging.handlers
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saturnd.clock import Clock
from saturnd.listener import (
    EXIT_TERMINATED,
    REPLY_PIPE,
    REQUEST_PIPE,
    Listener,
    ensure_fifo,
)
from saturnd.proc import StopFlag
from saturnd.spawn import DEFAULT_MAX_OUTPUT
from saturnd.store import Store, StoreError

PID_FILE: Final = "saturnd.pid"
LOG_FILE: Final = "saturnd.log"
LOG_MAX_BYTES: Final = 1 << 20
LOG_BACKUPS: Final = 3
RESTART_PAUSES: Final = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)
"""Pause before restarting a part that died, growing while it keeps dying quickly."""
STABLE_AFTER: Final = 1.0
"""A part that lived this long was not crash-looping: its next start is immediate."""
_PR_SET_PDEATHSIG: Final = 1


class DaemonError(Exception):
    """A set-up failure, reported as one line and exit status 1."""


class PartCannotStart(Exception):
    """A part (listener, executor) cannot start, for a reason worth one log line."""


@dataclass(frozen=True)
class Paths:
    """Where this daemon lives."""

    pipes_dir: Path
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.state_dir / LOG_FILE


# --- directories --------------------------------------------------------------


def _check_dir(path: Path, notes: list[str]) -> None:
    """A directory of ours with mode 0700, or DaemonError."""
    try:
        info = os.lstat(path)
    except OSError as error:
        raise DaemonError(f"cannot inspect {path}: {error.strerror}") from error
    if stat.S_ISLNK(info.st_mode):
        raise DaemonError(f"{path} is a symbolic link; refusing to use it")
    if not stat.S_ISDIR(info.st_mode):
        raise DaemonError(f"{path} exists and is not a directory")
    if info.st_uid != os.geteuid():
        raise DaemonError(
            f"{path} is owned by uid {info.st_uid}, not by you (uid {os.geteuid()}); "
            "refusing to use it"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, 0o700, follow_symlinks=False)
        except OSError as error:
            raise DaemonError(f"cannot tighten {path} to 0700: {error.strerror}") from error
        notes.append(f"tightened {path} from {mode:o} to 700")


def secure_dir(path: Path, checked_from: Path | None, notes: list[str]) -> None:
    """Create `path` (and missing parents) 0700 and check it.

    Every directory created here is checked, and so is every existing one at or below
    `checked_from` (for the default pipes directory under the shared /tmp, that is
    `/tmp/<USERNAME>`: another user could have planted it).
    """
    path = Path(os.path.abspath(path))
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # raced with someone: checked below like any existing directory
        except OSError as error:
            raise DaemonError(f"cannot create {directory}: {error.strerror}") from error
    to_check = [path]
    if checked_from is not None:
        base = Path(os.path.abspath(checked_from))
        current = path
        while current != base and base in current.parents:
            current = current.parent
            to_check.append(current)
    to_check.extend(missing)
    for directory in sorted(set(to_check), key=lambda p: len(p.parts)):
        _check_dir(directory, notes)


def default_pipes_dir(username: str) -> tuple[Path, Path]:
    """The default pipes directory and the first directory of ours above it."""
    base = Path("/tmp") / username
    return base / "saturnd" / "pipes", base


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/saturnd`, i.e. `~/.local/state/saturnd` by default."""
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "saturnd"
    return Path.home() / ".local" / "state" / "saturnd"


# --- single instance ------------------------------------------------------------


def take_lock(pid_file: Path) -> int | None:
    """The locked pid file's fd, or None if another daemon holds it."""
    try:
        fd = os.open(pid_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise DaemonError(f"cannot open {pid_file}: {error.strerror}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def running_pid(pid_file: Path) -> int | None:
    """The pid written in a pid file, if it holds a number."""
    try:
        return int(pid_file.read_text(encoding="ascii").strip() or "x")
    except (OSError, ValueError):
        return None


def write_pid(fd: int) -> None:
    """Record our pid in the locked pid file."""
    data = f"{os.getpid()}\n".encode("ascii")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


# --- logging --------------------------------------------------------------------


class LogFile(logging.handlers.RotatingFileHandler):
    """The log file. When it cannot be written (disk full, file size limit), it says so
    in one line on stderr, once until a record gets through again, instead of the
    traceback `logging` prints for every record."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
        self.failing = False
        self.failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self.failed_now = False
        super().emit(record)  # calls handleError on failure
        if not self.failed_now:
            self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed_now = True
        if self.failing:
            return
        self.failing = True
        error = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            sys.stderr.write(f"saturnd: cannot write the log {self.baseFilename}: {error}\n")
            sys.stderr.flush()


def setup_logging(log_file: Path, foreground: bool) -> logging.Logger:
    """`STATE_DIR/saturnd.log` with size-based rotation, and stderr too with -f."""
    logger = logging.getLogger("saturnd")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    formatter = logging.Formatter(
        "%(asctime)s saturnd[%(process)d] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"
    )
    try:
        file_handler = LogFile(log_file)
    except OSError as error:
        raise DaemonError(f"cannot open the log {log_file}: {error.strerror}") from error
    os.chmod(log_file, 0o600)
    file_handler.setFormatter(formatter)
    logger.addHandler(file_handler)
    if foreground:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        logger.addHandler(stream)
    return logger


def log_fds(logger: logging.Logger) -> list[int]:
    """The fds the logger writes to (a run's supervisor keeps them to log its end)."""
    fds = []
    for handler in logger.handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and hasattr(stream, "fileno"):
            try:
                fds.append(stream.fileno())
            except (OSError, ValueError):
                pass
    return fds


# --- processes --------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the idle checks still notice
        pass


def _install_stop_handlers(stop: StopFlag) -> int:
    """SIGTERM/SIGINT/SIGHUP set `stop`; returns a wake-up fd that becomes readable."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def handler(signum: int, frame: object) -> None:
        stop.stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    return read_fd


@dataclass
class Part:
    """One supervised child process."""

    name: str
    body: Callable[[], int]
    pid: int = 0
    started: float = 0.0
    failures: int = 0


class Daemon:
    """The supervisor: starts the listener and the executor and keeps them alive."""

    def __init__(
        self,
        paths: Paths,
        clock: Clock,
        logger: logging.Logger,
        lock_fd: int,
        max_output: int | None = None,
        pipes_base: Path | None = None,
    ) -> None:
        """`pipes_base`: the first directory of ours above the pipes directory (see
        `secure_dir`), checked again if the pipes directory must be created again."""
        self.paths = paths
        self.pipes_base = pipes_base
        self.clock = clock
        self.log = logger
        self.lock_fd = lock_fd
        self.max_output = max_output
        self.stop = StopFlag()
        self.parts = {
            "listener": Part("listener", self._listener_body),
            "executor": Part("executor", self._executor_body),
        }

    # The bodies run in the forked children.

    def _child_setup(self) -> tuple[StopFlag, int]:
        _die_with_parent()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stop = StopFlag()
        wake_fd = _install_stop_handlers(stop)
        # The supervisor may have died between fork and prctl: then we are orphans.
        return stop, wake_fd

    def _listener_body(self) -> int:
        stop, wake_fd = self._child_setup()
        # A fresh load (with repair): an earlier listener may have died mid-write.
        try:
            store = Store.open(self.paths.state_dir, self.log)
        except StoreError as error:
            raise PartCannotStart(str(error)) from error
        listener = Listener(
            self.paths.pipes_dir, store, self.log, stop, wake_fd, self._prepare_pipes_dir
        )
        try:
            listener.open()
        except OSError as error:
            raise PartCannotStart(f"cannot open the FIFOs: {error}") from error
        return listener.run()

    def _prepare_pipes_dir(self) -> None:
        """Create and check the pipes directory again (it vanished under the listener)."""
        notes: list[str] = []
        try:
            secure_dir(self.paths.pipes_dir, self.pipes_base, notes)
        except DaemonError as error:
            raise OSError(errno.EPERM, str(error)) from error
        for note in notes:
            self.log.warning("%s", note)

    def _executor_body(self) -> int:
        from saturnd.executor import Executor

        stop, wake_fd = self._child_setup()
        # Its own read-only load, in parallel with the listener's (which repairs): the
        # supervisor never holds the tasks, so neither child inherits a copy of them.
        try:
            store = Store.open(self.paths.state_dir, self.log, read_only=True)
        except StoreError as error:
            raise PartCannotStart(str(error)) from error
        executor = Executor(
            self.paths.state_dir,
            store,
            self.clock,
            self.log,
            stop,
            wake_fd,
            keep_fds=log_fds(self.log),
            max_output=DEFAULT_MAX_OUTPUT if self.max_output is None else self.max_output,
        )
        return executor.run()

    def _start(self, part: Part) -> None:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = part.body()
            except PartCannotStart as error:
                try:
                    self.log.error("%s cannot start: %s", part.name, error)
                finally:
                    os._exit(70)
            except BaseException as error:  # a child must never return into our loop
                try:
                    self.log.exception("%s crashed: %s", part.name, error)
                finally:
                    os._exit(70)
            finally:
                os._exit(status)
        part.pid = pid
        part.started = time.monotonic()
        self.log.info("%s started (pid %d)", part.name, pid)

    def run(self) -> int:
        """Supervise until TERMINATE or a stop signal; returns the exit status."""
        write_pid(self.lock_fd)
        wake_fd = _install_stop_handlers(self.stop)
        # A do-nothing handler, so that a child's end writes the wake-up byte too.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.log.info(
            "saturnd started (pid %d); pipes %s, state %s",
            os.getpid(),
            self.paths.pipes_dir,
            self.paths.state_dir,
        )
        for part in self.parts.values():
            self._start(part)
        terminated = False
        while not self.stop.stopping and not terminated:
            terminated = self._reap_and_restart()
            if not terminated and not self.stop.stopping:
                _wait_fd(wake_fd, self._next_restart_delay())
        self._shutdown()
        return 0

    def _next_restart_delay(self) -> float:
        pending = [part for part in self.parts.values() if part.pid == 0]
        if not pending:
            return 60.0  # woken by SIGCHLD's wake-up byte long before this
        return min(RESTART_PAUSES[min(p.failures, len(RESTART_PAUSES) - 1)] for p in pending)

    def _reap_and_restart(self) -> bool:
        """Collect ended children; True if the listener ended with TERMINATE."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for part in self.parts.values():
                if part.pid != pid:
                    continue
                part.pid = 0
                if (
                    part.name == "listener"
                    and os.WIFEXITED(status)
                    and (os.WEXITSTATUS(status) == EXIT_TERMINATED)
                ):
                    return True
                lived = time.monotonic() - part.started
                part.failures = 0 if lived >= STABLE_AFTER else part.failures + 1
                pause = RESTART_PAUSES[min(part.failures, len(RESTART_PAUSES) - 1)]
                self.log.error(
                    "%s (pid %d) died unexpectedly (%s); restarting it%s",
                    part.name,
                    pid,
                    _describe_status(status),
                    f" in {pause:g} s" if pause else "",
                )
        for part in self.parts.values():
            if part.pid == 0 and not self.stop.stopping:
                pause = RESTART_PAUSES[min(part.failures, len(RESTART_PAUSES) - 1)]
                if time.monotonic() - part.started >= pause:
                    self._start(part)
        return False

    def _shutdown(self) -> None:
        """Stop the children, release the lock, remove the pid file."""
        for part in self.parts.values():
            if part.pid:
                try:
                    os.kill(part.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5.0
        for part in self.parts.values():
            while part.pid and time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(part.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                time.sleep(0.01)
            else:
                if part.pid:
                    try:
                        os.kill(part.pid, signal.SIGKILL)
                        os.waitpid(part.pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
            part.pid = 0
        try:
            os.unlink(self.paths.pid_file)
        except OSError:
            pass
        os.close(self.lock_fd)
        self.log.info("saturnd stopped")


def _wait_fd(fd: int, timeout: float) -> None:
    import select

    readable, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if readable:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


# --- start-up -------------------------------------------------------------------


def prepare(paths: Paths, pipes_base: Path | None) -> list[str]:
    """Create and check both directories; the notes to log once logging is up."""
    notes: list[str] = []
    secure_dir(paths.pipes_dir, pipes_base, notes)
    secure_dir(paths.state_dir, None, notes)
    return notes


def make_fifos(paths: Paths, logger: logging.Logger) -> None:
    """Create (or check) both FIFOs, 0600."""
    for name in (REQUEST_PIPE, REPLY_PIPE):
        try:
            ensure_fifo(paths.pipes_dir / name, logger)
        except OSError as error:
            raise DaemonError(
                f"cannot set up FIFO {paths.pipes_dir / name}: {error.strerror or error}"
            ) from error


def check_store(paths: Paths) -> None:
    """Refuse, as one line before detaching, a `cmds` the children could not load.

    The supervisor does not load the tasks itself: at 100,000 tasks that cost it, and
    through fork each child, about 60 MB. The listener loads them with repair and the
    executor read-only, in parallel.
    """
    try:
        Store.check(paths.state_dir)
    except StoreError as error:
        raise DaemonError(str(error)) from error


def open_fds() -> list[int]:
    """Every fd above stdio open now (python-daemon must keep them when detaching)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3:
            continue
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
    return fds


__all__ = [
    "DaemonError",
    "Daemon",
    "PartCannotStart",
    "Paths",
    "default_pipes_dir",
    "default_state_dir",
    "make_fifos",
    "open_fds",
    "check_store",
    "prepare",
    "running_pid",
    "setup_logging",
    "take_lock",
]
