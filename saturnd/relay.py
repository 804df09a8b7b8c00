"""Relaying one command's output pipe into its capped temporary file (P5's side).

This module owns what P5 does with the bytes of a run's stdout or stderr: store them
in the run's temporary file up to the cap (`saturnd --max-output`), move the rest to
/dev/null with `splice` (no copy through Python), remember that the stream was cut and
why, and read back what was stored (for the mail). runsupervisor.py owns the loop.

Rules: a stream whose file fails (disk full, file size limit) is cut where it failed
and never written again; a cut stream stays cut.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import Final

from saturnd.launch import strerror

__all__ = ["CHUNK", "Stream", "describe_cuts", "pipe_capacity", "pump", "store", "stored"]

CHUNK: Final = 1 << 16
"""What P5 reads from a pipe, or moves to /dev/null past the cap, at once."""


@dataclass(slots=True)
class Stream:
    """One of a command's output pipes as P5 relays it into its temporary file."""

    pipe: int
    file: int
    room: int  # bytes the file may still take
    cut: bool = False  # bytes were discarded (past the cap, or the file failed)
    error: OSError | None = None


def stored(streams: list[Stream], max_output: int) -> bytes:
    """What a run's files hold, stdout then stderr (what cannot be read is left out)."""
    parts = []
    for stream in streams:
        try:
            # The room left says the size, unless the stream was cut or failed.
            size = max_output - stream.room if stream.room > 0 else os.fstat(stream.file).st_size
            parts.append(os.pread(stream.file, size, 0) if size else b"")
        except OSError:
            continue
    return b"".join(parts)


def pump(stream: Stream, null: int, limit: int) -> int:
    """Move up to `limit` bytes from the stream's pipe: into its file while there is
    room, else to /dev/null. Returns the bytes moved, 0 at end of file (the pipe is
    closed then); raises BlockingIOError when a non-blocking pipe is empty."""
    if stream.room > 0:
        data = os.read(stream.pipe, limit)
        if data:
            store(stream, data)
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


def store(stream: Stream, data: bytes) -> None:
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


def pipe_capacity(fd: int) -> int:
    """How many bytes a pipe can hold (what a writer may have left in it)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (OSError, AttributeError):
        return 1 << 16  # Linux's default


def describe_cuts(streams: list[Stream], limit: int) -> str:
    """What the log says about output that was not kept, or nothing."""
    notes = []
    for name, stream in zip(("stdout", "stderr"), streams, strict=False):
        if stream.error is not None:
            notes.append(f"; {name} cut: {strerror(stream.error).decode()}")
        elif stream.cut:
            notes.append(f"; {name} cut at {limit} bytes")
    return "".join(notes)
