"""The listener's rules for which bytes form a request, sans I/O.

This module owns two framers, each fed the bytes of one read and the time of that read,
and asked `next(now)`: `Serve` a request, `Drop` bytes (FIFO) or `Close` the connection
(socket), with the reason for the log, or `NeedMore` (ask again at its `deadline`).

- `FifoFraming`, the request FIFO: any number of writers share one byte stream, and the
  course's clients are trusted to send each request in one write of at most PIPE_BUF
  bytes (which the kernel keeps whole), nothing more. So a request that is malformed,
  or not whole within REQUEST_TIMEOUT of the read that brought its first byte, is
  dropped with the rest of that first read, and decoding starts again at the next read:
  a well-behaved client queued behind a bad one is served as soon as the bad one is
  dropped. And since a client's request comes whole in one read, a read that is by
  itself exactly one whole request is never taken as the end of another: bytes left
  before it by a stalled writer, whether they would stay incomplete or would make one
  request with its first bytes, are dropped at once. Only the course's requests are
  served there (protocol.COURSE_OPCODES).
- `StreamFraming`, one socket connection: one peer, its bytes in order. A malformed
  request closes the connection (no resynchronising a stream one cannot trust); so does
  half a request for REQUEST_TIMEOUT, or nothing at all for IDLE_TIMEOUT.
Nothing here reads a descriptor or a clock: bytes and times in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Union

from saturnd.decoding import RequestDecoder, decode_request
from saturnd.protocol import COURSE_OPCODES, NeedData, ProtocolError, Request

REQUEST_TIMEOUT: Final = 1.0
"""Seconds a request may take to arrive in full after the read of its first byte."""
IDLE_TIMEOUT: Final = 30.0
"""Seconds a socket connection may stay silent between requests."""


@dataclass(frozen=True, slots=True)
class Serve:
    """Carry out `request`: the next `size` bytes."""

    request: Request
    size: int


@dataclass(frozen=True, slots=True)
class Drop:
    """`size` bytes were thrown away, because of `reason`."""

    size: int
    reason: str


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection, because of `reason` (the peer may be told it)."""

    reason: str


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Nothing to do until more bytes come, or `deadline` (None: no deadline)."""

    deadline: float | None


FifoStep = Union[Serve, Drop, NeedMore]
StreamStep = Union[Serve, Close, NeedMore]


@dataclass(slots=True)
class _Read:
    data: bytes
    at: float


class FifoFraming:
    """Requests from the shared request FIFO, resynchronised at read boundaries."""

    def __init__(self, timeout: float = REQUEST_TIMEOUT) -> None:
        self.timeout = timeout
        self._decoder = RequestDecoder()
        # The reads fed since the current request began (the first may be what was
        # left of a read after the previous request): the resynchronisation points.
        self._reads: list[_Read] = []

    @property
    def buffered(self) -> int:
        """Bytes held that no decision has consumed yet."""
        return sum(len(read.data) for read in self._reads)

    @property
    def deadline(self) -> float | None:
        """When the request under way times out, if one is."""
        return self._reads[0].at + self.timeout if self._reads else None

    def feed(self, data: bytes, now: float) -> None:
        """The bytes of one read of the FIFO, made at `now`."""
        if data:
            self._reads.append(_Read(data, now))
            self._decoder.feed(data)

    def next(self, now: float) -> FifoStep:
        """The next decision; call again until it is NeedMore."""
        try:
            message = self._decoder.next_message()
        except ProtocolError as error:
            return self._drop_first_read(str(error))
        if isinstance(message, NeedData):
            if not self._reads:
                return NeedMore(None)
            if len(self._reads) > 1 and _whole(self._reads[-1].data):
                return self._drop_before_last(
                    f"incomplete ({self.buffered - len(self._reads[-1].data)} bytes) "
                    "when a whole request came in a read of its own"
                )
            deadline = self._reads[0].at + self.timeout
            if now >= deadline:
                return self._drop_first_read(
                    f"incomplete after {self.timeout:g} s ({self.buffered} bytes)"
                )
            return NeedMore(deadline)
        size = self.buffered - self._decoder.pending
        last = self._last_read_of(size)
        if last > 0 and _whole(self._reads[last].data):
            return self._drop_before_last(
                f"a stalled writer's bytes ({sum(len(r.data) for r in self._reads[:last])}) "
                "glued to a whole request that came in a read of its own",
                last,
            )
        self._advance(size)
        if message.opcode not in COURSE_OPCODES:
            return Drop(size, f"{message.opcode.decode()} is served on the socket only")
        return Serve(message, size)

    def _last_read_of(self, size: int) -> int:
        """The index of the read holding the last of the first `size` bytes."""
        total = 0
        for index, read in enumerate(self._reads):
            total += len(read.data)
            if total >= size:
                return index
        return len(self._reads) - 1

    def _drop_before_last(self, reason: str, last: int = -1) -> Drop:
        """Drop the reads before read `last` (default: the last one) and decode again."""
        keep = self._reads[last:] if last >= 0 else self._reads[-1:]
        size = self.buffered - sum(len(read.data) for read in keep)
        self._reads = list(keep)
        self._decoder.reset()
        for read in self._reads:
            self._decoder.feed(read.data)
        return Drop(size, reason)

    def _advance(self, size: int) -> None:
        """Forget the first `size` bytes of the reads: a request that was decoded."""
        while size:
            first = self._reads[0]
            if len(first.data) <= size:
                size -= len(first.data)
                self._reads.pop(0)
            else:
                self._reads[0] = _Read(first.data[size:], first.at)
                size = 0

    def _drop_first_read(self, reason: str) -> Drop:
        """Drop the first read of a bad request and decode again from the next read."""
        dropped = self._reads.pop(0) if self._reads else _Read(b"", 0.0)
        self._decoder.reset()
        for read in self._reads:
            self._decoder.feed(read.data)
        return Drop(len(dropped.data), reason)


def _whole(data: bytes) -> bool:
    """Whether `data` is exactly one whole request of the course."""
    try:
        return decode_request(data).opcode in COURSE_OPCODES
    except ProtocolError:
        return False


class StreamFraming:
    """Requests from one socket connection, in order."""

    def __init__(
        self, now: float, timeout: float = REQUEST_TIMEOUT, idle: float = IDLE_TIMEOUT
    ) -> None:
        self.timeout = timeout
        self.idle = idle
        self._decoder = RequestDecoder()
        self._since = now  # the first byte of the request under way, or the last activity
        self._closed = False

    @property
    def in_request(self) -> bool:
        """Whether some bytes of an unfinished request are held."""
        return self._decoder.in_message

    @property
    def deadline(self) -> float:
        """When the connection times out if nothing more comes."""
        return self._since + (self.timeout if self._decoder.in_message else self.idle)

    def feed(self, data: bytes, now: float) -> None:
        """The bytes of one read of the connection, made at `now`."""
        if not self._decoder.in_message:
            self._since = now
        self._decoder.feed(data)

    def rest(self, now: float) -> None:
        """A reply was sent: the idle time counts from `now`."""
        if not self._decoder.in_message:
            self._since = now

    def next(self, now: float) -> StreamStep:
        """The next decision; after Close, Close for ever."""
        if self._closed:
            return Close("closed")
        try:
            message = self._decoder.next_message()
        except ProtocolError as error:
            return self._close(f"malformed request: {error}")
        if isinstance(message, NeedData):
            if self._decoder.in_message:
                deadline = self._since + self.timeout
                if now >= deadline:
                    return self._close(
                        f"incomplete request after {self.timeout:g} s "
                        f"({self._decoder.buffered} bytes)"
                    )
            else:
                deadline = self._since + self.idle
                if now >= deadline:
                    return self._close(f"idle for {self.idle:g} s")
            return NeedMore(deadline)
        self._since = now
        return Serve(message, 0)

    def _close(self, reason: str) -> Close:
        self._closed = True
        return Close(reason)
