"""Starting one command of a run as `execvp` would (P6), and the exit code of one that
cannot start.

This module owns the PATH search, the spawn itself and what is recorded when nothing
can be executed; the supervising loop (runsupervisor.py) calls `Launcher.spawn`.

Rules:
- P6 is spawned with the default disposition for every catchable signal and an empty
  signal mask: Python ignores SIGPIPE (and an ignored signal stays ignored across exec),
  so without this `yes | head -1` would end with "Broken pipe" on stderr. glibc's
  posix_spawn leaves its two internal signals (32 and 33) ignored, which no program can
  use through glibc anyway.
- P6: its own session (setsid), stdin from /dev/null or from the task's input (an
  anonymous memory file, `input_fd`: a pipe would block P5 on a big input that the
  command never reads), stdout and stderr to two pipes, the task's environment
  (taskenv.py) and the working directory P5 changed to, then the PATH search of
  `execvp` in the task's own PATH, including its fallback of running a file the kernel
  cannot execute with /bin/sh. P5 skips PATH entries where the file does not exist (a
  `stat`, remembered for the batch) instead of paying a failed spawn for each. When
  nothing can be executed, the run's stderr gets `saturnd: cannot execute '<argv0>':
  <reason>` and it is recorded as a POSIX shell reports it: exit code 127 when no file
  was found (or an argument holds a NUL byte), 126 when one was found but cannot be
  executed (no permission, a bad binary); the log says "could not start". A spawn that
  fails for lack of processes or memory (EAGAIN, ENOMEM) is recorded as 0xFFFF with
  `saturnd: cannot start the command: <reason>`, like a failed fork.
- The command gets the daemon's descriptor limit, never the daemon's environment.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
from typing import Final

from saturnd.taskenv import TASK_UMASK

__all__ = [
    "CATCHABLE_SIGNALS",
    "EXITCODE_CANNOT_EXECUTE",
    "EXITCODE_NOT_FOUND",
    "Launcher",
    "input_fd",
    "spawn_hook",
    "strerror",
]

EXITCODE_NOT_FOUND: Final = 127
"""Exit status of a run whose command is not found, as a shell reports it."""

EXITCODE_CANNOT_EXECUTE: Final = 126
"""Exit status of a run whose command exists but cannot be executed (no permission,
a bad binary, ...), as a shell reports it."""

# Every signal whose disposition can be set: SIGKILL and SIGSTOP cannot.
CATCHABLE_SIGNALS: Final[tuple[int, ...]] = tuple(
    sorted(int(s) for s in signal.valid_signals() if s not in {signal.SIGKILL, signal.SIGSTOP})
)

# Errors after which execvp goes on to the next PATH entry without remembering them:
# they mean "not here". Any other error (EACCES, ...) is the one reported if nothing runs.
_NOT_HERE: Final = frozenset({errno.ENOENT, errno.ENOTDIR})
# Errors of a spawn that mean "no process could be made", not "this file cannot run".
_NO_PROCESS: Final = frozenset({errno.EAGAIN, errno.ENOMEM})

_SH: Final = b"/bin/sh"


class Launcher:
    """Starts the commands of one batch; remembers, for the batch, which paths do not
    exist and where each argv[0] is looked for in each PATH."""

    def __init__(self, null: int, daemon_limit: int | None) -> None:
        self.null = null  # /dev/null, the commands' stdin when they have no input
        self.daemon_limit = daemon_limit  # the limit to spawn under, None if P5's own
        self.missing: set[bytes] = set()  # paths found not to exist, in this batch
        # The exec paths of an argv[0] under a PATH (None: unset).
        self.paths: dict[tuple[bytes, bytes | None], tuple[bytes, ...]] = {}
        self.valid_env: dict[bytes, bytes] | None = None  # the last one checked

    def spawn(
        self,
        argv: tuple[bytes, ...],
        out: int,
        err: int,
        env: dict[bytes, bytes],
        stdin: int = -1,
    ) -> tuple[int, int | None, bytes, str]:
        """Spawn the command like `execvp`, with environment `env` (whose PATH is
        searched) and standard input `stdin` (-1: /dev/null): (pid, -1 if none; the
        wait status to record when there is no command, None for "did not run at all";
        the message for its stderr and the reason for the log when there is no
        command)."""
        argv0 = argv[0]
        prefix = b"saturnd: cannot execute '" + argv0 + b"': "
        if any(b"\0" in arg for arg in argv):
            reason = b"argument contains a NUL byte"
            return -1, EXITCODE_NOT_FOUND << 8, prefix + reason + b"\n", reason.decode()
        if env is not self.valid_env and not _valid_env(env):
            # posix_spawn would raise ValueError; the store refuses such a task anyway.
            reason = b"invalid environment variable"
            return -1, EXITCODE_NOT_FOUND << 8, prefix + reason + b"\n", reason.decode()
        self.valid_env = env
        key = (argv0, env.get(b"PATH"))
        paths = self.paths.get(key)
        if paths is None:
            paths = self.paths[key] = _exec_paths(*key)
        actions = [
            (os.POSIX_SPAWN_DUP2, self.null if stdin < 0 else stdin, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, err, 2),
        ]
        reported: OSError | None = None
        last: OSError | None = None
        for path in paths:
            if path in self.missing or not _exists(path):
                self.missing.add(path)
                last = last or FileNotFoundError(errno.ENOENT, "not found")
                continue
            try:
                return self._posix_spawn(path, list(argv), actions, env), None, b"", ""
            except OSError as error:
                failure = error
            if failure.errno == errno.ENOEXEC:
                # A file the kernel cannot execute (a script without "#!"): execvp hands
                # it to the shell, and so do we.
                try:
                    return (
                        self._posix_spawn(_SH, [_SH, path, *argv[1:]], actions, env),
                        None,
                        b"",
                        "",
                    )
                except OSError as error:
                    failure = error
            if failure.errno in _NO_PROCESS:
                reason = strerror(failure)
                message = b"saturnd: cannot start the command: %s\n" % reason
                return -1, None, message, reason.decode()
            last = failure
            if reported is None and failure.errno not in _NOT_HERE:
                reported = failure
        # As POSIX shells do: 127 when no file was found, 126 when one was found and
        # could not be executed (no permission, a bad binary, ...).
        code = EXITCODE_NOT_FOUND if reported is None else EXITCODE_CANNOT_EXECUTE
        reason = strerror(reported or last or FileNotFoundError())
        return -1, code << 8, prefix + reason + b"\n", reason.decode()

    def _posix_spawn(
        self,
        path: bytes,
        argv: list[bytes],
        actions: list[tuple[int, int, int]],
        env: dict[bytes, bytes],
    ) -> int:
        """One spawn, under the daemon's own descriptor limit (the command inherits it)."""
        if self.daemon_limit is None:
            return _posix_spawn(path, argv, actions, env)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.daemon_limit, hard))
        try:
            return _posix_spawn(path, argv, actions, env)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    # --- relaying and reaping ----------------------------------------------------------


def _posix_spawn(
    path: bytes, argv: list[bytes], actions: list[tuple[int, int, int]], env: dict[bytes, bytes]
) -> int:
    """Spawn one command: own session, default signals, empty mask, redirections,
    umask 022 (P5 keeps the daemon's 077 for every file of its own)."""
    previous = os.umask(TASK_UMASK)
    try:
        return os.posix_spawn(
            path,
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigmask=(),
            setsigdef=CATCHABLE_SIGNALS,
        )
    finally:
        os.umask(previous)


def spawn_hook(argv: tuple[bytes, ...], env: dict[bytes, bytes], null: int) -> int:
    """Start a command P5 does not supervise (a task's on-failure command) as a run's
    command is started, all three standard descriptors on /dev/null (`null`): its pid.
    Raises OSError, ValueError (a NUL byte)."""
    actions = [(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]
    return _posix_spawn(argv[0], list(argv), actions, env)


def input_fd(data: bytes) -> int:
    """A close-on-exec descriptor, at offset 0, of an anonymous file holding `data`: a
    command's standard input that never blocks its writer (raises OSError)."""
    try:
        fd = os.memfd_create("saturnd-input", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        # No memfd (an old kernel): an unlinked file in /tmp does the same.
        fd = os.open("/tmp", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _exec_paths(argv0: bytes, path: bytes | None) -> tuple[bytes, ...]:
    """The paths `execvp` tries for `argv0`, in order (PATH as the runs see it)."""
    if b"/" in argv0:
        return (argv0,)
    # Unset PATH: the default of os.execvp; an empty entry means the current directory.
    dirs = (os.fsencode(os.defpath) if path is None else path).split(b":")
    return tuple(os.path.join(d, argv0) for d in dirs)


def _valid_env(env: dict[bytes, bytes]) -> bool:
    """Whether execve can pass `env`: names without `=` or NUL, values without NUL."""
    return all(
        name and b"=" not in name and b"\0" not in name and b"\0" not in value
        for name, value in env.items()
    )


def _exists(path: bytes) -> bool:
    """False only when `path` certainly names nothing (what execvp would skip)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # EACCES and the like: let the spawn report it
    return True


def strerror(error: OSError) -> bytes:
    """The C library's message for an error, as bytes for a descriptor."""
    return os.strerror(error.errno or errno.EIO).encode()
