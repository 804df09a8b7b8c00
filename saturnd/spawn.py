"""One run of a task: the P4/P5/P6 forks, redirections, exec, exit status, recording.

This module owns everything between "the executor decided task N runs now" and "the
run is in `task_<N>/times-exitcodes` and its output is in `task_<N>/stdout|stderr`":

    executor --fork--> P4 --fork--> P5 --fork--> P6 --exec--> the command
                       P4 exits at once (the executor reaps it at once, so it never
                       waits for a run); P5 is adopted by init, waits for P6, records.

Rules:
- Everything that can be computed before forking is (argv list, the exact paths exec
  will try, $HOME, the error message prefix, the fd ranges to close, the signal list);
  the children only make system calls, import nothing and never return into the
  caller's code: every child path ends in `os._exit` inside `try/finally`, so no
  atexit handler runs and no inherited stdio buffer is flushed twice.
- P5 closes every inherited descriptor >= 3 except `keep_fds` and the descriptors of
  the logger's handlers (so a run never keeps the daemon's pid-file flock or FIFOs
  alive), then calls `setsid`, so runs survive a restart of the daemon or a kill of its
  process group. P6 closes everything >= 3: the command inherits only 0, 1 and 2.
- P5 restores the default disposition of every catchable signal, empties the signal
  mask and disables Python's signal wakeup fd before forking P6, which inherits all of
  it: Python ignores SIGPIPE (and an ignored signal stays ignored across exec), so
  without this `yes | head -1` would end with "Broken pipe" on stderr.
- P6: its own session (`setsid`), stdin from /dev/null, stdout and stderr to
  `stdout.<P5 pid>.tmp` and `stderr.<P5 pid>.tmp` in the task directory, cwd $HOME
  (else /), then exec with the PATH search of `execvp` (including its fallback of
  running a file the kernel cannot execute with /bin/sh). When nothing can be executed
  it writes `saturnd: cannot execute '<argv0>': <reason>` on its stderr and exits 127,
  like a shell.
- Children use plain try/except rather than `contextlib.suppress`: nothing to allocate.
- An exit status is decoded in exactly one place, `exitcode_from_status`.
- A removed task leaves nothing behind: P5 creates, renames and unlinks through a
  descriptor of the task directory, so it never recreates a removed directory (a
  deleted one takes no new entries); the recorder opens `times-exitcodes` by path
  without creating the directory, so FileNotFoundError means "removed meanwhile"
  (store first renames the directory away): P5 then unlinks its temporaries and exits
  quietly.
- The command gets the daemon's environment (`execv` passes `environ` on); PATH and
  HOME are read when `spawn_run` is called.

Ordering of the history and the outputs. Two runs of one task can end together; the
`stdout`/`stderr` left visible must be those of the run recorded last. P5 takes
`flock(LOCK_EX)` on the *task directory's own descriptor* for the span "record, then
rename both temporaries over stdout and stderr", so these spans of two runs never
interleave: the run that records last also renames last. The recorder
(`store.append_run`) is unchanged and takes its own lock on `times-exitcodes`; the
directory lock is a second, separate lock known only to writers of runs, so it costs
readers nothing. Lock order, for anyone who ever takes both: the directory first, then
`times-exitcodes`. A reader that wants a history and an output that agree can take
`LOCK_SH` on the directory. Alternatives rejected: renaming inside store's lock would
need a callback in store's API; a lock file would add an entry to `task_<ID>/`.

Cost (200 runs of `true` from a lean process on the development VM, 2 CPUs, Linux
6.18; figures vary by about 1.5x between runs): a call to `spawn_run` takes 7.5 ms
median in the parent, which waits for two forks (its own and P4's); a bare
fork + _exit + waitpid of the same process costs 3.1 ms there, and the preparation
before forking about 15 us, so the forks are the whole cost. A burst of 200 runs is
started, finished and recorded with `store.append_run` (two fdatasyncs each) in 1.7-2.9 s.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

__all__ = [
    "EXITCODE_ABNORMAL",
    "EXITCODE_CANNOT_EXECUTE",
    "Recorder",
    "RunSpec",
    "exitcode_from_status",
    "spawn_run",
]

Recorder = Callable[[Path, int, int], None]
"""Appends one finished run (task directory, start time, exit code) to the history."""

EXITCODE_ABNORMAL: Final = 0xFFFF
"""EXITCODE of a run that did not exit normally (killed by a signal, ...)."""

EXITCODE_CANNOT_EXECUTE: Final = 127
"""Exit status of a run whose command cannot be executed, as a shell reports it."""

# Every signal whose disposition can be set: SIGKILL and SIGSTOP cannot.
_CATCHABLE_SIGNALS: Final[tuple[int, ...]] = tuple(
    sorted(int(s) for s in signal.valid_signals() if s not in {signal.SIGKILL, signal.SIGSTOP})
)

# Errors after which execvp goes on to the next PATH entry without remembering them:
# they mean "not here". Any other error (EACCES, ...) is the one reported if nothing runs.
_NOT_HERE: Final = frozenset({errno.ENOENT, errno.ENOTDIR})

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
class _Plan:
    """Everything the children need, computed in the parent before forking."""

    spec: RunSpec
    record: Recorder
    logger: logging.Logger | None
    task_dir: bytes
    argv: list[bytes]
    exec_paths: tuple[bytes, ...]
    # Set when no exec can even be attempted (a NUL byte in argv): the reason to report.
    no_exec_reason: bytes
    error_prefix: bytes
    home: bytes
    p5_close: tuple[tuple[int, int], ...]
    max_fd: int


def exitcode_from_status(status: int) -> int:
    """The EXITCODE of a `waitpid` status: 0-255 for a normal exit, else 0xFFFF."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return EXITCODE_ABNORMAL


def spawn_run(
    spec: RunSpec,
    *,
    keep_fds: Collection[int] = (),
    record: Recorder | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Start one run of `spec`; return once P4 has exited (two forks, a few ms).

    The run goes on in a grandchild (P5) that waits for the command (P6), records
    `(spec.start_time, exitcode)` with `record` (default `store.append_run`), renames
    the outputs over `stdout` and `stderr`, logs one line via `logger` and exits.
    `keep_fds` stay open in P5 (with the logger's handler descriptors); every other
    descriptor >= 3 is closed there, and the command inherits none of them.

    Raises ValueError for an empty command line, OSError when the first or second
    fork fails (no run was started then).
    """
    if not spec.argv or not spec.argv[0]:
        raise ValueError(f"task {spec.task_id}: empty command line")
    if record is None:
        # Resolved lazily in the parent (never in a child): store imports heavier things.
        from saturnd import store

        record = store.append_run
    argv = list(spec.argv)
    argv0 = argv[0]
    no_exec_reason = b""
    if any(b"\0" in arg for arg in argv):
        no_exec_reason = b"argument contains a NUL byte"
    max_fd = _fd_limit()
    plan = _Plan(
        spec=spec,
        record=record,
        logger=logger,
        task_dir=os.fsencode(spec.task_dir),
        argv=argv,
        exec_paths=() if no_exec_reason else _exec_paths(argv0),
        no_exec_reason=no_exec_reason,
        error_prefix=b"saturnd: cannot execute '" + argv0 + b"': ",
        home=os.environb.get(b"HOME") or b"/",
        p5_close=_close_ranges(set(keep_fds) | _logger_fds(logger), max_fd),
        max_fd=max_fd,
    )

    p4 = os.fork()
    if p4 == 0:
        _p4(plan)
    status = _waitpid(p4)
    if status is None:
        return  # somebody else reaped P4: it exited at once, nothing more to learn
    code = exitcode_from_status(status)
    if code == EXITCODE_ABNORMAL:
        raise OSError(f"task {spec.task_id}: cannot start a run: its first child was killed")
    if code != 0:
        # P4 exits with the errno of its failed fork (see _p4).
        raise OSError(code, f"task {spec.task_id}: cannot start a run: {os.strerror(code)}")


def _exec_paths(argv0: bytes) -> tuple[bytes, ...]:
    """The paths `execvp` tries for `argv0`, in order (PATH as the run will see it)."""
    if b"/" in argv0:
        return (argv0,)
    path = os.environb.get(b"PATH")
    # Unset PATH: the default of os.execvp; an empty entry means the current directory.
    dirs = (os.fsencode(os.defpath) if path is None else path).split(b":")
    return tuple(os.path.join(d, argv0) for d in dirs)


def _fd_limit() -> int:
    """One past the highest descriptor number the process may hold."""
    limit = os.sysconf("SC_OPEN_MAX")
    # close_range(2) makes a large bound free; without it CPython loops up to the bound.
    return limit if limit > 0 else 65536


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


def _p4(plan: _Plan) -> NoReturn:
    """P4: fork P5 and exit at once, with the fork's errno as status if it failed."""
    code = 1
    try:
        if os.fork() == 0:
            _p5(plan)
        code = 0
    except OSError as error:
        code = error.errno if error.errno and error.errno < 256 else 1
    finally:
        os._exit(code)


def _p5(plan: _Plan) -> NoReturn:
    """P5: detach, run P6, wait for it, record the run, publish its output, exit."""
    try:
        _detach(plan)
        _run_and_record(plan)
    except BaseException:
        if plan.logger is not None:
            plan.logger.exception("task %d: run failed", plan.spec.task_id)
    finally:
        os._exit(0)


def _detach(plan: _Plan) -> None:
    """Leave the daemon: its descriptors, its session, its signal handling."""
    # First, so that no signal arriving later writes into a descriptor number reused
    # after the close below.
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass  # not the main thread: no wakeup fd can be set either
    for low, high in plan.p5_close:
        os.closerange(low, high)
    os.setsid()
    for signum in _CATCHABLE_SIGNALS:
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # a signal reserved by the C library
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _run_and_record(plan: _Plan) -> None:
    """Create the output files, run P6, then record and publish under the directory lock."""
    spec = plan.spec
    logger = plan.logger
    # /dev/null first: if the daemon had closed 0, 1 or 2, the numbers it gets are
    # placeholders (P6 dup2s over them) and every descriptor below is >= 3.
    null = os.open(_DEV_NULL, os.O_RDWR | os.O_CLOEXEC)
    while null < 3:
        null = os.open(_DEV_NULL, os.O_RDWR | os.O_CLOEXEC)
    pid = os.getpid()
    out_name = b"stdout.%d.tmp" % pid
    err_name = b"stderr.%d.tmp" % pid
    dirfd = out = -1
    try:
        dirfd = os.open(plan.task_dir, _DIR_FLAGS)
        out = os.open(out_name, _OUTPUT_FLAGS, 0o600, dir_fd=dirfd)
        err = os.open(err_name, _OUTPUT_FLAGS, 0o600, dir_fd=dirfd)
    except OSError as error:
        if out >= 0:
            _unlink(dirfd, out_name)
        if logger is not None:
            if isinstance(error, FileNotFoundError | NotADirectoryError):
                # Removed before the run: a removed directory takes no new entries,
                # so there is nothing to clean up.
                logger.info("task %d: task directory gone, run not started", spec.task_id)
            else:
                logger.error("task %d: cannot create output files: %s", spec.task_id, error)
        return

    started = time.monotonic()  # for the log's duration only; the history uses the spec
    try:
        child = os.fork()
    except OSError as error:
        # Recorded as a run that did not exit normally, the reason in its stderr.
        os.write(err, b"saturnd: cannot start the command: %s\n" % _strerror(error))
        child = -1
    if child == 0:
        _p6(plan, null, out, err)
    os.close(out)
    os.close(err)
    os.close(null)
    status = _waitpid(child) if child > 0 else None
    exitcode = EXITCODE_ABNORMAL if status is None else exitcode_from_status(status)
    duration = time.monotonic() - started

    # Record and rename as one step with respect to other runs of this task: the run
    # recorded last is the one whose output stays (see the module docstring).
    fcntl.flock(dirfd, fcntl.LOCK_EX)
    published = False
    try:
        plan.record(spec.task_dir, spec.start_time, exitcode)
        os.rename(out_name, b"stdout", src_dir_fd=dirfd, dst_dir_fd=dirfd)
        os.rename(err_name, b"stderr", src_dir_fd=dirfd, dst_dir_fd=dirfd)
        published = True
    except FileNotFoundError:
        if logger is not None:
            logger.info("task %d: removed during run pid %d, not recorded", spec.task_id, child)
    except OSError as error:
        if logger is not None:
            logger.error("task %d: cannot record run pid %d: %s", spec.task_id, child, error)
    finally:
        if not published:
            _unlink(dirfd, out_name)
            _unlink(dirfd, err_name)
        os.close(dirfd)  # also releases the lock
    if published and logger is not None:
        logger.info(
            "task %d: run pid %d finished: exit code %d (%s) after %.3f s",
            spec.task_id,
            child,
            exitcode,
            _describe(status),
            duration,
        )


def _p6(plan: _Plan, null: int, out: int, err: int) -> NoReturn:
    """P6: own session, redirections, $HOME, exec; 127 and the reason if exec fails."""
    try:
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader: nothing to leave
        # dup2 clears close-on-exec on the targets; the sources are all >= 3.
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, plan.max_fd)
        try:
            os.chdir(plan.home)
        except OSError:
            os.chdir(b"/")  # as cron does when $HOME is missing
        reason = plan.no_exec_reason or _exec(plan.exec_paths, plan.argv)
        os.write(2, plan.error_prefix + reason + b"\n")
    finally:
        os._exit(EXITCODE_CANNOT_EXECUTE)


def _exec(paths: Sequence[bytes], argv: list[bytes]) -> bytes:
    """Try each path like `execvp`; return the reason of the failure that counts."""
    reported: OSError | None = None
    last: OSError | None = None
    for path in paths:
        try:
            os.execv(path, argv)
        except OSError as error:
            failure = error  # always bound below: a successful execv does not return
        if failure.errno == errno.ENOEXEC:
            # A file the kernel cannot execute (a script without "#!"): execvp hands it
            # to the shell, and so do we.
            try:
                os.execv(_SH, [_SH, path, *argv[1:]])
            except OSError as error:
                failure = error
        last = failure
        if reported is None and failure.errno not in _NOT_HERE:
            reported = failure
    return _strerror(reported or last or FileNotFoundError(errno.ENOENT, "no path"))


def _strerror(error: OSError) -> bytes:
    """The C library's message for an error, as bytes for a descriptor."""
    return os.strerror(error.errno or errno.EIO).encode()


def _unlink(dirfd: int, name: bytes) -> None:
    """Remove `name` from the directory, if it is still there."""
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        pass


def _describe(status: int | None) -> str:
    """A few words on how a run ended, for the log."""
    if status is None:
        return "not started"
    if os.WIFEXITED(status):
        return "exited"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    return "ended abnormally"
