"""The byte layout of a task's run history, `times-exitcodes` (DESIGN.md, "Files").

This module owns, sans I/O: NBRUNS uint32, then per finished run TIME int64 and
EXITCODE uint16, oldest first: exactly the body of the TX reply, so a reply is sent
straight from the file. And the consistent reply body of a file that may have a
half-finished append: a run is written first and NBRUNS after it, so runs beyond
NBRUNS are an unfinished append (ignored), and NBRUNS beyond the runs present can only
be damage (clamped). `taskdir.py` does the I/O.
"""

from __future__ import annotations

import struct
from typing import Final

from saturnd.protocol import Run

__all__ = [
    "RUNS_HEAD_SIZE",
    "RUN_SIZE",
    "RunsError",
    "complete_runs",
    "decode_runs",
    "encode_nbruns",
    "encode_run",
    "runs_body",
]

_U32: Final = struct.Struct(">I")
_RUN: Final = struct.Struct(">qH")

RUNS_HEAD_SIZE: Final = _U32.size
"""Bytes of NBRUNS at the start of `times-exitcodes` (4)."""
RUN_SIZE: Final = _RUN.size
"""Bytes of one run in `times-exitcodes` (10)."""


class RunsError(Exception):
    """Bytes that are not a TX reply body."""


def encode_run(time: int, exitcode: int) -> bytes:
    """One run of `times-exitcodes`: TIME int64, EXITCODE uint16."""
    return _RUN.pack(time, exitcode)


def encode_nbruns(count: int) -> bytes:
    """NBRUNS, the 4 bytes at the start of `times-exitcodes`."""
    return _U32.pack(count)


def complete_runs(head: bytes, file_size: int) -> int:
    """How many runs of a `times-exitcodes` file count: NBRUNS clamped to those present.

    `head` is the start of the file (at least its first 4 bytes if it has them) and
    `file_size` its length. An append writes the run first and NBRUNS last, so a run
    beyond NBRUNS is an unfinished append (ignored, and overwritten by the next one),
    and NBRUNS beyond the runs present can only be damage (clamped, not trusted).
    """
    if len(head) < RUNS_HEAD_SIZE or file_size < RUNS_HEAD_SIZE:
        return 0
    (count,) = _U32.unpack_from(head)
    present = (file_size - RUNS_HEAD_SIZE) // RUN_SIZE
    return min(int(count), present)


def runs_body(data: bytes) -> bytes:
    """The TX reply body (NBRUNS, then the runs) of a whole `times-exitcodes` file."""
    count = complete_runs(data, len(data))
    return encode_nbruns(count) + data[RUNS_HEAD_SIZE : RUNS_HEAD_SIZE + count * RUN_SIZE]


def decode_runs(body: bytes) -> tuple[Run, ...]:
    """The runs of a TX reply body (as `runs_body` returns); raises RunsError."""
    if len(body) < RUNS_HEAD_SIZE:
        raise RunsError(f"runs body of {len(body)} bytes has no NBRUNS")
    (count,) = _U32.unpack_from(body)
    if len(body) != RUNS_HEAD_SIZE + count * RUN_SIZE:
        raise RunsError(f"runs body of {len(body)} bytes does not hold {count} runs")
    return tuple(
        Run(*_RUN.unpack_from(body, RUNS_HEAD_SIZE + index * RUN_SIZE)) for index in range(count)
    )
