"""A task's rich run history, `history`, and the outputs kept of its last runs.

This module owns two kinds of files of `task_<ID>/` (taskdir.py names the others):

    history                           MAGIC "SATH", VERSION uint32 = 1, then one
                                      24-byte run-record per run (wiretypes), oldest first
    kept.<START>.<P5 pid>.<n>.<k|c>.stdout (and .stderr)
                                      hard links to the outputs of one of the last
                                      `keep` runs (k: whole, c: cut at the cap or by a
                                      write error)

Rules:
- Writers hold the directory's run lock (taskdir.lock_runs): a run appends its
  `times-exitcodes` entry and then its record here under that lock, so both files list
  the runs in the same order. A skipped run is recorded here only: the course's TX is
  about runs that ran.
- A record is one `pwrite` at the end of the last whole record: a torn tail (a crash
  in the middle of a write) is ignored by readers and overwritten by the next append.
- Bound: `HISTORY_KEEP` runs (10,000). A file holding twice as many is rewritten with
  its last `HISTORY_KEEP` records into a temporary, renamed over it; taskdir does the
  same to `times-exitcodes`, so TX and HISTORY give between 10,000 and 20,000 runs.
- Kept outputs are hard links made before the run's temporaries are renamed over
  `stdout`/`stderr`: no copy. The newest `keep` by (start, P5 pid, n) stay; `keep` 1
  keeps none (`stdout`/`stderr` are the last run's).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Final

from saturnd.runrecord import CUT_STDERR, CUT_STDOUT, RunRecord
from saturnd.statefile import OPEN_DIR, OPEN_FILE, pwrite_all
from saturnd.wiretypes import RUN_RECORD_SIZE, decode_run_record, encode_run_record

__all__ = [
    "DEFAULT_KEEP_OUTPUTS",
    "HISTORY",
    "HISTORY_KEEP",
    "append_history",
    "keep_outputs",
    "kept_output",
    "kept_paths",
    "read_history",
]

HISTORY: Final = "history"
HISTORY_KEEP = 10_000
"""Runs a history keeps at least; it is compacted back to this past twice as many."""
DEFAULT_KEEP_OUTPUTS: Final = 5
"""Runs whose outputs are kept (`saturnd --keep-outputs`)."""

_MAGIC: Final = b"SATH"
_VERSION: Final = 1
_HEAD: Final = struct.Struct(">4sI")
_HEAD_BYTES: Final = _HEAD.pack(_MAGIC, _VERSION)
_KEPT: Final = re.compile(r"kept\.(-?[0-9]+)\.([0-9]+)\.([0-9]+)\.([kc])\.(stdout|stderr)")
_STREAMS: Final = ("stdout", "stderr")


class HistoryError(OSError):
    """A `history` file this version cannot read (another magic or version)."""


def _records(data: bytes) -> tuple[RunRecord, ...]:
    """The whole records of a history file's bytes (a torn tail is ignored)."""
    if not data:
        return ()
    if len(data) < _HEAD.size:
        return ()  # created, header not written yet: no run recorded
    magic, version = _HEAD.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise HistoryError(f"history: not a version {_VERSION} history file")
    count = (len(data) - _HEAD.size) // RUN_RECORD_SIZE
    return tuple(
        decode_run_record(data, _HEAD.size + index * RUN_RECORD_SIZE) for index in range(count)
    )


def read_history(task_dir: Path) -> tuple[RunRecord, ...]:
    """The runs of a task, oldest first; () when it has none or its directory is gone.
    Raises HistoryError for a file of another format, OSError on a read failure."""
    try:
        dir_fd = os.open(task_dir, OPEN_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    try:
        fd = os.open(HISTORY, os.O_RDONLY | OPEN_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return ()
    finally:
        os.close(dir_fd)
    try:
        size = os.fstat(fd).st_size
        return _records(os.pread(fd, size, 0))
    finally:
        os.close(fd)


def append_history(dir_fd: int, record: RunRecord) -> None:
    """Append one run (under taskdir.lock_runs), compacting past 2 x HISTORY_KEEP.
    Raises OSError (FileNotFoundError: the task was removed)."""
    data = encode_run_record(record)
    fd = os.open(HISTORY, os.O_RDWR | os.O_CREAT | OPEN_FILE, 0o600, dir_fd=dir_fd)
    try:
        size = os.fstat(fd).st_size
        if size < _HEAD.size:
            pwrite_all(fd, _HEAD_BYTES, 0)
            size = _HEAD.size
        count = (size - _HEAD.size) // RUN_RECORD_SIZE
        pwrite_all(fd, data, _HEAD.size + count * RUN_RECORD_SIZE)
        if count + 1 > 2 * HISTORY_KEEP:
            start = _HEAD.size + (count + 1 - HISTORY_KEEP) * RUN_RECORD_SIZE
            kept = os.pread(fd, HISTORY_KEEP * RUN_RECORD_SIZE, start)
            _replace(dir_fd, HISTORY, _HEAD_BYTES + kept)
    finally:
        os.close(fd)


def _replace(dir_fd: int, name: str, data: bytes) -> None:
    """Replace a file of the directory by `data` in one rename (flushed first)."""
    temporary = f".{name}.compact"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | OPEN_FILE, 0o600, dir_fd=dir_fd)
    try:
        pwrite_all(fd, data, 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def compact_file(dir_fd: int, name: str, data: bytes) -> None:
    """Replace a file of a task directory by `data` (taskdir's compaction of
    `times-exitcodes`), under taskdir.lock_runs."""
    _replace(dir_fd, name, data)


# --- kept outputs ---------------------------------------------------------------------


def kept_paths(task_dir: Path, record: RunRecord, p5_pid: int, number: int) -> tuple[Path, Path]:
    """The paths a run's kept stdout and stderr have (for on-failure's variables)."""
    names = _kept_names(record, p5_pid, number)
    return task_dir / names[0], task_dir / names[1]


def _kept_names(record: RunRecord, p5_pid: int, number: int) -> tuple[str, str]:
    cuts = (record.flags & CUT_STDOUT, record.flags & CUT_STDERR)
    return (
        f"kept.{record.start}.{p5_pid}.{number}.{'c' if cuts[0] else 'k'}.stdout",
        f"kept.{record.start}.{p5_pid}.{number}.{'c' if cuts[1] else 'k'}.stderr",
    )


def keep_outputs(
    dir_fd: int,
    temporaries: tuple[bytes, bytes],
    record: RunRecord,
    p5_pid: int,
    number: int,
    keep: int,
) -> None:
    """Link a run's temporaries as its kept outputs and drop all but the newest
    `keep` runs' (under taskdir.lock_runs, before the temporaries are published).
    `keep` <= 1 keeps none. Raises OSError."""
    if keep <= 1:
        return
    for temporary, kept in zip(temporaries, _kept_names(record, p5_pid, number), strict=True):
        os.link(temporary, kept, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    runs = sorted(_kept_runs(os.listdir(dir_fd)))
    for run in runs[: max(0, len(runs) - keep)]:
        for name in run[3]:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass


def _kept_runs(names: list[str]) -> list[tuple[int, int, int, list[str]]]:
    """(start, P5 pid, n, [file names]) of each kept run among a directory's names."""
    runs: dict[tuple[int, int, int], list[str]] = {}
    for name in names:
        match = _KEPT.fullmatch(name)
        if match is not None:
            key = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
            runs.setdefault(key, []).append(name)
    return [(*key, files) for key, files in runs.items()]


def kept_output(task_dir: Path, stream: str, start: int) -> tuple[bool, bytes] | None:
    """(cut, bytes) of the `stream` ("stdout" or "stderr") of the run that started at
    `start` (0: the last finished run); None when that output is not kept. Raises
    ValueError for another stream, OSError on a read failure."""
    if stream not in _STREAMS:
        raise ValueError(f"no output stream {stream!r}")
    try:
        names = os.listdir(task_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    found: list[tuple[int, int, int, bool, str]] = []
    for name in names:
        match = _KEPT.fullmatch(name)
        if match is not None and match.group(5) == stream:
            run_start = int(match.group(1))
            if start in (0, run_start):
                pid, number = int(match.group(2)), int(match.group(3))
                found.append((run_start, pid, number, match.group(4) == "c", name))
    if found:
        *_, cut, name = max(found)
        data = _read(task_dir / name)
        if data is not None:
            return cut, data
    # None kept (--keep-outputs 1, or recorded late): the last run's, if it is the one.
    history = read_history(task_dir)
    if not history or start not in (0, history[-1].start):
        return None
    data = _read(task_dir / stream)
    if data is None:
        return None
    flag = CUT_STDOUT if stream == "stdout" else CUT_STDERR
    return bool(history[-1].flags & flag), data


def _read(path: Path) -> bytes | None:
    """A regular file's bytes without following a link, or None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | OPEN_FILE)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
