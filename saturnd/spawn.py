"""Runs of tasks: the P4/P5/P6 processes, redirections, exec, exit status, recording.

This module owns everything between "the executor decided these tasks run now" and
"each run is in `task_<N>/times-exitcodes` and its output in `task_<N>/stdout|stderr`":

    executor --fork--> P4 --fork--> P5 --posix_spawn--> P6 (one per run): the command
                       P4 exits at once (the executor reaps it at once, so it never
                       waits for a run); P5 is adopted by init, supervises the runs
                       it was given, records each one as it ends.

The executor hands the runs of one minute to `spawn_runs` as one batch: one P4 and one
P5 for all of them, and each command is started from P5 with `posix_spawn` (a vfork-like
clone: no copy of P5's page tables, no Python in the child). A run is as independent
of the daemon as with one P5 per run; what runs of one minute share is their
supervising process, which stays until the last of them has ended.

Rules:
- The executor computes nothing per run: the batch is an iterable consumed in P5 only,
  which is where the command lines are looked up and the exec paths worked out. The
  children of the executor import nothing and never return into its code: every child
  path ends in `os._exit` inside `try/finally`, so no atexit handler runs and no
  inherited stdio buffer is flushed twice.
- P5 closes every inherited descriptor >= 3 except `keep_fds` and the descriptors of
  the logger's handlers (so a run never keeps the daemon's pid-file flock or FIFOs
  alive; those kept are made close-on-exec), then calls `setsid`, so runs survive a
  restart of the daemon or a kill of its process group. Every descriptor P5 opens is
  close-on-exec: the command inherits only 0, 1 and 2.
- P6 is spawned with the default disposition for every catchable signal and an empty
  signal mask: Python ignores SIGPIPE (and an ignored signal stays ignored across exec),
  so without this `yes | head -1` would end with "Broken pipe" on stderr. glibc's
  posix_spawn leaves its two internal signals (32 and 33) ignored, which no program can
  use through glibc anyway.
- P6: its own session (setsid), stdin from /dev/null, stdout and stderr to two pipes,
  cwd $HOME (else /; P5 changes directory once, P6 inherits it), then the PATH search of
  `execvp`, including its fallback of running a file the kernel cannot execute with
  /bin/sh. P5 skips PATH entries where the file does not exist (a `stat`, remembered for
  the batch) instead of paying a failed spawn for each. When nothing can be executed,
  the run's stderr gets `saturnd: cannot execute '<argv0>': <reason>` and it is
  recorded as a POSIX shell reports it: exit code 127 when no file was found (or an
  argument holds a NUL byte), 126 when one was found but cannot be executed (no
  permission, a bad binary); the log says "could not start". A spawn that fails for lack of
  processes or memory (EAGAIN, ENOMEM) is recorded as 0xFFFF with
  `saturnd: cannot start the command: <reason>`, like a failed fork.
- P5 relays each run's two pipes into `stdout.<P5 pid>.<n>.tmp` and
  `stderr.<P5 pid>.<n>.tmp` in its task directory (n: the run's number in the batch; one
  task can run for several minutes in one batch after a clock jump), keeping at most
  `max_output` bytes of each (1 MiB by default, `saturnd --max-output`) and discarding
  the rest, so a task that floods its output costs a bounded amount of disk; past the
  cap the kernel moves the bytes to /dev/null (`splice`), so a flood costs little CPU
  either. It records a run as soon as its command ends (SIGCHLD on a self-pipe wakes
  its poll loop; where no wakeup fd can be set, it looks five times a second), after
  reading what is already buffered in the pipes; a background child that still holds
  them open then changes nothing that was published, and is not killed by SIGPIPE: P5
  stays, reading and discarding, until the last writer closes.
- Descriptors: a running command costs P5 five (task directory, two files, two pipes).
  P5 raises its own soft RLIMIT_NOFILE to the hard limit, but spawns each command under
  the daemon's limit, which the command inherits; if a batch needs more descriptors
  than that, the runs beyond wait for earlier ones to end (one log line).
- A stream that cannot be stored (disk full, file size limit) is cut where the error
  happened and the run is still recorded. P5 keeps SIGXFSZ ignored for itself (as Python
  has it) so a file size limit gives it an error, not death; the command gets the
  default.
- Children use plain try/except rather than `contextlib.suppress`: nothing to allocate.
- An exit status is decoded in exactly one place, `proc.decode_status`.
- A removed task leaves nothing behind: P5 creates, renames and unlinks through a
  descriptor of the task directory, so it never recreates a removed directory (a
  deleted one takes no new entries); the recorder opens `times-exitcodes` by path
  without creating the directory, so FileNotFoundError means "removed meanwhile"
  (store first renames the directory away): P5 then unlinks the run's temporaries.
- The command gets the daemon's environment; PATH and HOME are read when the batch is
  handed over.

Ordering of the history and the outputs. Two runs of one task can end together; the
`stdout`/`stderr` left visible must be those of the run recorded last. P5 takes
`flock(LOCK_EX)` on the *task directory's own descriptor* for the span "record, then
rename both temporaries over stdout and stderr", so these spans of two runs never
interleave: the run that records last also renames last. The recorder
(`taskdir.append_run`) takes its own lock on `times-exitcodes`; the directory lock
(`taskdir.lock_runs`) is a second, separate lock known only to writers of runs, so it
costs readers nothing; taskdir.py gives the lock order. Alternatives rejected: renaming
inside the recorder's lock would need a callback in its API; a lock file would add an
entry to `task_<ID>/`.

Cost (bench/bench_punctuality.py, 1,000 runs due in one minute, 2 CPUs): with a fork of
P4 and of P5 per run from the executor's image, and a fork of P6 from each P5, the
last of the 1,000 started 5-7 x later than a bare `posix_spawn` loop took for all; the
forks were the whole cost (py-spy). With one batch per minute the starts are that loop
plus the creation of each run's files and pipes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import select
import signal
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

from saturnd import proctitle, taskdir
from saturnd.proc import EXITCODE_ABNORMAL, decode_status

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "EXITCODE_ABNORMAL",
    "EXITCODE_CANNOT_EXECUTE",
    "EXITCODE_NOT_FOUND",
    "Recorder",
    "RunSpec",
    "spawn_run",
    "spawn_runs",
]

Recorder = Callable[[Path, int, int], None]
"""Appends one finished run (task directory, start time, exit code) to the history."""

EXITCODE_NOT_FOUND: Final = 127
"""Exit status of a run whose command is not found, as a shell reports it."""

EXITCODE_CANNOT_EXECUTE: Final = 126
"""Exit status of a run whose command exists but cannot be executed (no permission,
a bad binary, ...), as a shell reports it."""

DEFAULT_MAX_OUTPUT: Final = 1 << 20
"""Bytes of each of stdout and stderr a run's stored output keeps (`saturnd --max-output`)."""

# What P5 reads from a pipe at once, and moves to /dev/null at once past the cap.
_CHUNK: Final = 1 << 16
_DISCARD: Final = 1 << 20
_POLL_IN: Final = select.POLLIN | select.POLLHUP | select.POLLERR

# Every signal whose disposition can be set: SIGKILL and SIGSTOP cannot.
_CATCHABLE_SIGNALS: Final[tuple[int, ...]] = tuple(
    sorted(int(s) for s in signal.valid_signals() if s not in {signal.SIGKILL, signal.SIGSTOP})
)

# Errors after which execvp goes on to the next PATH entry without remembering them:
# they mean "not here". Any other error (EACCES, ...) is the one reported if nothing runs.
_NOT_HERE: Final = frozenset({errno.ENOENT, errno.ENOTDIR})
# Errors of a spawn that mean "no process could be made", not "this file cannot run".
_NO_PROCESS: Final = frozenset({errno.EAGAIN, errno.ENOMEM})

# Descriptors a run holds while its command runs (task directory, two files, two
# pipes), plus the two write ends held while it is being started.
_FDS_PER_RUN: Final = 7
# Descriptors kept free for everything else P5 opens (the recorder's, the logger's).
_FD_RESERVE: Final = 32
# A hard limit this high is as good as none; P5 does not raise its own past it.
_FD_CEILING: Final = 1 << 20

_SH: Final = b"/bin/sh"
_DEV_NULL: Final = b"/dev/null"
_OUTPUT_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class RunSpec:
    """What to run: the task, its directory, its command line and its start time.

    `start_time` (epoch seconds) is what the history records; it comes from the
    daemon's clock, which may be a fake clock in tests.
    """

    task_id: int
    task_dir: Path
    argv: tuple[bytes, ...]
    start_time: int


@dataclass(frozen=True, slots=True)
class _Batch:
    """Everything P5 needs, gathered in the executor before forking (nothing per run)."""

    specs: Iterable[RunSpec]
    record: Recorder
    logger: logging.Logger | None
    home: bytes
    path: bytes | None  # $PATH, None when unset
    keep: tuple[int, ...]
    p5_close: tuple[tuple[int, int], ...]
    max_output: int
    role: str  # P5's process title (proctitle.py)


@dataclass(slots=True)
class _Stream:
    """One of a command's output pipes as P5 relays it into its temporary file."""

    pipe: int
    file: int
    room: int  # bytes the file may still take
    cut: bool = False  # bytes were discarded (past the cap, or the file failed)
    error: OSError | None = None


@dataclass(slots=True)
class _Run:
    """One run in P5: its files, its pipes, its command."""

    spec: RunSpec
    dirfd: int
    out_name: bytes
    err_name: bytes
    streams: list[_Stream] = field(default_factory=list)
    pid: int = -1
    status: int | None = None  # the command's wait status, None if it never ran
    started: float = 0.0  # monotonic, for the log's duration only
    failure: str = ""  # why the command could not start, for the log ("" if it did)


def spawn_run(
    spec: RunSpec,
    *,
    keep_fds: Collection[int] = (),
    record: Recorder | None = None,
    logger: logging.Logger | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> None:
    """Start one run of `spec` (a batch of one, see `spawn_runs`).

    Raises ValueError for an empty command line, OSError when a fork fails.
    """
    if not spec.argv or not spec.argv[0]:
        raise ValueError(f"task {spec.task_id}: empty command line")
    spawn_runs((spec,), keep_fds=keep_fds, record=record, logger=logger, max_output=max_output)


def spawn_runs(
    specs: Iterable[RunSpec],
    *,
    keep_fds: Collection[int] = (),
    record: Recorder | None = None,
    logger: logging.Logger | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
    role: str = "runs",
) -> None:
    """Start the runs of `specs`; return once P4 has exited (two forks, a few ms).

    `specs` is iterated in P5 only (a generator that looks up the command lines is
    fine, and costs the caller nothing). The runs go on in P5, which starts every
    command, relays its output keeping at most `max_output` bytes of each stream,
    records `(spec.start_time, exitcode)` with `record` (default `taskdir.append_run`)
    when the command ends, renames the outputs over `stdout` and `stderr`, logs one
    line per run via `logger` and exits once nothing holds any command's output open
    any more. A spec with an empty command line is logged and skipped.
    `keep_fds` stay open in P5 (with the logger's handler descriptors); every other
    descriptor >= 3 is closed there, and no command inherits any of them. P5 is named
    `saturnd: <role>` (`proctitle.runs_role`: "runs of HH:MM").

    Raises ValueError for a negative `max_output`, OSError when the first or second
    fork fails (no run was started then).
    """
    if max_output < 0:
        raise ValueError(f"max_output must not be negative, not {max_output}")
    if record is None:
        record = taskdir.append_run
    keep = set(keep_fds) | _logger_fds(logger)
    batch = _Batch(
        specs=specs,
        record=record,
        logger=logger,
        home=os.environb.get(b"HOME") or b"/",
        path=os.environb.get(b"PATH"),
        keep=tuple(sorted(fd for fd in keep if fd >= 3)),
        p5_close=_close_ranges(keep, _fd_limit()),
        max_output=max_output,
        role=role,
    )

    p4 = os.fork()
    if p4 == 0:
        _p4(batch)
    status = _waitpid(p4)
    if status is None:
        return  # somebody else reaped P4: it exited at once, nothing more to learn
    code = decode_status(status).exitcode
    if code == EXITCODE_ABNORMAL:
        raise OSError("cannot start runs: their first child was killed")
    if code != 0:
        # P4 exits with the errno of its failed fork (see _p4).
        raise OSError(code, f"cannot start runs: {os.strerror(code)}")


def _fd_limit() -> int:
    """One past the highest descriptor number the process may hold, or holds: a limit
    lowered after descriptors were opened leaves them above it."""
    limit = os.sysconf("SC_OPEN_MAX")
    # close_range(2) makes a large bound free; without it CPython loops up to the bound.
    limit = limit if limit > 0 else 65536
    try:
        highest = max((int(name) for name in os.listdir("/proc/self/fd")), default=-1)
    except (OSError, ValueError):
        return limit
    return max(limit, highest + 1)


def _close_ranges(keep: Collection[int], max_fd: int) -> tuple[tuple[int, int], ...]:
    """The `closerange` spans covering [3, max_fd) except the descriptors in `keep`."""
    ranges: list[tuple[int, int]] = []
    low = 3
    for fd in sorted(fd for fd in keep if 3 <= fd < max_fd):
        if low < fd:
            ranges.append((low, fd))
        low = fd + 1
    if low < max_fd:
        ranges.append((low, max_fd))
    return tuple(ranges)


def _logger_fds(logger: logging.Logger | None) -> set[int]:
    """Descriptors used by the handlers `logger` emits through, so P5 can still log."""
    fds: set[int] = set()
    current = logger
    while current is not None:
        for handler in current.handlers:
            for attribute in ("stream", "socket", "sock"):
                fileno = getattr(getattr(handler, attribute, None), "fileno", None)
                if fileno is None:
                    continue
                # A stream may have no descriptor (StringIO) or be closed.
                with contextlib.suppress(OSError, ValueError):
                    fds.add(int(fileno()))
        current = current.parent if current.propagate else None
    return fds


def _waitpid(pid: int) -> int | None:
    """Wait for child `pid`; its status, or None if it was already reaped elsewhere."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue  # only when a signal handler raised; the child is still ours
        except ChildProcessError:
            return None


def _p4(batch: _Batch) -> NoReturn:
    """P4: fork P5 and exit at once, with the fork's errno as status if it failed."""
    code = 1
    try:
        if os.fork() == 0:
            _p5(batch)
        code = 0
    except OSError as error:
        code = error.errno if error.errno and error.errno < 256 else 1
    finally:
        os._exit(code)


def _p5(batch: _Batch) -> NoReturn:
    """P5: detach, start the runs, relay and record each one, exit when all are done."""
    try:
        _detach(batch)
        proctitle.set_role(batch.role)
        _Supervisor(batch).run()
    except BaseException:
        if batch.logger is not None:
            batch.logger.exception("runs failed")
    finally:
        os._exit(0)


def _detach(batch: _Batch) -> None:
    """Leave the daemon: its descriptors, its session, its signal handling."""
    # First, so that no signal arriving later writes into a descriptor number reused
    # after the close below.
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass  # not the main thread: no wakeup fd can be set either
    for low, high in batch.p5_close:
        os.closerange(low, high)
    for fd in batch.keep:
        try:
            os.set_inheritable(fd, False)  # P5 keeps them; no command may
        except OSError:
            pass  # not open (any more): nothing to keep from the commands
    os.setsid()
    for signum in _CATCHABLE_SIGNALS:
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # a signal reserved by the C library
    # P5 writes files: past a file size limit it must get EFBIG, not die (the
    # commands get the default: they are spawned with every signal at its default).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        os.chdir(batch.home)
    except OSError:
        os.chdir(b"/")  # as cron does when $HOME is missing


class _Supervisor:
    """P5's work: start the batch's commands, relay their output, record each run."""

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.log = batch.logger
        self.pid = os.getpid()
        self.null = _open_null()
        self.waker = _sigchld_waker()  # before the first spawn: a command may end at once
        self.poller = select.poll()
        if self.waker >= 0:
            self.poller.register(self.waker, select.POLLIN)
        self.running: dict[int, _Run] = {}  # by the command's pid
        self.pipes: dict[int, tuple[_Run, _Stream]] = {}  # every pipe still open
        self.unstarted: list[_Run] = []  # no command (cannot execute...): to record
        self.missing: set[bytes] = set()  # paths found not to exist, in this batch
        self.paths: dict[bytes, tuple[bytes, ...]] = {}  # the exec paths of an argv[0]
        # The daemon's environment, as a plain dict: os.environ would be converted
        # through its mapping methods at every spawn (8 % of the start loop).
        self.env = dict(os.environb)
        self.daemon_limit, budget = _raise_fd_limit()
        self.budget = budget - _FD_RESERVE
        self.held = 0  # descriptors the runs hold
        self.started = 0  # runs numbered so far

    def run(self) -> None:
        """Start every run (as descriptors allow), then relay and record until the
        last command has ended and nothing holds any output pipe."""
        specs = iter(self.batch.specs)
        more = True
        waited = False
        began = time.monotonic()
        while True:
            while more and (self._room_for_a_run() or not (self.running or self.pipes)):
                spec = next(specs, None)
                if spec is None:
                    more = False
                    self._log_starts(began)
                else:
                    self._start(spec)
            if more and not waited and self.log is not None:
                waited = True
                self.log.warning(
                    "%d runs started; the others wait for earlier ones to end (open file limit %d)",
                    self.started,
                    self.budget + _FD_RESERVE,
                )
            while self.unstarted:
                self._finish(self.unstarted.pop())
            if not more and not self.running and not self.pipes:
                return
            timeout = 200 if self.running and self.waker < 0 else None
            events = self.poller.poll(timeout)
            woken = not events
            for fd, _ in events:
                if fd == self.waker:
                    woken = True
                    _empty(fd)
                elif fd in self.pipes:
                    self._relay(fd, _CHUNK)
            if woken:
                self._reap()

    def _room_for_a_run(self) -> bool:
        # When nothing is left to wait for, a run is started anyway: if descriptors
        # run out, that run is recorded as not started instead of waiting forever.
        return self.held + _FDS_PER_RUN <= self.budget

    def _log_starts(self, began: float) -> None:
        if self.log is not None and self.started > 1:
            self.log.info("%d runs started in %.3f s", self.started, time.monotonic() - began)

    # --- starting ------------------------------------------------------------------

    def _start(self, spec: RunSpec) -> None:
        """Create the run's files and pipes and spawn its command."""
        self.started += 1
        logger = self.log
        argv = spec.argv
        if not argv or not argv[0]:
            if logger is not None:
                logger.error("task %d: empty command line, not run", spec.task_id)
            return
        out_name, err_name = taskdir.temporary_names(self.pid, self.started)
        dirfd = out = -1
        try:
            dirfd = os.open(spec.task_dir, _DIR_FLAGS)
            out = os.open(out_name, _OUTPUT_FLAGS, 0o600, dir_fd=dirfd)
            err = os.open(err_name, _OUTPUT_FLAGS, 0o600, dir_fd=dirfd)
        except OSError as error:
            if out >= 0:
                os.close(out)
                _unlink(dirfd, out_name)
            if dirfd >= 0:
                os.close(dirfd)
            if logger is not None:
                if isinstance(error, FileNotFoundError | NotADirectoryError):
                    # Removed before the run: a removed directory takes no new
                    # entries, so there is nothing to clean up.
                    logger.info("task %d: task directory gone, run not started", spec.task_id)
                else:
                    logger.error("task %d: cannot create output files: %s", spec.task_id, error)
            return
        self.held += 3
        run = _Run(spec, dirfd, out_name, err_name, started=time.monotonic())
        write_ends: list[int] = []
        message = b""
        try:
            for file in (out, err):
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                run.streams.append(_Stream(read_end, file, self.batch.max_output))
                write_ends.append(write_end)
                self.held += 1
        except OSError as error:
            run.failure = _strerror(error).decode()
            message = b"saturnd: cannot start the command: %s\n" % _strerror(error)
        else:
            run.pid, run.status, message, run.failure = self._spawn(
                argv, write_ends[0], write_ends[1]
            )
        # Only the command (and what it starts) may hold the write ends: their end of
        # file means "all gone".
        for write_end in write_ends:
            os.close(write_end)
        if run.pid > 0:
            self.running[run.pid] = run
            for stream in run.streams:
                self.pipes[stream.pipe] = (run, stream)
                self.poller.register(stream.pipe, _POLL_IN)
            return
        for stream in run.streams:
            os.close(stream.pipe)  # nobody ever wrote into it
            stream.pipe = -1
            self.held -= 1
        if len(run.streams) < 2:
            run.streams = [_Stream(-1, out, 0), _Stream(-1, err, self.batch.max_output)]
        _store(run.streams[1], message)
        self.unstarted.append(run)

    def _spawn(
        self, argv: tuple[bytes, ...], out: int, err: int
    ) -> tuple[int, int | None, bytes, str]:
        """Spawn the command like `execvp`: (pid, -1 if none; the wait status to record
        when there is no command, None for "did not run at all"; the message for its
        stderr and the reason for the log when there is no command)."""
        argv0 = argv[0]
        prefix = b"saturnd: cannot execute '" + argv0 + b"': "
        if any(b"\0" in arg for arg in argv):
            reason = b"argument contains a NUL byte"
            return -1, EXITCODE_NOT_FOUND << 8, prefix + reason + b"\n", reason.decode()
        paths = self.paths.get(argv0)
        if paths is None:
            paths = self.paths[argv0] = _exec_paths(argv0, self.batch.path)
        actions = [
            (os.POSIX_SPAWN_DUP2, self.null, 0),
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
                return self._posix_spawn(path, list(argv), actions), None, b"", ""
            except OSError as error:
                failure = error
            if failure.errno == errno.ENOEXEC:
                # A file the kernel cannot execute (a script without "#!"): execvp hands
                # it to the shell, and so do we.
                try:
                    return self._posix_spawn(_SH, [_SH, path, *argv[1:]], actions), None, b"", ""
                except OSError as error:
                    failure = error
            if failure.errno in _NO_PROCESS:
                reason = _strerror(failure)
                message = b"saturnd: cannot start the command: %s\n" % reason
                return -1, None, message, reason.decode()
            last = failure
            if reported is None and failure.errno not in _NOT_HERE:
                reported = failure
        # As POSIX shells do: 127 when no file was found, 126 when one was found and
        # could not be executed (no permission, a bad binary, ...).
        code = EXITCODE_NOT_FOUND if reported is None else EXITCODE_CANNOT_EXECUTE
        reason = _strerror(reported or last or FileNotFoundError())
        return -1, code << 8, prefix + reason + b"\n", reason.decode()

    def _posix_spawn(
        self, path: bytes, argv: list[bytes], actions: list[tuple[int, int, int]]
    ) -> int:
        """One spawn, under the daemon's own descriptor limit (the command inherits it)."""
        if self.daemon_limit is None:
            return _posix_spawn(path, argv, actions, self.env)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.daemon_limit, hard))
        try:
            return _posix_spawn(path, argv, actions, self.env)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    # --- relaying and reaping ----------------------------------------------------------

    def _relay(self, fd: int, limit: int) -> int:
        """Move up to `limit` bytes from pipe `fd`; forget the pipe at its end of file.
        Returns the bytes moved; 0 at end of file or when the pipe is empty."""
        stream = self.pipes[fd][1]
        try:
            moved = _pump(stream, self.null, limit)
        except BlockingIOError:
            return 0  # empty (a pipe of an ended command, made non-blocking)
        if not moved:
            self.poller.unregister(fd)
            del self.pipes[fd]
            self.held -= 1
        return moved

    def _reap(self) -> None:
        """Record every command that has ended."""
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = -1, 0  # reaped elsewhere: cannot happen, never wait forever
            if pid == 0:
                return
            ended = [self.running.pop(pid)] if pid in self.running else []
            if pid < 0:
                ended = list(self.running.values())
                self.running.clear()
            for run in ended:
                run.status = status
                self._drain(run)
                self._finish(run)

    def _drain(self, run: _Run) -> None:
        """Once its command has ended, what it wrote is in the pipes: read that much
        (at most a pipe's capacity each), so a background child writing on cannot hold
        the run back."""
        for stream in run.streams:
            fd = stream.pipe
            if fd < 0:
                continue
            os.set_blocking(fd, False)
            budget = _pipe_capacity(fd)
            while budget > 0:
                moved = self._relay(fd, min(budget, _CHUNK))
                if not moved:
                    break
                budget -= moved

    def _finish(self, run: _Run) -> None:
        """Record the run, publish its output, log it; its pipes, if something still
        holds them, are read and discarded from now on."""
        spec = run.spec
        logger = self.log
        for stream in run.streams:
            os.close(stream.file)
            stream.room = 0  # nothing more is stored
        ended = decode_status(run.status)
        exitcode = ended.exitcode
        duration = time.monotonic() - run.started
        dirfd = run.dirfd
        # Record and rename as one step with respect to other runs of this task: the run
        # recorded last is the one whose output stays (see the module docstring).
        published = False
        try:
            taskdir.lock_runs(dirfd)
            self.batch.record(spec.task_dir, spec.start_time, exitcode)
            taskdir.publish(dirfd, run.out_name, run.err_name)
            published = True
        except FileNotFoundError:
            if logger is not None:
                logger.info(
                    "task %d: removed during run pid %d, not recorded", spec.task_id, run.pid
                )
        except Exception as error:  # one run's failure must not end the others' watch
            if logger is not None:
                # All the history would have held, so a lost record is accounted for.
                logger.error(
                    "task %d: run LOST, not recorded (start %d, exit code %d, pid %d): %s",
                    spec.task_id,
                    spec.start_time,
                    exitcode,
                    run.pid,
                    error,
                )
        finally:
            if not published:
                _unlink(dirfd, run.out_name)
                _unlink(dirfd, run.err_name)
            os.close(dirfd)  # also releases the lock
            self.held -= 3
        if published and logger is not None and run.pid < 0:
            logger.info(
                "task %d: could not start: %s, exit code %d",
                spec.task_id,
                run.failure or "unknown reason",
                exitcode,
            )
        elif published and logger is not None:
            logger.info(
                "task %d: run pid %d finished: exit code %d (%s) after %.3f s%s",
                spec.task_id,
                run.pid,
                exitcode,
                ended.text,
                duration,
                _describe_cuts(run.streams, self.batch.max_output),
            )


def _posix_spawn(
    path: bytes, argv: list[bytes], actions: list[tuple[int, int, int]], env: dict[bytes, bytes]
) -> int:
    """Spawn one command: own session, default signals, empty mask, redirections."""
    return os.posix_spawn(
        path,
        argv,
        env,
        file_actions=actions,
        setsid=True,
        setsigmask=(),
        setsigdef=_CATCHABLE_SIGNALS,
    )


def _open_null() -> int:
    """/dev/null, at a descriptor >= 3: if the daemon had closed 0, 1 or 2, the numbers
    taken first stay as placeholders (every command gets its own 0, 1 and 2)."""
    null = os.open(_DEV_NULL, os.O_RDWR | os.O_CLOEXEC)
    while null < 3:
        null = os.open(_DEV_NULL, os.O_RDWR | os.O_CLOEXEC)
    return null


def _raise_fd_limit() -> tuple[int | None, int]:
    """Raise P5's soft RLIMIT_NOFILE to its hard limit: (the limit to spawn commands
    under, None if unchanged; the limit P5 now has)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None, 1024
    ceiling = _FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, _FD_CEILING)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        except (OSError, ValueError):
            return None, soft
        return soft, ceiling
    return None, _FD_CEILING if soft == resource.RLIM_INFINITY else soft


def _exec_paths(argv0: bytes, path: bytes | None) -> tuple[bytes, ...]:
    """The paths `execvp` tries for `argv0`, in order (PATH as the runs see it)."""
    if b"/" in argv0:
        return (argv0,)
    # Unset PATH: the default of os.execvp; an empty entry means the current directory.
    dirs = (os.fsencode(os.defpath) if path is None else path).split(b":")
    return tuple(os.path.join(d, argv0) for d in dirs)


def _exists(path: bytes) -> bool:
    """False only when `path` certainly names nothing (what execvp would skip)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # EACCES and the like: let the spawn report it
    return True


# --- the relay of a command's output ------------------------------------------------------


def _on_signal(signum: int, frame: object) -> None:
    """SIGCHLD in P5: nothing to do here; the wakeup fd has woken the poll loop."""


def _sigchld_waker() -> int:
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


def _pump(stream: _Stream, null: int, limit: int) -> int:
    """Move up to `limit` bytes from the stream's pipe: into its file while there is
    room, else to /dev/null. Returns the bytes moved, 0 at end of file (the pipe is
    closed then); raises BlockingIOError when a non-blocking pipe is empty."""
    if stream.room > 0:
        data = os.read(stream.pipe, limit)
        if data:
            _store(stream, data)
    else:
        data = b""
        try:
            # Past the cap: the kernel moves the bytes to /dev/null without copying
            # them through Python, so a flood of output costs little CPU.
            moved = os.splice(stream.pipe, null, limit, flags=os.SPLICE_F_NONBLOCK)
        except OSError as error:
            if isinstance(error, BlockingIOError):
                raise
            moved = len(os.read(stream.pipe, limit))  # no splice here: read and drop
        if moved:
            return moved
    if not data:
        os.close(stream.pipe)
        stream.pipe = -1
        return 0
    return len(data)


def _store(stream: _Stream, data: bytes) -> None:
    """Write what fits under the cap; a failing file is cut where it failed."""
    view = memoryview(data)[: stream.room]
    if len(view) < len(data):
        stream.cut = True
    while view:
        try:
            written = os.write(stream.file, view)
        except OSError as error:  # disk full, file size limit, I/O error
            stream.error = error
            stream.cut = True
            stream.room = 0
            return
        view = view[written:]
        stream.room -= written


def _pipe_capacity(fd: int) -> int:
    """How many bytes a pipe can hold (what a writer may have left in it)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (OSError, AttributeError):
        return 1 << 16  # Linux's default


def _empty(fd: int) -> None:
    """Read a non-blocking self-pipe until it is empty."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _describe_cuts(streams: list[_Stream], limit: int) -> str:
    """What the log says about output that was not kept, or nothing."""
    notes = []
    for name, stream in zip(("stdout", "stderr"), streams, strict=False):
        if stream.error is not None:
            notes.append(f"; {name} cut: {_strerror(stream.error).decode()}")
        elif stream.cut:
            notes.append(f"; {name} cut at {limit} bytes")
    return "".join(notes)


def _strerror(error: OSError) -> bytes:
    """The C library's message for an error, as bytes for a descriptor."""
    return os.strerror(error.errno or errno.EIO).encode()


def _unlink(dirfd: int, name: bytes) -> None:
    """Remove `name` from the directory, if it is still there."""
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        pass
