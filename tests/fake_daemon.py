"""A fake saturnd for cassini's end-to-end tests (a helper, not a test module).

It plays the daemon's end of two real FIFOs in a thread, following a script of
exchanges: it reads one request, records its exact bytes, then writes the scripted raw
reply bytes. The request is delimited by a minimal byte-level reading of PROTOCOL.md
written here on purpose (not `saturnd.protocol`), so the tests compare what cassini
really sends with hand-written bytes rather than with our own encoder.

Rules:
- The request FIFO is opened read-only and non-blocking, afresh for each exchange: that
  is what lets the fake see whether the client still holds its end open (a read gives
  EAGAIN while a writer is there, 0 once it has gone).
- Everything the thread finds wrong is recorded in `problems`, and `stop()` raises it,
  so a broken fake fails the test instead of hanging it.
- Every wait has a short deadline.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REQUEST_PIPE = "saturnd-request-pipe"
REPLY_PIPE = "saturnd-reply-pipe"

# Requests whose length does not depend on their content: opcode -> total bytes.
_FIXED_LENGTHS = {b"LS": 2, b"TM": 2, b"RM": 10, b"TX": 10, b"SO": 10, b"SE": 10}
_TIMING_BYTES = 13  # MINUTES uint64, HOURS uint32, DAYSOFWEEK uint8


def make_pipes(directory: Path) -> Path:
    """Create `directory` and the two FIFOs in it (0600); return the directory."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (REQUEST_PIPE, REPLY_PIPE):
        os.mkfifo(directory / name, 0o600)
    return directory


def request_length(data: bytes) -> int | None:
    """Length of the request at the start of `data`, or None if it is not complete yet.

    Raises ValueError for an opcode PROTOCOL.md does not define.
    """
    if len(data) < 2:
        return None
    opcode = data[:2]
    if opcode in _FIXED_LENGTHS:
        length = _FIXED_LENGTHS[opcode]
        return length if len(data) >= length else None
    if opcode != b"CR":
        raise ValueError(f"unknown opcode {opcode!r}")
    position = 2 + _TIMING_BYTES
    if len(data) < position + 4:
        return None
    argc = int.from_bytes(data[position : position + 4], "big")
    position += 4
    for _ in range(argc):
        if len(data) < position + 4:
            return None
        position += 4 + int.from_bytes(data[position : position + 4], "big")
    return position if len(data) >= position else None


@dataclass
class Exchange:
    """One scripted exchange: what the fake does once it has read a request."""

    reply: bytes = b""
    """Raw reply bytes written in one go, then the reply FIFO is closed."""
    truncate_at: int | None = None
    """Write only this many bytes of `reply`, then close: a truncated reply."""
    never_answer: bool = False
    """Read the request and never open the reply FIFO."""
    only_while_held: bool = False
    """Answer only if the client still holds the request FIFO open; else close the reply
    FIFO without writing anything (like daemons that need the request pipe held)."""


@dataclass
class FakeDaemon:
    """The daemon's end of the FIFOs in `pipes_dir`, running `script` in a thread."""

    pipes_dir: Path
    script: list[Exchange]
    timeout: float = 5.0
    """Seconds each scripted exchange may wait for its request."""
    hold_check: float = 0.2
    """Seconds an `only_while_held` exchange watches for the client closing its end."""
    requests: list[bytes] = field(default_factory=list)
    """The exact bytes of each request received, in order."""
    held: list[bool] = field(default_factory=list)
    """For each request: was the request FIFO still open on the client's side after it?"""
    unexpected: bytes = b""
    """Bytes received after the script was played (should stay empty)."""
    writers_without_data: int = 0
    """Times a client opened the request FIFO and closed it without writing."""
    problems: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _request_fd: int = -1

    @property
    def request_path(self) -> Path:
        return self.pipes_dir / REQUEST_PIPE

    @property
    def reply_path(self) -> Path:
        return self.pipes_dir / REPLY_PIPE

    def start(self) -> FakeDaemon:
        """Open the request FIFO (so a client can connect at once) and start the thread."""
        self._request_fd = self._open_request()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; raise AssertionError if it found anything wrong."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
            if self._thread.is_alive():
                self.problems.append("the fake daemon's thread did not stop")
        if self._request_fd >= 0:
            self._collect_unexpected(self._request_fd)
            os.close(self._request_fd)
            self._request_fd = -1
        if self.problems:
            raise AssertionError("; ".join(self.problems))

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.stop()
        else:  # the test already failed: do not hide its error behind ours
            self._stop.set()

    # --- the thread -------------------------------------------------------------

    def _open_request(self) -> int:
        return os.open(self.request_path, os.O_RDONLY | os.O_NONBLOCK)

    def _reopen_request(self) -> None:
        """A fresh read end of the request FIFO, opened before the old one is closed:
        with no reader for an instant, a client that had just opened the FIFO would get
        EPIPE on its write (a real daemon keeps its read end open)."""
        fresh = self._open_request()
        os.close(self._request_fd)
        self._request_fd = fresh

    def _run(self) -> None:
        try:
            for exchange in self.script:
                if not self._play(exchange):
                    return
                self._reopen_request()
            # Script done: keep listening, so a client sending more is noticed.
            while not self._stop.is_set():
                self._collect_unexpected(self._request_fd, wait=0.02)
        except Exception as error:  # reported by stop()
            self.problems.append(f"fake daemon failed: {error!r}")

    def _collect_unexpected(self, fd: int, wait: float = 0.0) -> None:
        readable, _, _ = select.select([fd], [], [], wait)
        if not readable:
            return
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if data:
            self.unexpected += data
            return
        self.writers_without_data += 1
        # After a writer has come and gone the FIFO reports end of file for ever: reopen.
        self._reopen_request()

    def _read_request(self) -> bytes | None:
        """Bytes of one whole request, or None (recorded as a problem) on time-out."""
        deadline = time.monotonic() + self.timeout
        data = b""
        while not self._stop.is_set():
            length = request_length(data)
            if length is not None:
                if len(data) > length:
                    self.problems.append(f"bytes after the request: {data[length:].hex()}")
                return data[:length]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.problems.append(f"no complete request (got {data.hex(' ')!r})")
                return None
            readable, _, _ = select.select([self._request_fd], [], [], min(remaining, 0.05))
            if not readable:
                continue
            try:
                chunk = os.read(self._request_fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                if data:
                    self.problems.append(f"request pipe closed mid-request: {data.hex(' ')}")
                    return None
                self.writers_without_data += 1
                self._reopen_request()
                continue
            data += chunk
        return None

    def _client_holds_request_pipe(self, wait: float) -> bool:
        """True if the client keeps its end of the request FIFO open for `wait` seconds.

        A client that closes it shows as a hang-up: readable, and read() gives 0.
        """
        select.select([self._request_fd], [], [], wait)
        try:
            extra = os.read(self._request_fd, 1)
        except BlockingIOError:
            return True  # a writer is there, with nothing more to say
        if extra:
            self.problems.append(f"bytes after the request: {extra.hex()}")
        return False

    def _open_reply(self) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return os.open(self.reply_path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
            time.sleep(0.002)

    def _play(self, exchange: Exchange) -> bool:
        request = self._read_request()
        if request is None:
            return False
        self.requests.append(request)
        held = self._client_holds_request_pipe(self.hold_check if exchange.only_while_held else 0)
        self.held.append(held)
        if exchange.never_answer:
            self._stop.wait()
            return False
        reply = exchange.reply
        if exchange.only_while_held and not held:
            reply = b""
        elif exchange.truncate_at is not None:
            reply = reply[: exchange.truncate_at]
        fd = self._open_reply()
        try:
            os.set_blocking(fd, True)
            view = memoryview(reply)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except BrokenPipeError:
            self.problems.append("the client closed the reply pipe before the whole reply")
        finally:
            os.close(fd)
        return True
