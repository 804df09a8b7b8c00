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
- P5 (`_detach`) sets every catchable signal to its default, keeps SIGXFSZ ignored and
  keeps the daemon's umask (077; each command is spawned under 022). What else a
  command sees is taskenv.py's, from the user's identity (login name from the password
  database, HOME from the daemon's $HOME, else the password database's), looked up for
  each batch.
- Children use plain try/except rather than `contextlib.suppress`: nothing to allocate.
- P5's own work, once detached, is runsupervisor.py's; starting one command (P6) is
  launch.py's.

Cost (bench/bench_punctuality.py, 1,000 runs due in one minute, 2 CPUs): with a fork of
P4 and of P5 per run from the executor's image, and a fork of P6 from each P5, the
last of the 1,000 started 5-7 x later than a bare `posix_spawn` loop took for all; the
forks were the whole cost (py-spy). With one batch per minute the starts are that loop
plus the creation of each run's files and pipes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
from collections.abc import Collection, Iterable, Sequence
from typing import Final, NoReturn

from saturnd import mail, proctitle, taskdir
from saturnd.history import DEFAULT_KEEP_OUTPUTS
from saturnd.launch import CATCHABLE_SIGNALS
from saturnd.proc import EXITCODE_ABNORMAL, decode_status
from saturnd.runsupervisor import Batch, Recorder, RunSpec, Supervisor
from saturnd.taskenv import Identity

__all__ = [
    "DEFAULT_KEEP_OUTPUTS",
    "DEFAULT_MAX_OUTPUT",
    "EXITCODE_ABNORMAL",
    "Recorder",
    "RunSpec",
    "spawn_run",
    "spawn_runs",
]

DEFAULT_MAX_OUTPUT: Final = 1 << 20
"""Bytes of each of stdout and stderr a run's stored output keeps (`saturnd --max-output`)."""


def spawn_run(
    spec: RunSpec,
    *,
    keep_fds: Collection[int] = (),
    record: Recorder | None = None,
    logger: logging.Logger | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
    keep_outputs: int = DEFAULT_KEEP_OUTPUTS,
    sendmails: Sequence[bytes] | None = None,
) -> None:
    """Start one run of `spec` (a batch of one, see `spawn_runs`).

    Raises ValueError for an empty command line, OSError when a fork fails.
    """
    if not spec.argv or not spec.argv[0]:
        raise ValueError(f"task {spec.task_id}: empty command line")
    spawn_runs(
        (spec,),
        keep_fds=keep_fds,
        record=record,
        logger=logger,
        max_output=max_output,
        keep_outputs=keep_outputs,
        sendmails=sendmails,
    )


def spawn_runs(
    specs: Iterable[RunSpec],
    *,
    keep_fds: Collection[int] = (),
    record: Recorder | None = None,
    logger: logging.Logger | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
    keep_outputs: int = DEFAULT_KEEP_OUTPUTS,
    role: str = "runs",
    sendmails: Sequence[bytes] | None = None,
) -> None:
    """Start the runs of `specs`; return once P4 has exited (two forks, a few ms).

    `specs` is iterated in P5 only (a generator that looks up the command lines is
    fine, and costs the caller nothing). The runs go on in P5, which starts every
    command, relays its output keeping at most `max_output` bytes of each stream,
    records `(spec.start_time, exitcode)` with `record` (default `taskdir.append_run`)
    when the command ends, renames the outputs over `stdout` and `stderr`, logs one
    line per run via `logger` and exits once nothing holds any command's output open
    any more. A spec with an empty command line is logged and skipped.
    The outputs of the last `keep_outputs` runs of each task are kept (history.py).
    `keep_fds` stay open in P5 (with the logger's handler descriptors); every other
    descriptor >= 3 is closed there, and no command inherits any of them. P5 is named
    `saturnd: <role>` (`proctitle.runs_role`: "runs of HH:MM"). A run's output is
    mailed through the first of `sendmails`, else of `sendmail` in the task's PATH,
    that exists; `sendmails` None: as the daemon's environment says
    (`mail.sendmail_choice`).

    Raises ValueError for a negative `max_output`, OSError when the first or second
    fork fails (no run was started then).
    """
    if max_output < 0:
        raise ValueError(f"max_output must not be negative, not {max_output}")
    if record is None:
        record = taskdir.append_run
    keep = set(keep_fds) | _logger_fds(logger)
    fixed, mail_path = (
        mail.sendmail_choice(os.environb) if sendmails is None else (tuple(sendmails), True)
    )
    batch = Batch(
        specs=specs,
        record=record,
        logger=logger,
        identity=identity(),
        host=_hostname(),
        sendmails=fixed,
        mail_path=mail_path,
        keep=tuple(sorted(fd for fd in keep if fd >= 3)),
        p5_close=_close_ranges(keep, _fd_limit()),
        max_output=max_output,
        role=role,
        keep_outputs=keep_outputs,
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


def identity() -> Identity:
    """The user the tasks run as (see the module docstring), looked up for each batch
    (one minute's runs): a few microseconds."""
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(os.getuid())
    except KeyError:
        entry = None  # no password entry (a container's arbitrary uid)
    user = os.fsencode(entry.pw_name) if entry else b"%d" % os.getuid()
    home = os.environb.get(b"HOME", b"")
    if not home.startswith(b"/"):
        home = os.fsencode(entry.pw_dir) if entry and entry.pw_dir else b"/"
    return Identity(user, home)


def _hostname() -> bytes:
    """This machine's name, for the mail's subject."""
    try:
        return os.fsencode(socket.gethostname())
    except OSError:
        return b"localhost"


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


def _p4(batch: Batch) -> NoReturn:
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


def _p5(batch: Batch) -> NoReturn:
    """P5: detach, start the runs, relay and record each one, exit when all are done."""
    try:
        _detach(batch)
        proctitle.set_role(batch.role)
        Supervisor(batch).run()
    except BaseException:
        if batch.logger is not None:
            batch.logger.exception("runs failed")
    finally:
        os._exit(0)


def _detach(batch: Batch) -> None:
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
    for signum in CATCHABLE_SIGNALS:
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # a signal reserved by the C library
    # P5 writes files: past a file size limit it must get EFBIG, not die (the
    # commands get the default: they are spawned with every signal at its default).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
