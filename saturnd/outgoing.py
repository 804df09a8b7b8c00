"""A reply on its way out through a non-blocking descriptor (a socket or the reply FIFO).

This module owns `Outgoing`: the bytes of one reply, or a `handlers.FileReply` whose
bulk goes from its file with sendfile, pushed a piece at a time whenever the peer can
take more, so that a slow reader never holds up the listener's loop.

Rules:
- A FileReply of at most SMALL_REPLY bytes is read at once (one write is cheaper than a
  write plus a sendfile below 4-8 KB, and is whole in a pipe); a larger one is sent from
  the file, so the listener's memory does not grow with a history.
- Where sendfile is refused between two files, the same bytes are read and written in
  pieces: the peer cannot tell. The refusal is remembered for the process.
- The file's descriptor is closed once, by `close`, whether everything was sent or not.
"""

from __future__ import annotations

import errno
import os
import select
from typing import ClassVar, Final

from saturnd.handlers import FileReply

SMALL_REPLY: Final = select.PIPE_BUF
_READ_SIZE: Final = 1 << 16
_NO_SENDFILE: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
"""Errors of sendfile that mean "not between these two files": read and write instead."""


def _pread_exactly(fd: int, length: int, offset: int) -> bytes:
    """`length` bytes of an open file from `offset`; OSError if it ends before."""
    chunks: list[bytes] = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise OSError(errno.EIO, "the file ended before its last bytes")
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class Outgoing:
    """One reply being written; `push` until `done`, then `close`."""

    use_sendfile: ClassVar[bool] = hasattr(os, "sendfile")

    def __init__(self, reply: bytes | FileReply) -> None:
        """Takes `reply`'s file descriptor, if any; reads a small FileReply at once
        (raising OSError, after closing it, if the file cannot be read)."""
        self.file: FileReply | None = None
        if isinstance(reply, FileReply):
            if reply.size <= SMALL_REPLY:
                try:
                    reply_bytes = reply.head + _pread_exactly(reply.fd, reply.length, reply.offset)
                finally:
                    os.close(reply.fd)
                self.head = memoryview(reply_bytes)
            else:
                self.file = reply
                self.head = memoryview(reply.head)
        else:
            self.head = memoryview(reply)
        self.size = len(self.head) + (self.file.length if self.file else 0)
        self.sent = 0
        self._pending = memoryview(b"")  # read from the file, not written yet

    @property
    def done(self) -> bool:
        """Whether every byte went out."""
        return self.sent >= self.size

    def push(self, fd: int) -> int:
        """Write what `fd` takes now; the number of bytes written (0: it takes none).
        Raises OSError (BrokenPipeError: the reader left)."""
        written = 0
        while not self.done:
            try:
                count = self._push_some(fd)
            except BlockingIOError:
                break
            self.sent += count
            written += count
        return written

    def _push_some(self, fd: int) -> int:
        if self.sent < len(self.head):
            return os.write(fd, self.head[self.sent :])
        reply = self.file
        assert reply is not None
        position = reply.offset + self.sent - len(self.head)
        if not self._pending and Outgoing.use_sendfile:
            try:
                count = os.sendfile(fd, reply.fd, position, self.size - self.sent)
            except OSError as error:
                if error.errno not in _NO_SENDFILE:
                    raise
                Outgoing.use_sendfile = False
            else:
                if count == 0:
                    raise OSError(errno.EIO, "the file ended before its last bytes")
                return count
        if not self._pending:
            self._pending = memoryview(
                os.pread(reply.fd, min(self.size - self.sent, _READ_SIZE), position)
            )
            if not self._pending:
                raise OSError(errno.EIO, "the file ended before its last bytes")
        count = os.write(fd, self._pending)
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        """Release the file of a FileReply (once)."""
        if self.file is not None:
            os.close(self.file.fd)
            self.file = None
