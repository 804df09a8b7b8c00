"""Durable file primitives of the state directory, below the store (store.py).

This module owns the few system-call sequences whose order makes a state file survive
a crash: writing all of a buffer (`pwrite_all`), flushing a directory (`sync_dir`),
replacing a whole file in one rename (`replace_file`, and `delete_leftover` for the
temporary a crash may leave), and the stamp that tells a reader whether a file changed.

Rules:
- Every path is opened with O_NOFOLLOW and O_CLOEXEC; files are created 0600.
- A replacement is durable when `replace_file` returns: the new bytes are flushed
  before the rename, the directory after it. Until the rename, the old file is intact.
- OSError is raised as it is: the caller says what was not done, in one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "OPEN_DIR",
    "OPEN_FILE",
    "Stamp",
    "delete_leftover",
    "describe",
    "pwrite_all",
    "replace_file",
    "sync_dir",
]

OPEN_FILE: Final = os.O_NOFOLLOW | os.O_CLOEXEC
"""Flags every state file is opened with, besides its access mode."""
OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""Flags a state directory is opened with (to fsync it)."""


@dataclass(frozen=True)
class Stamp:
    """What a reader compares to know whether a file changed since it last read it."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> Stamp:
        return cls(status.st_ino, status.st_size, status.st_mtime_ns)


def describe(error: OSError) -> str:
    """The reason of an OSError, without its errno number and path (for one line)."""
    return error.strerror or str(error)


def pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write all of `data` at `offset`: a short write (file size limit, disk full)
    is continued, so the error behind it is raised instead of being ignored."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:  # pragma: no cover - pwrite reports an error instead
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[written:]
        offset += written


def sync_dir(directory: Path) -> None:
    """fsync a directory, so the names just created or renamed in it stay."""
    fd = os.open(directory, OPEN_DIR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, temp: Path, content: bytes | bytearray) -> tuple[int, str | None]:
    """Make `content` the whole of `path` in one step that a crash cannot split.

    It is written to `temp` (in the same directory), flushed, renamed over `path`, and
    the directory flushed: a crash leaves the old file or the new one, and maybe a
    `temp` for `delete_leftover`. Returns an open read-write descriptor of the new
    file, and the reason the directory could not be flushed, if it could not (the
    rename is done then, and cannot be taken back). Raises OSError, with `path`
    unchanged and `temp` gone, when the rename did not happen.
    """
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | OPEN_FILE, 0o600)
    try:
        pwrite_all(fd, content, 0)
        os.fsync(fd)
        os.rename(temp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    try:
        sync_dir(path.parent)
    except OSError as error:
        return fd, describe(error)
    return fd, None


def delete_leftover(temp: Path) -> bool:
    """Delete the temporary of a `replace_file` a crash interrupted (it never became
    the file); True if there was one. Raises OSError."""
    try:
        os.unlink(temp)
    except FileNotFoundError:
        return False
    return True
