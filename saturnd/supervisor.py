"""The supervisor: the daemon's parent process, which starts, watches and restarts the
listener and the executor, and shuts the daemon down.

Invariants:
- If either part dies unexpectedly, it is logged and started again, so a crash of one
  part never leaves a daemon that answers but never runs tasks, or the reverse. A part
  that dies within STABLE_AFTER of its start is crash-looping and waits a growing pause
  before the next start (like supervisord's startsecs); one that lived longer was
  killed or hit a bug once, and starts again at once. A part that cannot start for a
  known reason (its `cmds` unreadable, its FIFOs impossible to create) says why in one
  log line, not a traceback.
- Parts are forked with the stop signals blocked until they have their own handlers
  (proc.fork_for_part), so a stop never waits out STOP_GRACE for a part that missed it.
  They ask the kernel for SIGTERM when the supervisor dies, and keep the inherited lock
  descriptors (pid file, pipes lock) until they exit: a killed supervisor never lets a
  new daemon start beside a part still running. Runs never hold them (spawn's P5
  closes every inherited descriptor, and both are close-on-exec).
- TERMINATE: the listener replies OK and exits with EXIT_TERMINATED. Shutdown order:
  stop the parts (SIGTERM, SIGKILL after STOP_GRACE), remove the pid file and release
  its lock, and release the pipes lock last: `cassini -q` waits for that lock to be
  free, so `cassini -q && saturnd` always finds both free. Runs already started finish
  on their own and are still recorded (they are not our children).
- The executor's first start (and only it) is told so, and runs the @reboot tasks: a
  restart of a dead executor does not run them again.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saturnd import proc, proctitle
from saturnd.clock import Clock
from saturnd.listener import EXIT_TERMINATED, Listener
from saturnd.spawn import DEFAULT_KEEP_OUTPUTS, DEFAULT_MAX_OUTPUT
from saturnd.startup import (
    PIPES_HINT,
    DaemonError,
    Paths,
    log_fds,
    secure_dir,
    write_pid,
    write_pipes_owner,
)
from saturnd.store import Store, StoreError

RESTART_PAUSES: Final = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)
"""Pause before restarting a part that died, growing while it keeps dying quickly."""
STABLE_AFTER: Final = 1.0
"""A part that lived this long was not crash-looping: its next start is immediate."""
STOP_GRACE: Final = 5.0
"""Seconds a part has to exit after SIGTERM before it is killed."""
_STOP_POLL: Final = 0.002


class PartCannotStart(Exception):
    """A part (listener, executor) cannot start, for a reason worth one log line."""


@dataclass
class Part:
    """One supervised child process."""

    name: str
    body: Callable[[], int]
    pid: int = 0
    started: float = 0.0
    failures: int = 0
    starts: int = 0  # how many times it was started (a child sees its own as earlier)


@dataclass(frozen=True)
class Locks:
    """The descriptors that make this daemon the only one of its directories."""

    pid_fd: int
    pipes_fd: int


class Supervisor:
    """Starts the listener and the executor and keeps them alive until stopped."""

    def __init__(
        self,
        paths: Paths,
        clock: Clock,
        logger: logging.Logger,
        locks: Locks,
        max_output: int | None = None,
        pipes_base: Path | None = None,
        keep_outputs: int = DEFAULT_KEEP_OUTPUTS,
    ) -> None:
        """`pipes_base`: the first directory of ours above the pipes directory (see
        `startup.secure_dir`), checked again if the pipes directory must be created again."""
        self.paths = paths
        self.pipes_base = pipes_base
        self.clock = clock
        self.log = logger
        self.locks = locks
        self.max_output = max_output
        self.keep_outputs = keep_outputs
        self.stop = proc.StopFlag()
        self.pid = os.getpid()  # after detaching: the parts' parent
        self.parts = {
            "listener": Part("listener", self._listener_body),
            "executor": Part("executor", self._executor_body),
        }

    # The bodies run in the forked children.

    def _child_setup(self) -> tuple[proc.StopFlag, int]:
        proc.die_with_parent()
        if os.getppid() != self.pid:
            os._exit(0)  # the supervisor died before we asked for its death signal
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stop = proc.StopFlag()
        return stop, proc.install_stop_handlers(stop)

    def _listener_body(self) -> int:
        stop, wake_fd = self._child_setup()
        # A fresh load (with repair): an earlier listener may have died mid-write.
        try:
            store = Store.open(self.paths.state_dir, self.log)
        except StoreError as error:
            raise PartCannotStart(str(error)) from error
        from saturnd.runcontrol import ServedStore

        served = ServedStore(
            store,
            self.clock,
            self.log,
            keep_fds=log_fds(self.log),
            max_output=DEFAULT_MAX_OUTPUT if self.max_output is None else self.max_output,
        )
        listener = Listener(
            self.paths.pipes_dir, served, self.log, stop, wake_fd, self._prepare_pipes_dir
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
            secure_dir(self.paths.pipes_dir, self.pipes_base, notes, PIPES_HINT)
        except DaemonError as error:
            raise OSError(errno.EPERM, str(error)) from error
        for note in notes:
            self.log.warning("%s", note)

    def _executor_body(self) -> int:
        stop, wake_fd = self._child_setup()
        from saturnd.executor import Executor

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
            keep_outputs=self.keep_outputs,
            # Forked before the parent counted this start: 0 means the daemon's first.
            first_start=self.parts["executor"].starts == 0,
        )
        return executor.run()

    def _start(self, part: Part) -> None:
        pid = proc.fork_for_part()
        if pid == 0:
            status = 1
            try:
                proctitle.set_role(part.name)
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
        part.starts += 1
        part.started = time.monotonic()
        self.log.info("%s started (pid %d)", part.name, pid)

    def run(self) -> int:
        """Supervise until TERMINATE or a stop signal; returns the exit status."""
        write_pid(self.locks.pid_fd)
        proctitle.set_role(proctitle.SUPERVISOR)
        write_pipes_owner(self.locks.pipes_fd, self.paths.state_dir)
        wake_fd = proc.install_stop_handlers(self.stop)
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
                proc.wait_readable(wake_fd, self._next_restart_delay())
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
                    proc.decode_status(status).text,
                    f" in {pause:g} s" if pause else "",
                )
        for part in self.parts.values():
            if part.pid == 0 and not self.stop.stopping:
                pause = RESTART_PAUSES[min(part.failures, len(RESTART_PAUSES) - 1)]
                if time.monotonic() - part.started >= pause:
                    self._start(part)
        return False

    def _shutdown(self) -> None:
        """Stop the parts, remove the pid file and release its lock, then the pipes
        lock, last (see the module docstring)."""
        for part in self.parts.values():
            if part.pid:
                try:
                    os.kill(part.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE
        for part in self.parts.values():
            while part.pid and time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(part.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                time.sleep(_STOP_POLL)
            else:
                if part.pid:
                    self.log.warning(
                        "%s (pid %d) did not stop within %g s; killing it",
                        part.name,
                        part.pid,
                        STOP_GRACE,
                    )
                    try:
                        os.kill(part.pid, signal.SIGKILL)
                        os.waitpid(part.pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
            part.pid = 0
        self.log.info("saturnd stopped")
        try:
            os.unlink(self.paths.pid_file)
        except OSError:
            pass
        os.close(self.locks.pid_fd)
        os.close(self.locks.pipes_fd)


__all__ = ["Locks", "Part", "PartCannotStart", "STOP_GRACE", "Supervisor"]
