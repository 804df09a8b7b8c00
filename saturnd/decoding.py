"""Incremental decoders: bytes as they arrive -> one message at a time (h11's way).

This module owns the driver of `protocol`'s parsers: `RequestDecoder` (the daemon's
side, one per peer) and `ReplyDecoder` (the client's side, for one request's reply),
and the one-shot `decode_request` / `decode_reply`.

Rules:
- A decoder never reads a descriptor: it is fed bytes and says a message, NEED_DATA, or
  raises ProtocolError; after a ProtocolError it must be `reset()` before further use.
- What it buffers is capped (MAX_REQUEST for requests) before any wait for the bytes a
  length announces.
- The common fixed-size requests are built straight from the buffer; they decode to
  exactly what the parser gives for the same bytes (tests/test_protocol.py).
"""

from __future__ import annotations

import struct

from saturnd.protocol import (
    MAX_REQUEST,
    NEED_DATA,
    OP_LIST,
    OP_REMOVE,
    OP_STDERR,
    OP_STDOUT,
    OP_TERMINATE,
    OP_TIMES_EXITCODES,
    REPLY_OPCODES,
    ListRequest,
    NeedData,
    ProtocolError,
    RemoveRequest,
    StderrRequest,
    StdoutRequest,
    TerminateRequest,
    TimesExitcodesRequest,
    parse_reply,
    parse_request,
)

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing (see protocol.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from typing import Final

    from saturnd.protocol import Reply, Request, TaskRequest

__all__ = ["ReplyDecoder", "RequestDecoder", "decode_reply", "decode_request"]

_U64 = struct.Struct(">Q")


class _Decoder:
    """Drives a parser generator over the bytes fed so far (h11's receive/next)."""

    _COMPACT_AT = 1 << 16

    def __init__(self, max_message: int | None) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._max_message = max_message
        self._parser: Generator[int, bytes, object] | None = None
        self._want = 0
        self._consumed = 0

    def _new_parser(self) -> Generator[int, bytes, object]:
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        """Add bytes that arrived."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet consumed by a complete message."""
        return len(self._buffer) - self._pos + self._consumed

    @property
    def in_message(self) -> bool:
        """True when some bytes of an unfinished message have been fed."""
        return self.buffered > 0

    @property
    def pending(self) -> int:
        """How many bytes were fed after the last complete message (between messages)."""
        return len(self._buffer) - self._pos

    def reset(self) -> None:
        """Forget every byte fed so far and any message in progress."""
        self._buffer = bytearray()
        self._pos = 0
        self._parser = None
        self._consumed = 0

    def next_message(self) -> object:
        """A complete message, or NEED_DATA; raises ProtocolError on bad bytes.

        After a ProtocolError the decoder must be `reset()` before it is used again.
        """
        if self._parser is None:
            if self._pos == len(self._buffer):
                return NEED_DATA  # between messages, nothing fed: no parser to start
            self._parser = self._new_parser()
            self._consumed = 0
            self._want = next(self._parser)
        while True:
            if self._max_message is not None and self._consumed + self._want > self._max_message:
                raise ProtocolError(f"message longer than the limit of {self._max_message} bytes")
            end = self._pos + self._want
            if end > len(self._buffer):
                return NEED_DATA
            chunk = bytes(self._buffer[self._pos : end])
            self._pos = end
            self._consumed += self._want
            try:
                self._want = self._parser.send(chunk)
            except StopIteration as done:
                self._parser = None
                self._consumed = 0
                self._compact()
                return done.value
            if self._pos >= self._COMPACT_AT:
                self._compact()

    def _compact(self) -> None:
        del self._buffer[: self._pos]
        self._pos = 0


def _fixed_request(cls: type[TaskRequest]) -> Callable[[bytearray, int], Request]:
    def build(buffer: bytearray, at: int) -> Request:
        return cls(_U64.unpack_from(buffer, at + 2)[0])

    return build


# Requests of a fixed size (opcode included), whole in the buffer: built at once, with
# no parser to start, resume and finish (the daemon's common case, one per exchange).
# They decode to what `parse_request` gives for the same bytes (tests/test_protocol.py).
_FIXED_REQUESTS: Final[dict[bytes, tuple[int, Callable[[bytearray, int], Request]]]] = {
    OP_LIST: (2, lambda _buffer, _at: ListRequest()),
    OP_TERMINATE: (2, lambda _buffer, _at: TerminateRequest()),
    OP_REMOVE: (10, _fixed_request(RemoveRequest)),
    OP_TIMES_EXITCODES: (10, _fixed_request(TimesExitcodesRequest)),
    OP_STDOUT: (10, _fixed_request(StdoutRequest)),
    OP_STDERR: (10, _fixed_request(StderrRequest)),
}


class RequestDecoder(_Decoder):
    """Decodes requests (the daemon's side), within MAX_REQUEST bytes each."""

    def __init__(self) -> None:
        super().__init__(MAX_REQUEST)

    def _new_parser(self) -> Generator[int, bytes, object]:
        return parse_request()

    def next_message(self) -> Request | NeedData:
        """A complete request, or NEED_DATA; raises ProtocolError."""
        if self._parser is None:
            at = self._pos
            fixed = _FIXED_REQUESTS.get(bytes(self._buffer[at : at + 2]))
            if fixed is not None and len(self._buffer) - at >= fixed[0]:
                message = fixed[1](self._buffer, at)
                self._pos = at + fixed[0]
                self._compact()
                return message
        return super().next_message()  # type: ignore[return-value]


class ReplyDecoder(_Decoder):
    """Decodes the reply to one kind of request (the client's side)."""

    def __init__(self, opcode: bytes) -> None:
        if opcode not in REPLY_OPCODES:
            raise ValueError(f"unknown opcode {opcode!r}")
        super().__init__(None)
        self._opcode = opcode

    def _new_parser(self) -> Generator[int, bytes, object]:
        return parse_reply(self._opcode)

    def next_message(self) -> Reply | NeedData:
        """The complete reply, or NEED_DATA; raises ProtocolError."""
        return super().next_message()  # type: ignore[return-value]


def decode_request(data: bytes) -> Request:
    """Decode exactly one whole request (tests, tools); raises ProtocolError."""
    decoder = RequestDecoder()
    decoder.feed(data)
    message = decoder.next_message()
    if isinstance(message, NeedData):
        raise ProtocolError("truncated request")
    if decoder.buffered:
        raise ProtocolError("bytes after the request")
    return message


def decode_reply(opcode: bytes, data: bytes) -> Reply:
    """Decode exactly one whole reply to a request of `opcode`; raises ProtocolError."""
    decoder = ReplyDecoder(opcode)
    decoder.feed(data)
    message = decoder.next_message()
    if isinstance(message, NeedData):
        raise ProtocolError("truncated reply")
    if decoder.buffered:
        raise ProtocolError("bytes after the reply")
    return message
