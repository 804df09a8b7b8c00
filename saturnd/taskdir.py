"""One task's directory, `task_<ID>/`: its names, its locks, recording a run, publishing
its outputs, and finding the runs in progress in it.

The files (DESIGN.md "Files"; the byte layout of the history is `records.py`'s):

    task_<ID>/times-exitcodes          NBRUNS, then TIME + EXITCODE per finished run
    task_<ID>/history, kept.…          the rich history, the kept outputs (history.py)
    task_<ID>/running.…, stop.…        runs in progress, stop requests (liveruns.py)
    task_<ID>/stdout, stderr           what the last finished run wrote
    task_<ID>/stdout.<P5 pid>.<n>.tmp  a run in progress (n: its number in P5's batch),
    task_<ID>/stderr.<P5 pid>.<n>.tmp  renamed over stdout and stderr when it is recorded
    task_<ID>/pending.<TIME>.<EXITCODE>.<P5 pid>.<n>.<k|c>.stdout (and .stderr)
                                       a finished run that could not be recorded (disk
                                       full): its outputs, its record in the name (k: the
                                       outputs are whole, c: cut by a write error)
    task_<ID>/recording.<NBRUNS>.pending.….stdout
                                       the same, being recorded when NBRUNS was NBRUNS
    .removed-<ID>-<random>/            a removed task's directory, being deleted

Rules:
- Every other module names these files through this one: store (the task table's side:
  creating, listing, removing directories and reading what a run left), spawn (a run's
  side: temporaries, record, publish), status (runs in progress). Store decides when a
  directory is deleted (`delete_dir`) or repaired at start (`repair_dirs`).
- Every path is opened relative to the directory's descriptor with O_NOFOLLOW, so a
  symlink planted in a task directory is never followed. Nothing here creates a task
  directory but `repair_dirs`, at start before any run: a removed one takes no new
  entries (FileNotFoundError means "removed").
- Two locks, in this order for anyone who takes both: `flock` on the directory's own
  descriptor (`lock_runs`), held by a run from its record to its publish, so the
  outputs left visible are those of the run recorded last; then `flock` on
  `times-exitcodes` (`append_run`), so two appends never interleave. Readers take
  neither, and a reader that wants a history and an output that agree takes LOCK_SH
  on the directory.
- `append_run` writes the run, syncs, then the count: a crash leaves the old count or
  the new one, never a count that includes a run not on disk. Past 2 x
  history.HISTORY_KEEP runs it rewrites the file with the last HISTORY_KEEP (a rename:
  every recorder holds `lock_runs`, so no append goes to the replaced file).
- Runs in progress are known by their markers (liveruns.py); one whose P5 was killed
  is recorded KILLED by `reap_abandoned` (at the task's next run, or at a KILL).
  A skipped run (`record_skipped`) is in `history` only.
- Pending runs (`pend`, `flush_pending`). A run whose record the disk refuses keeps
  its record in the *names* of its temporaries, renamed: a rename needs no data block,
  so it works on a full disk, is atomic, and survives the death of its P5 or of the
  daemon. Whoever records next in the directory (any run of the task, or a P5
  retrying) first records every pending run, by start time, under `lock_runs`, so the
  history keeps them in order and before any later run. Exactly once: a pending run is
  renamed to `recording.<NBRUNS>.…` before its append; one found so named was
  recorded if the history has grown past that NBRUNS (every append of a directory
  holds its run lock, and pending runs are recorded before any other).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from saturnd import history, liveruns
from saturnd.clock import SystemClock
from saturnd.history import kept_output, read_history
from saturnd.records import RUN_SIZE, RUNS_HEAD_SIZE, complete_runs, encode_nbruns, encode_run
from saturnd.runrecord import EXITED, KILLED, SKIPPED, RunRecord
from saturnd.statefile import pwrite_all

__all__ = [
    "OUTPUT_STREAMS",
    "Flushed",
    "PendingRun",
    "REMOVED_PREFIX",
    "STDERR",
    "STDOUT",
    "TIMES_EXITCODES",
    "append_run",
    "delete_dir",
    "dir_name",
    "flush_pending",
    "parse_pending",
    "pend",
    "pending_runs",
    "lock_runs",
    "open_file",
    "publish",
    "read_file",
    "removed_name",
    "repair_dirs",
    "run_number",
    "read_history",
    "kept_output",
    "record_skipped",
    "reap_abandoned",
    "request_stop",
    "run_temporaries",
    "runs_in_progress",
    "task_id_of",
    "temporary_names",
]

TIMES_EXITCODES: Final = "times-exitcodes"
"""A task's run history."""
STDOUT: Final = "stdout"
STDERR: Final = "stderr"
OUTPUT_STREAMS: Final = frozenset({STDOUT, STDERR})
"""The output files of a task's last finished run."""
REMOVED_PREFIX: Final = ".removed-"
"""The start of the name a removed task's directory is renamed to before deletion."""

_DIR_NAME: Final = re.compile(r"task_([0-9]+)")
# stdout.<P5 pid>.<run number>.tmp; stdout.<P5 pid>.tmp from a version with one P5 per run.
_RUN_OUTPUT: Final = re.compile(r"stdout\.([0-9]+)(?:\.[0-9]+)?\.tmp")

_STDOUT_BYTES: Final = STDOUT.encode()
_STDERR_BYTES: Final = STDERR.encode()
_OPEN_FILE: Final = os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# --- names ------------------------------------------------------------------------


def dir_name(task_id: int) -> str:
    """The name of a task's directory in the state directory."""
    return f"task_{task_id}"


def task_id_of(name: str) -> int | None:
    """The task id a state-directory entry's name is the directory of, else None."""
    match = _DIR_NAME.fullmatch(name)
    return None if match is None else int(match.group(1))


def removed_name(task_id: int, token: str) -> str:
    """The name a removed task's directory takes until it is deleted (`token` makes it
    unique: a task id is never reused, but a failed deletion may be retried)."""
    return f"{REMOVED_PREFIX}{task_id}-{token}"


def temporary_names(p5_pid: int, number: int) -> tuple[bytes, bytes]:
    """The temporary stdout and stderr of run `number` of the batch of `p5_pid`."""
    return (b"stdout.%d.%d.tmp" % (p5_pid, number), b"stderr.%d.%d.tmp" % (p5_pid, number))


def run_number(temporary: bytes) -> int:
    """The number in its batch of the run a `temporary_names` name is of."""
    return int(temporary.split(b".")[2])


def _temporary_pid(name: str) -> int | None:
    """The P5 pid in a temporary stdout's name, else None (stderr's are not counted)."""
    match = _RUN_OUTPUT.fullmatch(name)
    return None if match is None else int(match.group(1))


# --- reading ----------------------------------------------------------------------


def open_file(task_dir: Path, name: str) -> tuple[int, int] | None:
    """(fd, size) of a regular file of a task directory, opened read-only without
    following links; None if it or the directory does not exist. Raises OSError."""
    try:
        dir_fd = os.open(task_dir, _OPEN_DIR)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | _OPEN_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(dir_fd)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, status.st_size


def read_file(task_dir: Path, name: str) -> bytes | None:
    """A file of a task directory, or None if it or the directory does not exist."""
    opened = open_file(task_dir, name)
    if opened is None:
        return None
    fd, size = opened
    try:
        return _read_all(fd, size + 1)  # one byte more: the end shows at once
    finally:
        os.close(fd)


def _read_all(fd: int, want: int) -> bytes:
    """The bytes of an open file from offset 0 to its end, read `want` bytes first (a
    file that did not grow since its fstat is read in one piece, not joined)."""
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, want, offset)
        if not chunk:
            return b"".join(chunks)  # one chunk is returned as it is, not copied
        chunks.append(chunk)
        offset += len(chunk)
        want = 1 << 20


def run_temporaries(task_dir: str | Path) -> list[tuple[int, float]]:
    """(P5 pid, change time of its temporary stdout) of each run in progress in a task
    directory, as its temporaries show them; the caller checks the P5 is alive and its
    own. Empty when the directory is gone or unreadable (no run of ours can be there)."""
    try:
        files = list(os.scandir(task_dir))
    except OSError:
        return []
    runs: list[tuple[int, float]] = []
    for file in files:
        pid = _temporary_pid(file.name)
        if pid is None:
            continue
        try:
            changed = file.stat(follow_symlinks=False).st_ctime
        except OSError:
            continue  # renamed away: that run has just been recorded
        runs.append((pid, changed))
    return runs


# --- a run's side -------------------------------------------------------------------


def append_run(task_dir: Path, time: int, exitcode: int) -> None:
    """Record one finished run (start TIME, EXITCODE) at the end of `times-exitcodes`.

    The run's record is written at 4 + 10 * NBRUNS first and NBRUNS after it, so a
    crash leaves the old count (the extra bytes are ignored, then overwritten) or the
    new one. An exclusive flock serializes two runs of one task ending together.
    Raises FileNotFoundError if the task directory is gone (the task was removed:
    nothing to record) and OSError on other failures.
    """
    record = encode_run(time, exitcode)  # ValueError before touching anything
    dir_fd = os.open(task_dir, _OPEN_DIR)
    try:
        fd = os.open(TIMES_EXITCODES, os.O_RDWR | os.O_CREAT | _OPEN_FILE, 0o600, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Only NBRUNS and the file size matter, not the runs themselves.
        head = os.pread(fd, RUNS_HEAD_SIZE, 0)
        count = complete_runs(head, os.fstat(fd).st_size)
        pwrite_all(fd, record, RUNS_HEAD_SIZE + count * RUN_SIZE)
        # The run must be on disk before a count that includes it.
        os.fdatasync(fd)
        pwrite_all(fd, encode_nbruns(count + 1), 0)
        os.fdatasync(fd)
        if count + 1 > 2 * history.HISTORY_KEEP:
            _compact_runs(fd, task_dir, count + 1)
    finally:
        os.close(fd)  # closing releases the flock


def _compact_runs(fd: int, task_dir: Path, count: int) -> None:
    """Rewrite `times-exitcodes` with its last HISTORY_KEEP runs (history.py's bound).
    Every recorder of a run holds `lock_runs`, so none appends to the old file."""
    keep = history.HISTORY_KEEP
    runs = os.pread(fd, keep * RUN_SIZE, RUNS_HEAD_SIZE + (count - keep) * RUN_SIZE)
    dir_fd = os.open(task_dir, _OPEN_DIR)
    try:
        history.compact_file(dir_fd, TIMES_EXITCODES, encode_nbruns(keep) + runs)
    finally:
        os.close(dir_fd)


def lock_runs(dir_fd: int) -> None:
    """Take the directory's run lock (exclusive), held from a run's record to its
    publish; released when `dir_fd` is closed."""
    fcntl.flock(dir_fd, fcntl.LOCK_EX)


def publish(dir_fd: int, out_name: bytes, err_name: bytes) -> None:
    """Rename a run's temporaries over `stdout` and `stderr` (under `lock_runs`).
    Raises FileNotFoundError when the task was removed meanwhile."""
    os.rename(out_name, _STDOUT_BYTES, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.rename(err_name, _STDERR_BYTES, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


# --- pending runs ---------------------------------------------------------------------

_PENDING: Final = re.compile(
    r"(?:recording\.([0-9]+)\.)?pending\.(-?[0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)\.([kc])\.stdout"
)


_PENDING_PREFIXES: Final = ("pending.", "recording.")


@dataclass(frozen=True, order=True)
class PendingRun:
    """A finished run not recorded yet; ordered by start time (then P5 and number)."""

    start: int
    pid: int
    number: int
    exitcode: int = field(compare=False)
    whole: bool = field(compare=False)
    """Its outputs were kept whole (no write error cut them)."""
    on_disk: bool = field(default=True, compare=False)
    """Its outputs hold it in their names; False: only its P5's memory holds it (the
    outputs are lost)."""
    claimed: int | None = field(default=None, compare=False)
    """NBRUNS when its recording began (`recording.` name), else None."""

    def names(self) -> tuple[bytes, bytes]:
        """The names of its stdout and stderr in the task directory."""
        base = b"pending.%d.%d.%d.%d.%s." % (
            self.start,
            self.exitcode,
            self.pid,
            self.number,
            b"k" if self.whole else b"c",
        )
        out = base + _STDOUT_BYTES
        if self.claimed is not None:
            out = b"recording.%d." % self.claimed + out
        return out, base + _STDERR_BYTES


def parse_pending(name: str) -> PendingRun | None:
    """The pending run a task directory's entry is the stdout of, else None."""
    match = _PENDING.fullmatch(name)
    if match is None:
        return None
    claimed, start, exitcode, pid, number, whole = match.groups()
    return PendingRun(
        int(start),
        int(pid),
        int(number),
        int(exitcode),
        whole == "k",
        claimed=None if claimed is None else int(claimed),
    )


def pend(dir_fd: int, out_name: bytes, err_name: bytes, run: PendingRun) -> None:
    """Keep a run that could not be recorded: rename its temporaries to its pending
    names (stderr first: the stdout's name is the record). Raises OSError, and then
    the temporaries keep their names."""
    pending_out, pending_err = run.names()
    os.rename(err_name, pending_err, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    try:
        os.rename(out_name, pending_out, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        try:
            os.rename(pending_err, err_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            pass  # the caller unlinks the temporaries, which it names
        raise


def pending_runs(directory: int | str | Path) -> list[PendingRun]:
    """The pending runs of a task directory (a path or a descriptor), oldest first.
    Empty when the directory is gone or unreadable."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = (parse_pending(name) for name in names if name.startswith(_PENDING_PREFIXES))
    return sorted(run for run in found if run is not None)


def _history_count(dir_fd: int) -> int:
    """NBRUNS of the task's history as an append sees it (0 when there is none)."""
    try:
        fd = os.open(TIMES_EXITCODES, os.O_RDONLY | _OPEN_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    try:
        return complete_runs(os.pread(fd, RUNS_HEAD_SIZE, 0), os.fstat(fd).st_size)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Flushed:
    """What `flush_pending` recorded, oldest first, and the error that stopped it."""

    recorded: tuple[PendingRun, ...]
    error: OSError | None


def flush_pending(
    dir_fd: int,
    task_dir: Path,
    record: Callable[[Path, int, int], None],
    extra: Iterable[PendingRun] = (),
    publish_last: bool = False,
) -> Flushed:
    """Record the directory's pending runs and `extra` (held in memory) by start time,
    under `lock_runs`, and stop at the first failure. The outputs of the last one are
    published when `publish_last` (a retry: it is the run recorded last), else every
    pending output is deleted (the caller records a later run next)."""
    runs = sorted([*pending_runs(dir_fd), *extra])
    recorded: list[PendingRun] = []
    for index, run in enumerate(runs):
        try:
            if run.on_disk and run.claimed is not None and _history_count(dir_fd) > run.claimed:
                pass  # recorded by a P5 that died before it could clear the names
            else:
                if run.on_disk:
                    claimed = replace(run, claimed=_history_count(dir_fd))
                    old_out = run.names()[0]
                    os.rename(old_out, claimed.names()[0], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    run = claimed
                record(task_dir, run.start, run.exitcode)
                # All a pending run's name keeps: its start and exit code.
                outcome = EXITED if run.exitcode != 0xFFFF else KILLED
                history.append_history(
                    dir_fd, RunRecord(run.start, run.start, run.exitcode, outcome)
                )
            if run.on_disk:
                out, err = run.names()
                if publish_last and index == len(runs) - 1:
                    os.rename(out, _STDOUT_BYTES, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    try:
                        os.rename(err, _STDERR_BYTES, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    except FileNotFoundError:
                        pass  # its stdout is the record: a lost stderr must not stop it
                else:
                    _unlink_entry(dir_fd, out)
                    _unlink_entry(dir_fd, err)
        except OSError as error:
            return Flushed(tuple(recorded), error)
        recorded.append(run)
    return Flushed(tuple(recorded), None)


def _unlink_entry(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def repair_dirs(state_dir: Path, live: Iterable[int], log: logging.Logger) -> None:
    """At start, before any run: finish interrupted removals, delete the directory of
    a task that is not `live`, and recreate a missing one. Raises OSError."""
    # id -> whether its directory was found; by increasing id, for the log lines.
    found = dict.fromkeys(live, False)
    with os.scandir(state_dir) as listing:
        for entry in listing:
            if entry.name.startswith(REMOVED_PREFIX):
                log.warning("finishing an interrupted removal: deleting %s", entry.path)
                try:
                    _delete_entry(Path(entry.path))
                except OSError as error:
                    # Its name is no task's: harmless, and retried at the next start.
                    log.warning("cannot delete %s: %s", entry.path, error)
                continue
            task_id = task_id_of(entry.name)
            if task_id is None:
                continue
            if task_id not in found:
                log.warning("deleting %s: task %d does not exist", entry.path, task_id)
                _delete_entry(Path(entry.path))
            elif not entry.is_dir(follow_symlinks=False):  # the directory entry's type
                log.warning("replacing %s: not a directory", entry.path)
                _delete_entry(Path(entry.path))
            else:
                # No stat for the mode (a quarter of a second at 100,000 tasks): see the
                # docstring of store.py for why a task directory's mode is not checked here.
                found[task_id] = True
    for task_id, present in found.items():
        if not present:
            log.warning("recreating the missing directory of task %d", task_id)
            os.mkdir(state_dir / dir_name(task_id), 0o700)


def _delete_entry(path: Path) -> None:
    """Delete a directory tree, or a file or symlink, without following links."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def delete_dir(state_dir: Path, task_id: int, log: logging.Logger) -> None:
    """Rename then delete a removed task's directory; failures are only logged
    (the tombstone is durable, and the next open finishes the deletion)."""
    doomed = state_dir / removed_name(task_id, secrets.token_hex(4))
    try:
        os.rename(state_dir / dir_name(task_id), doomed)
    except FileNotFoundError:
        return
    except OSError as error:
        log.warning("cannot rename the directory of task %d: %s", task_id, error)
        return
    try:
        shutil.rmtree(doomed)
    except OSError as error:
        log.warning("cannot delete %s (retried at next start): %s", doomed, error)


# --- runs in progress, stopped, abandoned, skipped --------------------------------------


def runs_in_progress(task_dir: Path) -> list[tuple[int, int]]:
    """(start, command pid) of each run of the task in progress, by start (pid 0 if not
    known yet); a run whose supervising process was killed is not in progress."""
    return [(run.start, run.pid) for run in liveruns.live_runs(task_dir) if run.alive]


def request_stop(task_dir: Path, now: int | None = None) -> int:
    """Stop every run of the task in progress: its P5 sends SIGTERM to the command's
    process group, then SIGKILL after a grace, and records it KILLED. A run whose P5
    was killed is stopped and recorded here (end `now`, default the system clock).
    Returns how many runs were asked to stop."""
    try:
        dir_fd = os.open(task_dir, _OPEN_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        count = 0
        abandoned = False
        for run in liveruns.live_runs(dir_fd):
            if run.alive and liveruns.want_stop(dir_fd, run):
                count += 1
            else:
                abandoned = True
        if abandoned:
            count += reap_abandoned(task_dir, _now() if now is None else now)
        return count
    finally:
        os.close(dir_fd)


def _now() -> int:
    """The listener's KILL passes no time: the system clock's."""
    return int(SystemClock().now())


def reap_abandoned(
    task_dir: Path, now: int, record: Callable[[Path, int, int], None] | None = None
) -> int:
    """Record, KILLED, every run of the task whose supervising process was killed (end:
    `now`), after killing its command if it still runs; publish what it wrote. Takes
    `lock_runs`. Returns how many. Raises OSError (FileNotFoundError: task removed)."""
    record = append_run if record is None else record
    dir_fd = os.open(task_dir, _OPEN_DIR)
    try:
        runs = [run for run in liveruns.live_runs(dir_fd) if not run.alive]
        if not runs:
            return 0
        lock_runs(dir_fd)
        found = 0
        # A P5 killed after its run's history record, before unlinking the marker.
        done = {(entry.start, entry.pid) for entry in history.read_history(task_dir)[-64:]}
        for run in liveruns.live_runs(dir_fd):  # again, under the lock
            if run.alive:
                continue
            liveruns.kill_abandoned(run)
            if (run.start, run.pid) not in done:
                if run.pid != 0:  # pid 0: it was waiting for its jitter, and never ran
                    record(task_dir, run.start, 0xFFFF)
                history.append_history(
                    dir_fd,
                    RunRecord(run.start, max(now, run.start), 0xFFFF, KILLED, run.flags, run.pid),
                )
            try:
                publish(dir_fd, *temporary_names(run.p5_pid, run.number))
            except FileNotFoundError:
                pass  # its outputs could not be made or are gone: the record stays
            _unlink_entry(dir_fd, os.fsencode(run.name))
            _unlink_entry(dir_fd, os.fsencode(liveruns.stop_name(run.p5_pid, run.number)))
            found += 1
        return found
    finally:
        os.close(dir_fd)


def record_skipped(task_dir: Path, start: int, flags: int = 0) -> None:
    """Record a run not started because the previous one still goes on (--no-overlap):
    in `history` only (end = start, exit code 0xFFFF), never in `times-exitcodes`, whose
    TX lists runs that ran. Raises OSError (FileNotFoundError: the task was removed)."""
    dir_fd = os.open(task_dir, _OPEN_DIR)
    try:
        lock_runs(dir_fd)
        history.append_history(dir_fd, RunRecord(start, start, 0xFFFF, SKIPPED, flags))
    finally:
        os.close(dir_fd)
