"""Start-up: where the daemon lives, directory checks, single instance, logging, detaching.

This module owns everything `saturnd` does before the supervisor takes over:
- Directories are checked like tmux checks its socket directory: `lstat`, a real
  directory (not a symlink), owned by us; group/other bits are tightened to 0700 and
  noted for the log; a symlink or another owner is refused with one line. On the
  default pipes path, every directory already there at or below `/tmp/<USERNAME>` is
  checked before anything is created (another local user may have planted it), and
  the refusal names that user and says how to choose another pipes directory.
- The pipes directory is `-p DIR`, else `$SATURND_PIPES_DIR` (cassini reads it too),
  else `/tmp/<USERNAME>/saturnd/pipes`.
- One daemon per state directory: `saturnd.pid` held with `flock`; busy means "already
  running" (exit 0, starting at every login is harmless). Then one daemon per pipes
  directory: `saturnd.lock` there, held with `flock` and holding "PID\\nSTATE_DIR\\n";
  busy for PIPES_LOCK_WAIT means another daemon (another state directory) serves
  these FIFOs: refused in one line naming it, exit 1. Both descriptors are
  close-on-exec; the supervisor releases the pipes lock last.
- Logging goes to `STATE_DIR/saturnd.log` (rotated by size), and to stderr too with -f.
- Detaching uses python-daemon's `DaemonContext`, keeping every descriptor open now.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import os
import pwd
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saturnd.protocol import PIPES_LOCK, REPLY_PIPE, REQUEST_PIPE
from saturnd.store import Store, StoreError

PID_FILE: Final = "saturnd.pid"
LOG_FILE: Final = "saturnd.log"
LOG_MAX_BYTES: Final = 1 << 20
LOG_BACKUPS: Final = 3
PIPES_DIR_VARIABLE: Final = "SATURND_PIPES_DIR"
"""The environment variable both saturnd and cassini read for the pipes directory."""
PIPES_LOCK_WAIT: Final = 1.0
"""Seconds to retry a busy pipes lock: a stopping `cassini -q` may probe it briefly."""
_LOCK_OWNER_WAIT: Final = 0.5
"""Seconds to wait for a daemon that just took the pipes lock to write who it is."""
PIPES_HINT: Final = (
    f"choose another pipes directory with -p DIR or {PIPES_DIR_VARIABLE}=DIR "
    "(both saturnd and cassini read it)"
)
STATE_HINT: Final = "choose another state directory with -s DIR"


class DaemonError(Exception):
    """A set-up failure, reported as one line and exit status 1."""


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

    @property
    def pipes_lock(self) -> Path:
        return self.pipes_dir / PIPES_LOCK


# --- where -----------------------------------------------------------------------------


def default_pipes_dir(username: str) -> tuple[Path, Path]:
    """The default pipes directory and the first directory of ours above it."""
    base = Path("/tmp") / username
    return base / "saturnd" / "pipes", base


def pipes_dir_choice(
    option: str | None, environ: Mapping[str, str], username: str
) -> tuple[Path, Path | None]:
    """(pipes directory, the first directory of ours above it or None): `-p` beats
    $SATURND_PIPES_DIR beats the default. Only the default's base lies in a shared
    directory (/tmp), where someone else may have created it first."""
    chosen = option or environ.get(PIPES_DIR_VARIABLE)
    if chosen:
        return Path(os.path.abspath(chosen)), None
    return default_pipes_dir(username)


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/saturnd`, i.e. `~/.local/state/saturnd` by default."""
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "saturnd"
    return Path.home() / ".local" / "state" / "saturnd"


# --- directories -----------------------------------------------------------------------


def _user_name(uid: int) -> str:
    """`bob`, or `uid 1234` for a uid without a passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _check_dir(path: Path, notes: list[str], hint: str) -> None:
    """A directory of ours with mode 0700, or DaemonError (ending with `hint`)."""
    try:
        info = os.lstat(path)
    except OSError as error:
        raise DaemonError(f"cannot inspect {path}: {error.strerror}") from error
    if stat.S_ISLNK(info.st_mode):
        raise DaemonError(f"{path} is a symbolic link, not a directory; {hint}")
    if not stat.S_ISDIR(info.st_mode):
        raise DaemonError(f"{path} exists and is not a directory; {hint}")
    if info.st_uid != os.geteuid():
        raise DaemonError(f"{path} is owned by {_user_name(info.st_uid)}, not by you; {hint}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, 0o700, follow_symlinks=False)
        except OSError as error:
            raise DaemonError(f"cannot tighten {path} to 0700: {error.strerror}") from error
        notes.append(f"tightened {path} from {mode:o} to 700")


def secure_dir(path: Path, checked_from: Path | None, notes: list[str], hint: str) -> None:
    """Create `path` (and missing parents) 0700 and check it.

    Every directory created here is checked, and so is every existing one at or below
    `checked_from` (for the default pipes directory under the shared /tmp, that is
    `/tmp/<USERNAME>`: another user could have planted it). Those already there are
    checked before anything is created, so nothing of ours lands in another's directory.
    """
    path = Path(os.path.abspath(path))
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    ours = [path]
    if checked_from is not None:
        base = Path(os.path.abspath(checked_from))
        current = path
        while current != base and base in current.parents:
            current = current.parent
            ours.append(current)
    ours = sorted(set(ours), key=lambda p: len(p.parts))
    for directory in ours:
        if directory not in missing:
            _check_dir(directory, notes, hint)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # raced with someone: checked below like any existing directory
        except OSError as error:
            raise DaemonError(f"cannot create {directory}: {error.strerror}") from error
    for directory in sorted(set(ours) | set(missing), key=lambda p: len(p.parts)):
        _check_dir(directory, notes, hint)


def prepare(paths: Paths, pipes_base: Path | None) -> list[str]:
    """Create and check both directories; the notes to log once logging is up."""
    notes: list[str] = []
    secure_dir(paths.pipes_dir, pipes_base, notes, PIPES_HINT)
    secure_dir(paths.state_dir, None, notes, STATE_HINT)
    return notes


# --- one daemon per state directory, one per pipes directory ------------------------------


def _open_lock_file(path: Path, notes: list[str]) -> int:
    """Open (creating it 0600) a lock file of ours: a regular file, never through a
    symlink. Whatever else stands there was put there in our own checked directory
    (by the user or a cleaner) and is replaced, like a FIFO would be."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            notes.append(f"{path} was not a regular file; replaced it")
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise DaemonError(f"cannot inspect {path}: {error.strerror}") from error
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        raise DaemonError(f"cannot open {path}: {error.strerror}") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DaemonError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise DaemonError(f"{path} is owned by {_user_name(info.st_uid)}, not by you")
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
            notes.append(f"tightened {path} from {stat.S_IMODE(info.st_mode):o} to 600")
    except BaseException:
        os.close(fd)
        raise
    return fd


def take_lock(pid_file: Path, notes: list[str] | None = None) -> int | None:
    """The locked pid file's fd, or None if another daemon holds it."""
    fd = _open_lock_file(pid_file, [] if notes is None else notes)
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
    _rewrite(fd, f"{os.getpid()}\n".encode("ascii"))


def take_pipes_lock(path: Path, notes: list[str], wait: float = PIPES_LOCK_WAIT) -> int | None:
    """The locked `saturnd.lock`'s fd, or None if another daemon still holds it after
    `wait` seconds (a stopping `cassini -q` probes it for microseconds)."""
    fd = _open_lock_file(path, notes)
    deadline = time.monotonic() + wait
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            os.close(fd)
            return None
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.05)


def write_pipes_owner(fd: int, state_dir: Path) -> None:
    """Say in the held pipes lock who we are: "PID\\nSTATE_DIR\\n"."""
    _rewrite(fd, f"{os.getpid()}\n".encode("ascii") + os.fsencode(state_dir) + b"\n")


def parse_pipes_owner(data: bytes) -> tuple[int, Path] | None:
    """(pid, state directory) from a pipes lock's content, or None if not (yet) that."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] or not lines[0].isdigit() or not lines[1]:
        return None
    return int(lines[0]), Path(os.fsdecode(lines[1]))


def pipes_in_use(paths: Paths) -> str:
    """The one line refusing a pipes directory that another daemon serves."""
    owner = None
    deadline = time.monotonic() + _LOCK_OWNER_WAIT
    while owner is None and time.monotonic() < deadline:
        try:
            owner = parse_pipes_owner(paths.pipes_lock.read_bytes())
        except OSError:
            break
        if owner is None:
            time.sleep(0.01)  # it took the lock an instant ago and writes who it is next
    who = f" (pid {owner[0]}, state directory {owner[1]})" if owner else ""
    return f"pipes directory {paths.pipes_dir} is in use by another saturnd{who}"


def _rewrite(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


# --- logging -----------------------------------------------------------------------------


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


# --- the rest of the start -----------------------------------------------------------------


def make_fifos(paths: Paths, logger: logging.Logger) -> None:
    """Create (or check) both FIFOs, 0600."""
    from saturnd.listener import ensure_fifo

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


def detach() -> None:
    """Become a daemon (double fork, setsid, chdir /, umask 077), keeping our descriptors
    (the locks, the log)."""
    import daemon  # python-daemon: only a daemon that detaches pays its import

    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o077,
        files_preserve=open_fds(),
        detach_process=True,
    )
    try:
        context.open()
    except Exception as error:  # python-daemon raises its own error types
        raise DaemonError(f"cannot detach: {error}") from error


__all__ = [
    "PIPES_DIR_VARIABLE",
    "PIPES_HINT",
    "PIPES_LOCK_WAIT",
    "DaemonError",
    "Paths",
    "check_store",
    "default_pipes_dir",
    "default_state_dir",
    "detach",
    "log_fds",
    "make_fifos",
    "open_fds",
    "parse_pipes_owner",
    "pipes_dir_choice",
    "pipes_in_use",
    "prepare",
    "running_pid",
    "secure_dir",
    "setup_logging",
    "take_lock",
    "take_pipes_lock",
    "write_pid",
    "write_pipes_owner",
]
