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
- P6: its own session (`setsid`), stdin from /dev/null, stdout and stderr to two
  pipes, cwd $HOME (else /), then exec with the PATH search of `execvp` (including its
  fallback of running a file the kernel cannot execute with /bin/sh). When nothing can
  be executed it writes `saturnd: cannot execute '<argv0>': <reason>` on its stderr and
  exits 127, like a shell.
- P5 relays the two pipes into `stdout.<P5 pid>.tmp` and `stderr.<P5 pid>.tmp` in the
  task directory, keeping at most `max_output` bytes of each (1 MiB by default, `saturnd
  --max-output`) and discarding the rest, so a task that floods its output costs a
  bounded amount of disk; past the cap the kernel moves the bytes to /dev/null
  (`splice`), so a flood costs little CPU either. It records the run as soon as P6
  itself ends (SIGCHLD on a self-pipe wakes its poll loop; where no wakeup fd can be
  set, it looks five times a second), after reading what is already buffered in the
  pipes; a background child that still holds them open then changes nothing that was
  published, and is not killed by SIGPIPE: P5 stays, reading and discarding, until the
  last writer closes. P6 inherits P5's SIGCHLD handler and wakeup fd only until exec,
  which resets a caught signal to its default (and P6 closes the fd before).
- A stream that cannot be stored (disk full, file size limit) is cut where the error
  happened and the run is still recorded. P5 keeps SIGXFSZ ignored for itself (as Python
  has it) so a file size limit gives it an error, not death; P6 restores the default.
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
import select
import signal
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

__all__ = [
    "DEFAULT_MAX_OUTPUT",
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
    max_output: int


@dataclass(slots=True)
class _Stream:
    """One of P6's output pipes as P5 relays it into its temporary file."""

    pipe: int
    file: int
    room: int  # bytes the file may still take
    cut: bool = False  # bytes were discarded (past the cap, or the file failed)
    error: OSError | None = None


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
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> None:
    """Start one run of `spec`; return once P4 has exited (two forks, a few ms).

    The run goes on in a grandchild (P5) that relays the command's (P6's) output,
    keeping at most `max_output` bytes of each stream, records `(spec.start_time,
    exitcode)` with `record` (default `store.append_run`) when the command ends, renames
    the outputs over `stdout` and `stderr`, logs one line via `logger` and exits once
    nothing holds the command's output open any more.
    `keep_fds` stay open in P5 (with the logger's handler descriptors); every other
    descriptor >= 3 is closed there, and the command inherits none of them.

    Raises ValueError for an empty command line, OSError when the first or second
    fork fails (no run was started then).
    """
    if not spec.argv or not spec.argv[0]:
        raise ValueError(f"task {spec.task_id}: empty command line")
    if max_output < 0:
        raise ValueError(f"max_output must not be negative, not {max_output}")
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
        max_output=max_output,
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
    # P5 writes files: past a file size limit it must get EFBIG, not die (P6 restores it).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _run_and_record(plan: _Plan) -> None:
    """Create the output files, run P6 and relay its output, then record and publish
    under the directory lock, then wait for the last holder of the output pipes."""
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
    streams: list[_Stream] = []
    write_ends: list[int] = []
    child = -1
    waker = _sigchld_waker()  # before the fork: P6 may end at once
    try:
        for file in (out, err):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            streams.append(_Stream(read_end, file, plan.max_output))
            write_ends.append(write_end)
        child = os.fork()
    except OSError as error:
        # Recorded as a run that did not exit normally, the reason in its stderr.
        os.write(err, b"saturnd: cannot start the command: %s\n" % _strerror(error))
    if child == 0:
        _p6(plan, null, write_ends[0], write_ends[1])
    # Only P6 (and what it starts) may hold the write ends: their EOF means "all gone".
    for write_end in write_ends:
        os.close(write_end)
    status = _relay(child, streams, null, waker) if child > 0 else None
    os.close(out)
    os.close(err)
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
            "task %d: run pid %d finished: exit code %d (%s) after %.3f s%s",
            spec.task_id,
            child,
            exitcode,
            _describe(status),
            duration,
            _describe_cuts(streams, plan.max_output),
        )
    # What is left holds the pipes: a background child of the command. Wait for it.
    _discard_until_eof(streams, null)
    os.close(null)


# --- P5's relay of the command's output ------------------------------------------------


def _on_signal(signum: int, frame: object) -> None:
    """SIGCHLD in P5: nothing to do here; the wakeup fd has woken the poll loop."""


def _sigchld_waker() -> int:
    """A descriptor that becomes readable when P6 ends (SIGCHLD on a self-pipe); -1 if
    none can be set up, and then the relay polls P6 a few times a second."""
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


def _relay(child: int, streams: list[_Stream], null: int, waker: int) -> int | None:
    """Copy P6's output into the files until P6 ends; its wait status.

    Once P6 has ended, what it wrote is in the pipes: that much is still read (at most
    a pipe's capacity each), so a background child writing on cannot hold the run back.
    """
    poller = select.poll()
    by_pipe = {stream.pipe: stream for stream in streams}
    for pipe in by_pipe:
        poller.register(pipe, _POLL_IN)
    if waker >= 0:
        poller.register(waker, select.POLLIN)
    timeout = None if waker >= 0 else 200
    status = _reaped(child)
    while status is None:
        events = poller.poll(timeout)
        woken = not events
        for fd, _ in events:
            if fd == waker:
                woken = True
                _empty(waker)
            elif not _pump(by_pipe[fd], null, _CHUNK):
                poller.unregister(fd)
                del by_pipe[fd]
        if woken:
            status = _reaped(child)
    for stream in streams:
        if stream.pipe < 0:
            continue
        os.set_blocking(stream.pipe, False)
        budget = _pipe_capacity(stream.pipe)
        try:
            while budget > 0:
                moved = _pump(stream, null, min(budget, _CHUNK))
                if not moved:
                    break
                budget -= moved
        except BlockingIOError:
            pass  # empty: P6's output is all in
    return status


def _reaped(child: int) -> int | None:
    """P6's wait status if it has ended (it is reaped then), else None."""
    try:
        pid, status = os.waitpid(child, os.WNOHANG)
    except ChildProcessError:
        return 0  # reaped elsewhere: cannot happen in P5, but never wait forever
    return status if pid else None


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


def _discard_until_eof(streams: list[_Stream], null: int) -> None:
    """After the run is recorded: read and drop until nothing holds the pipes open."""
    poller = select.poll()
    by_pipe = {}
    for stream in streams:
        if stream.pipe >= 0:
            stream.room = 0  # nothing more is stored
            by_pipe[stream.pipe] = stream
            poller.register(stream.pipe, _POLL_IN)
    while by_pipe:
        for fd, _ in poller.poll():
            try:
                if not _pump(by_pipe[fd], null, _DISCARD):
                    poller.unregister(fd)
                    del by_pipe[fd]
            except BlockingIOError:
                continue


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


def _p6(plan: _Plan, null: int, out: int, err: int) -> NoReturn:
    """P6: own session, redirections (`out`, `err`: the pipes P5 relays), $HOME, exec;
    127 and the reason if exec fails."""
    try:
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader: nothing to leave
        # P5 ignores SIGXFSZ for itself; the command gets the default, as in a shell.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
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
