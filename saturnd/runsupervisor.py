"""P5's work: the supervising loop of one batch of runs, from the creation of each
run's files to its record.

This module owns what P5 does once detached (spawn.py forks and detaches it): start
each command (launch.py), relay its output, reap it, record the run and publish its
output. Everything P5 needs comes in one `Batch`, gathered before the forks.

Rules:
- Output: each run's two pipes go into `stdout|stderr.<P5 pid>.<n>.tmp` in its task
  directory (n: the run's number in the batch), at most `max_output` bytes each (1 MiB,
  `saturnd --max-output`); past that the kernel splices the rest to /dev/null. A run is
  recorded as soon as its command ends (SIGCHLD on a self-pipe, else a look five times a
  second), after what the pipes already hold; a background child still holding them
  changes nothing published and gets no SIGPIPE: P5 reads and discards until it closes.
- Descriptors: five per running command. P5 raises its soft RLIMIT_NOFILE to the hard
  limit but spawns under the daemon's; runs beyond the budget wait (one log line).
- A stream that cannot be stored is cut where the error happened, and the run is still
  recorded (P5 ignores SIGXFSZ; the command gets the default). A run the disk refuses
  to record (ENOSPC, EDQUOT, EFBIG, EIO) is kept pending and retried (pendingruns.py).
- An exit status is decoded in exactly one place, `proc.decode_status`.
- A removed task leaves nothing behind: P5 works through a descriptor of the task
  directory (a deleted one takes no new entries), and the recorder's FileNotFoundError
  means "removed meanwhile": P5 then unlinks the run's temporaries.
- What a command sees is taskenv.py's: cron's environment plus the task's variables,
  umask 022 around each spawn, its HOME as working directory (`/` when it cannot be),
  its input (`extras.stdin`, else /dev/null).
- A run's record: `times-exitcodes`, then `history` and kept outputs (runends.py); its
  outcome and end are runpolicy.py's. Then its output is mailed as cron does (mail.py;
  unless MAILTO is empty or there is no sendmail, which P5 does not wait for).
- Policies (man saturnd): a timeout is SIGTERM to the command's process group, SIGKILL
  a grace later (timers in the poll loop); a jittered spec waits alone, marked as in
  progress (jitterwait.py); a failed run starts its on-failure command.
- Stopping: each command has a marker P5 holds locked (liveruns.py); a stop request
  comes with SIGUSR1 (its handler, set before any marker exists, sets a flag).

Ordering of the history and the outputs: of two runs of one task ending together, the
`stdout`/`stderr` left visible are those of the run recorded last. P5 holds
`flock(LOCK_EX)` on the task directory's own descriptor (`taskdir.lock_runs`) from the
record to the renames of both temporaries, so these spans never interleave. It is a
lock of writers only, apart from the recorder's own on `times-exitcodes` (taskdir.py
gives the order); renaming inside the recorder's lock would need a callback in its API,
and a lock file an entry in `task_<ID>/`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import select
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from saturnd import history, liveruns, mail, runends, taskdir
from saturnd.jitterwait import Waiting, WaitingRuns
from saturnd.launch import Launcher, input_fd, strerror
from saturnd.p5setup import (
    STOP_ASKED,
    empty,
    on_stop,
    open_null,
    raise_fd_limit,
    sigchld_waker,
)
from saturnd.pendingruns import RETRIABLE, PendingRuns, Recorder
from saturnd.proc import decode_status
from saturnd.relay import CHUNK, Stream, describe_cuts, pipe_capacity, pump, store, stored
from saturnd.runpolicy import STOP_GRACE, failed, jittered, record_of, timeout_grace
from saturnd.runrecord import (
    EXITED,
    KILLED,
    OUTCOME_NAMES,
    TIMED_OUT,
)
from saturnd.task import NO_EXTRAS, Extras
from saturnd.taskenv import Identity, environment

__all__ = ["Batch", "Recorder", "RunSpec", "Supervisor"]


# What P5 reads from a pipe at once, and moves to /dev/null at once past the cap.
_POLL_IN: Final = select.POLLIN | select.POLLHUP | select.POLLERR

# A run's descriptors (directory, 2 files, 2 pipes, marker; 2 write ends, input at start).
_FDS_PER_RUN: Final = 9
# Descriptors kept free for everything else P5 opens (the recorder's, the logger's).
_FD_RESERVE: Final = 32

# Read back for the mail of the run's output.
_OUTPUT_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class RunSpec:
    """What to run: the task, its directory, its command line, its start time and
    what else it says (environment, input, MAILTO).

    `start_time` (epoch seconds) is what the history records; it comes from the
    daemon's clock, which may be a fake clock in tests.
    """

    task_id: int
    task_dir: Path
    argv: tuple[bytes, ...]
    start_time: int
    extras: Extras = NO_EXTRAS
    flags: int = 0
    """runrecord flags the run's record carries (BY_HAND, CAUGHT_UP)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything P5 needs, gathered in the executor before forking (nothing per run)."""

    specs: Iterable[RunSpec]
    record: Recorder
    logger: logging.Logger | None
    identity: Identity  # the user the tasks run as (taskenv.py)
    host: bytes  # for the mail's subject
    sendmails: tuple[bytes, ...]  # where sendmail is looked for first
    mail_path: bool  # then in the task's PATH
    keep: tuple[int, ...]
    p5_close: tuple[tuple[int, int], ...]
    max_output: int
    role: str  # P5's process title (proctitle.py)
    keep_outputs: int = history.DEFAULT_KEEP_OUTPUTS  # runs whose outputs stay (history.py)


@dataclass(slots=True)
class _Run:
    """One run in P5: its files, its pipes, its command."""

    spec: RunSpec
    dirfd: int
    out_name: bytes
    err_name: bytes
    streams: list[Stream] = field(default_factory=list)
    pid: int = -1
    status: int | None = None  # the command's wait status, None if it never ran
    started: float = 0.0  # monotonic, for the log's duration only
    failure: str = ""  # why the command could not start, for the log ("" if it did)
    env: dict[bytes, bytes] = field(default_factory=dict)  # the command's environment
    number: int = 0  # in P5's batch
    start: int = 0  # the real start the history records (epoch seconds, daemon's clock)
    marker: liveruns.Marker | None = None
    stopped: int = EXITED  # TIMED_OUT or KILLED once P5 began stopping the command
    term_at: float = math.inf  # monotonic: SIGTERM then (its timeout)
    kill_at: float = math.inf  # monotonic: SIGKILL then (the grace after SIGTERM)


class Supervisor:
    """P5's work: start the batch's commands, relay their output, record each run."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.log = batch.logger
        self.pid = os.getpid()
        self.null = open_null()
        # Before any run's marker exists: a stop request's SIGUSR1 must not end P5.
        with contextlib.suppress(ValueError):  # not the main thread: tests only
            signal.signal(signal.SIGUSR1, on_stop)
        self.waker = sigchld_waker()  # before the first spawn: a command may end at once
        self.poller = select.poll()
        if self.waker >= 0:
            self.poller.register(self.waker, select.POLLIN)
        self.running: dict[int, _Run] = {}  # by the command's pid
        self.pipes: dict[int, tuple[_Run, Stream]] = {}  # every pipe still open
        self.unstarted: list[_Run] = []  # no command (cannot execute...): to record
        daemon_limit, budget = raise_fd_limit()
        self.launcher = Launcher(self.null, daemon_limit)
        # Shared by every run without variables of its own: most of a big batch.
        self.plain_env = environment(batch.identity)
        self.cwd = b""  # where P5 last changed directory to
        self.mailer = mail.Mailer(
            batch.sendmails, batch.mail_path, batch.identity.user, batch.host, self.log
        )

        self.budget = budget - _FD_RESERVE
        self.held = 0  # descriptors the runs hold
        self.started = 0  # runs numbered so far
        self.pending = PendingRuns(self.pid, batch.record, self.log)
        self.began = time.monotonic()
        self.delayed = WaitingRuns(self.pid, self.log)  # runs waiting for their jitter

    def run(self) -> None:
        """Start every run (as descriptors allow, each after its jitter), then relay,
        stop (timeouts, KILL) and record until the last command has ended and nothing
        holds any output pipe."""
        specs = iter(self.batch.specs)
        more = True
        waited = False
        began = self.began
        while True:
            while more and (self._room_for_a_run() or not (self.running or self.pipes)):
                spec = next(specs, None)
                if spec is None:
                    more = False
                    self._log_starts(began)
                elif jittered(spec.extras.jitter, spec.flags):
                    # Delayed alone: the batch's other runs start on time.
                    self.started += 1
                    due = began + random.uniform(0, spec.extras.jitter)
                    self.delayed.add(Waiting(due, self.started, spec))
                else:
                    self._start(spec)
            now = time.monotonic()
            while self.delayed and self.delayed.queue[0].due <= now:
                if not self._room_for_a_run() and (self.running or self.pipes):
                    break
                waiting = self.delayed.pop()
                self._start(waiting.spec, waiting)
            if more and not waited and self.log is not None:
                waited = True
                self.log.warning(
                    "%d runs started; the others wait for earlier ones to end (open file limit %d)",
                    self.started,
                    self.budget + _FD_RESERVE,
                )
            while self.unstarted:
                self._finish(self.unstarted.pop())
            if not more and not self.running and not self.pipes and not self.delayed:
                self.pending.linger()
                return
            timeout = self._timers(time.monotonic())
            if self.running and self.waker < 0:
                timeout = 200 if timeout is None else min(timeout, 200)
            if self.pending:
                wait = self.pending.wait_ms()
                timeout = wait if timeout is None else min(timeout, wait)
            events = self.poller.poll(timeout)
            woken = not events
            for fd, _ in events:
                if fd == self.waker:
                    woken = True
                    empty(fd)
                elif fd in self.pipes:
                    self._relay(fd, CHUNK)
            if STOP_ASKED:
                STOP_ASKED.clear()
                self._stop_requested()
            if woken:
                self._reap()
            if self.pending.due():
                self.pending.retry()

    def _timers(self, now: float) -> int | None:
        """Send what is due (SIGTERM at a timeout, SIGKILL after the grace); the ms to
        the next timer or jittered start, None if there is none."""
        due = self.delayed.next_due()
        soonest = math.inf if due is None else due
        for run in self.running.values():
            if run.term_at <= now:
                self._stop(run, TIMED_OUT, now, timeout_grace(run.spec.extras.timeout))
            if run.kill_at <= now:
                run.kill_at = math.inf
                liveruns.stop_group(run.pid, signal.SIGKILL)
            soonest = min(soonest, run.term_at, run.kill_at)
        if soonest == math.inf:
            return None
        return max(0, math.ceil((soonest - now) * 1000))

    def _stop(self, run: _Run, outcome: int, now: float, grace: float) -> None:
        """SIGTERM the command's process group now, SIGKILL after `grace` seconds."""
        run.term_at = math.inf
        if run.stopped != EXITED:
            return  # already being stopped: the first reason stays
        run.stopped = outcome
        run.kill_at = now + grace
        liveruns.stop_group(run.pid, signal.SIGTERM)
        if self.log is not None:
            self.log.info(
                "task %d: stopping run pid %d (%s)",
                run.spec.task_id,
                run.pid,
                OUTCOME_NAMES[outcome],
            )

    def _stop_requested(self) -> None:
        """SIGUSR1: stop each run that has a stop request (taskdir.request_stop)."""
        now = time.monotonic()
        for run in list(self.running.values()):
            name = liveruns.stop_name(self.pid, run.number)
            try:
                os.unlink(name, dir_fd=run.dirfd)
            except OSError:
                continue  # no request for this run
            self._stop(run, KILLED, now, STOP_GRACE)
        self.delayed.cancel_requested(int(now - self.began))

    def _room_for_a_run(self) -> bool:
        # When nothing is left to wait for, a run is started anyway: if descriptors
        # run out, that run is recorded as not started instead of waiting forever.
        return self.held + self.delayed.held + _FDS_PER_RUN <= self.budget

    def _log_starts(self, began: float) -> None:
        if self.log is not None and self.started > 1:
            self.log.info("%d runs started in %.3f s", self.started, time.monotonic() - began)

    # --- starting ------------------------------------------------------------------

    def _start(self, spec: RunSpec, waiting: Waiting | None = None) -> None:
        """Create the run's files and pipes and spawn its command (`waiting`: after its
        jitter, with the number and marker it has had meanwhile)."""
        if waiting is None:
            self.started += 1
        number = self.started if waiting is None else waiting.number
        logger = self.log
        argv = spec.argv
        if not argv or not argv[0]:
            if logger is not None:
                logger.error("task %d: empty command line, not run", spec.task_id)
            if waiting is not None:
                self.delayed.drop(waiting)
            return
        # Real start: a jittered run starts late; the record says when.
        start = spec.start_time
        if jittered(spec.extras.jitter, spec.flags):
            start += int(time.monotonic() - self.began)
        runends.reap_abandoned(spec.task_id, spec.task_dir, start, self.batch.record, logger)
        out_name, err_name = taskdir.temporary_names(self.pid, number)
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
            if waiting is not None:
                self.delayed.drop(waiting)
            return
        self.held += 3
        extras = spec.extras
        env = (
            environment(self.batch.identity, extras.env, extras.mailto)
            if extras.env or extras.mailto is not None
            else self.plain_env
        )
        run = _Run(
            spec,
            dirfd,
            out_name,
            err_name,
            started=time.monotonic(),
            env=env,
            number=number,
            start=start,
        )
        write_ends: list[int] = []
        stdin = -1
        message = b""
        try:
            for file in (out, err):
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                run.streams.append(Stream(read_end, file, self.batch.max_output))
                write_ends.append(write_end)
                self.held += 1
            if extras.stdin:
                stdin = input_fd(extras.stdin)
        except OSError as error:
            run.failure = strerror(error).decode()
            message = b"saturnd: cannot start the command: %s\n" % strerror(error)
        else:
            self._enter(env[b"HOME"])
            run.pid, run.status, message, run.failure = self.launcher.spawn(
                argv, write_ends[0], write_ends[1], env, stdin
            )
        # Only the command (and what it starts) may hold the write ends: their end of
        # file means "all gone".
        for write_end in write_ends:
            os.close(write_end)
        if stdin >= 0:
            os.close(stdin)
        if run.pid > 0:
            self.running[run.pid] = run
            if extras.timeout > 0:
                run.term_at = run.started + extras.timeout
            try:
                if waiting is not None and waiting.marker is not None:
                    run.marker = waiting.marker  # held since the run was queued
                    self.held += 1
                    run.marker = liveruns.rename_marker(dirfd, waiting.marker, start, run.pid)
                else:
                    run.marker = liveruns.create_marker(
                        dirfd, self.pid, run.number, start, run.pid, spec.flags
                    )
                    self.held += 1
            except OSError as error:
                if logger is not None:  # the run goes on, unseen by KILL and status
                    logger.error(
                        "task %d: cannot mark run pid %d: %s", spec.task_id, run.pid, error
                    )
            for stream in run.streams:
                self.pipes[stream.pipe] = (run, stream)
                self.poller.register(stream.pipe, _POLL_IN)
            return
        for stream in run.streams:
            os.close(stream.pipe)  # nobody ever wrote into it
            stream.pipe = -1
            self.held -= 1
        if len(run.streams) < 2:
            run.streams = [Stream(-1, out, 0), Stream(-1, err, self.batch.max_output)]
        store(run.streams[1], message)
        if waiting is not None and waiting.marker is not None:
            run.marker = waiting.marker  # dropped once the run is recorded
            self.held += 1
        self.unstarted.append(run)

    def _enter(self, home: bytes) -> None:
        """Make `home` the working directory the next command inherits (`/` if it
        cannot be: cron goes on when its chdir fails)."""
        if home == self.cwd:
            return
        self.cwd = home
        try:
            os.chdir(home)
        except (OSError, ValueError):  # ValueError: a NUL byte
            os.chdir(b"/")

    def _relay(self, fd: int, limit: int) -> int:
        """Move up to `limit` bytes from pipe `fd`; forget the pipe at its end of file.
        Returns the bytes moved; 0 at end of file or when the pipe is empty."""
        stream = self.pipes[fd][1]
        try:
            moved = pump(stream, self.null, limit)
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
            budget = pipe_capacity(fd)
            while budget > 0:
                moved = self._relay(fd, min(budget, CHUNK))
                if not moved:
                    break
                budget -= moved

    def _finish(self, run: _Run) -> None:
        """Record the run, publish its output, log it; its pipes, if something still
        holds them, are read and discarded from now on."""
        spec = run.spec
        logger = self.log
        output = b""
        if self.mailer.wants(run.spec.extras.mailto, run.env):
            output = stored(run.streams, self.batch.max_output)
        for stream in run.streams:
            os.close(stream.file)
            stream.room = 0  # nothing more is stored
        ended = decode_status(run.status)
        exitcode = ended.exitcode
        duration = time.monotonic() - run.started
        dirfd = run.dirfd
        streams = run.streams
        cuts = (len(streams) > 0 and streams[0].cut, len(streams) > 1 and streams[1].cut)
        entry = record_of(
            run.start, run.pid, run.status, run.stopped, spec.flags, cuts, exitcode, duration
        )
        # Record and rename as one step with respect to other runs of this task: the run
        # recorded last is the one whose output stays (see the module docstring).
        recorded = published = kept = False
        try:
            taskdir.lock_runs(dirfd)
            self.pending.record_before(spec.task_id, spec.task_dir, dirfd)  # earlier runs first
            self.batch.record(spec.task_dir, run.start, exitcode)
            recorded = True
            runends.record_more(
                run.dirfd,
                entry,
                (run.out_name, run.err_name),
                (self.pid, run.number, self.batch.keep_outputs),
                spec.task_id,
                logger,
            )
            taskdir.publish(dirfd, run.out_name, run.err_name)
            published = True
        except FileNotFoundError:
            if logger is not None:
                logger.info(
                    "task %d: removed during run pid %d, not recorded", spec.task_id, run.pid
                )
        except Exception as error:  # one run's failure must not end the others' watch
            if recorded:
                if logger is not None:
                    logger.error(
                        "task %d: run pid %d recorded, its output lost: %s",
                        spec.task_id,
                        run.pid,
                        error,
                    )
            elif isinstance(error, OSError) and error.errno in RETRIABLE:
                pending = taskdir.PendingRun(
                    run.start,
                    self.pid,
                    taskdir.run_number(run.out_name),
                    exitcode,
                    whole=all(stream.error is None for stream in run.streams),
                )
                names = (run.out_name, run.err_name)
                kept = self.pending.keep(
                    spec.task_id, spec.task_dir, dirfd, names, pending, run.pid, error
                )
            elif logger is not None:
                # All the history would have held, so a lost record is accounted for.
                logger.error(
                    "task %d: run LOST, not recorded (start %d, exit code %d, pid %d): %s",
                    spec.task_id,
                    run.start,
                    exitcode,
                    run.pid,
                    error,
                )
        finally:
            if not published and not kept:
                _unlink(dirfd, run.out_name)
                _unlink(dirfd, run.err_name)
            if run.marker is not None:
                liveruns.drop_marker(dirfd, run.marker)  # after the record: never abandoned
                self.held -= 1
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
                describe_cuts(run.streams, self.batch.max_output),
            )
        if output:
            self.mailer.send(spec.task_id, spec.argv, spec.extras.mailto, run.env, output)
        if spec.extras.on_failure and failed(entry):
            keeping = (self.pid, run.number, self.batch.keep_outputs)
            runends.on_failure(
                spec.task_id, spec.task_dir, spec.extras, run.env, entry, keeping, self.null, logger
            )


def _unlink(dirfd: int, name: bytes) -> None:
    """Remove `name` from the directory, if it is still there."""
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        pass
