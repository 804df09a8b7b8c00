"""cassini's exchange over the two FIFOs of PROTOCOL.md (`over_fifos`), which a C
daemon serves too.

Rules (docs/protocol.md):
- An exclusive `flock` on `cassini.lock` is held for the whole exchange, so concurrent
  cassinis never read each other's replies. It is waited for in the kernel's queue (a
  blocking flock cut short by a timer, so an exchange belongs to the main thread). A
  read-only directory gets no lock: a daemon there is still worth talking to.
- The reply FIFO is opened (for reading, non-blocking) before the request is sent, and
  whatever arrives on it from then on is the reply, even before the request is written:
  the course's test harness writes its reply as soon as a reader opens the FIFO. An
  empty hang-up is the daemon's "not done" only when no writer held the FIFO as it was
  opened (`_ReplyEnd`).
- The request goes out in one `write`, and the request FIFO stays open until the whole
  reply is in: some daemons only answer while it is held open.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import sys
import time

from cassini.transportcommon import (
    LOCK_TIMEOUT,
    READ_SIZE,
    REOPEN_GRACE,
    WAIT_NOTICE,
    Notice,
    TransportError,
    ours,
    retry,
)
from saturnd.decoding import ReplyDecoder
from saturnd.protocol import (
    CLIENT_LOCK,
    NEED_DATA,
    REPLY_PIPE,
    REQUEST_PIPE,
    ProtocolError,
    encode,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from saturnd.protocol import Reply, Request

__all__ = ["LOCK_NAME", "over_fifos"]

LOCK_NAME = CLIENT_LOCK


def _lock(pipes_dir: str) -> int | None:
    """Hold `cassini.lock` exclusively; None when the directory cannot take a lock file."""
    path = os.path.join(pipes_dir, CLIENT_LOCK)
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            # Read-only: an existing lock file can still be locked (flock needs no write
            # access); without one, go on unlocked.
            try:
                fd = os.open(path, flags | os.O_RDONLY)
            except OSError:
                return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise TransportError(f"{path} is a symbolic link; refusing to use it") from None
        raise TransportError(f"cannot open {path}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _wait_for_lock(fd, path, fcntl.LOCK_EX, LOCK_TIMEOUT, "another cassini")
        return fd
    except BaseException:
        os.close(fd)
        raise


class _LockTimeout(Exception):
    """The timer of _wait_for_lock expired."""


def _wait_for_lock(fd: int, path: str, kind: int, limit: float, holder: str) -> None:
    """Wait for the flock of `fd` in the kernel's queue of waiters, at most `limit`.

    A blocking flock cut short by a timer (what `flock -w` does), not a loop of
    non-blocking tries: the kernel hands a released lock to a waiter it queued, so a
    client that only looked from time to time lost every hand-over to queued ones
    (RELIABILITY.md, the storm of dying lock holders). The timer first fires at
    WAIT_NOTICE to say what we wait for (on a terminal), then at the limit.
    """
    import signal  # only when another exchange is under way: not on the usual path

    waiting = True
    notice = Notice(f"{holder} to let go of {path}")
    started = time.monotonic()

    def expire(_signum: int, _frame: object) -> None:
        if not waiting:
            return
        if time.monotonic() - started < limit - 0.001:
            notice.check()
            signal.setitimer(signal.ITIMER_REAL, max(0.001, started + limit - time.monotonic()))
            return
        raise _LockTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    if previous is None:  # a handler installed outside Python: the default is the best bet
        previous = signal.SIG_DFL
    # A parent may have blocked SIGALRM (the mask survives exec): the timer must cut in.
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    try:
        signal.setitimer(signal.ITIMER_REAL, min(WAIT_NOTICE, limit))
        # Should the timer fire just after the flock, the lock is given back (the caller
        # closes fd) and the exchange fails as timed out, at the very end of its time.
        fcntl.flock(fd, kind)
    except _LockTimeout:
        raise TransportError(f"{path} is still locked by {holder} after {limit:g} s") from None
    finally:
        waiting = False  # from here on, a late signal is ignored
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _open_fifo(path: str, flags: int) -> int:
    """Open a FIFO without following a symbolic link, and check it is still a FIFO."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise TransportError(f"{path} is not a FIFO")
    return fd


def _open_request(path: str, timeout: float) -> int:
    """Open the request FIFO for writing, waiting up to `timeout` for a reader."""

    def attempt() -> int | None:
        try:
            return _open_fifo(path, os.O_WRONLY)
        except OSError as error:
            # ENXIO: nobody has the FIFO open for reading (yet).
            if error.errno != errno.ENXIO:
                raise TransportError(f"cannot open {path}: {error.strerror}") from None
            return None

    fd = retry(attempt, timeout, f"a daemon to read {path}")
    if fd is None:
        raise TransportError(f"no daemon is reading {path} (is saturnd running?)")
    return fd


def _send(fd: int, path: str, data: bytes, deadline: float) -> None:
    """Write the whole request in one `write` call."""
    try:
        if len(data) > select.PIPE_BUF:
            # The kernel splits a larger non-blocking write wherever the pipe is full;
            # a blocking one is still one call, which keeps the daemon's read boundaries.
            os.set_blocking(fd, True)
        else:
            # Up to PIPE_BUF bytes are written whole or not at all (EAGAIN: pipe full).
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportError(f"the daemon is not reading {path}")
                _, writable, _ = select.select([], [fd], [], remaining)
                if writable:
                    break
        written = os.write(fd, data)
        # Only a signal can cut a blocking write short; finish it rather than leave the
        # daemon with half a request.
        while written < len(data):
            written += os.write(fd, data[written:])
    except BlockingIOError:
        raise TransportError(f"the daemon is not reading {path}") from None
    except BrokenPipeError:
        raise TransportError(f"the daemon closed {path} before reading the request") from None
    except OSError as error:
        raise TransportError(f"cannot write to {path}: {error.strerror}") from None


class _ReplyEnd:
    """Our read end of the reply FIFO, and whether a hang-up on it can only be an answer.

    A read end opened while no writer has the FIFO reports no hang-up until a writer has
    come and gone: then an empty hang-up is the daemon's "not done" (docs/protocol.md).
    One opened while a writer has it (the daemon, letting go of the previous client's
    reply a little late) sees that writer's close as a hang-up too: not an answer.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = self._open()
        self.early = b""
        """Reply bytes there from the start (the course's harness writes them early)."""
        self.clean = False
        """No writer had the FIFO when this read end was opened."""
        try:
            self.early = os.read(self.fd, READ_SIZE)
            if not self.early:
                # No writer now, but one there at the open may have left a hang-up behind.
                self.reopen()
        except BlockingIOError:
            pass  # a writer has it
        except BaseException as error:
            os.close(self.fd)
            if isinstance(error, OSError):
                raise TransportError(f"cannot read {path}: {error.strerror}") from None
            raise

    def _open(self) -> int:
        try:
            return _open_fifo(self.path, os.O_RDONLY)
        except OSError as error:
            raise TransportError(f"cannot open {self.path}: {error.strerror}") from None

    def reopen(self) -> None:
        """A fresh read end, opened before the old one is closed (so a reply written
        meanwhile stays in the FIFO), after a read found no writer: clean."""
        fresh = self._open()
        os.close(self.fd)
        self.fd = fresh
        self.clean = True

    def close(self) -> None:
        os.close(self.fd)


def _unread(fd: int) -> int:
    """Bytes in the FIFO of `fd` that no reader has taken yet (0 if it cannot tell)."""
    import termios  # only after a late writer's hang-up: not on the usual path

    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
    except OSError:
        return 0


def _receive(end: _ReplyEnd, request_fd: int, decoder: ReplyDecoder, timeout: float) -> Reply:
    """Read the reply FIFO until `decoder` has the whole reply.

    An empty hang-up on a clean read end (`_ReplyEnd`) is the daemon's "not done". On
    one that was not, the read end is opened afresh (clean); if our request was already
    read by then, the first hang-up may have been the answer as well as the late writer
    going, so a reply must begin within REOPEN_GRACE or that answer is believed.
    """
    path = end.path
    deadline = time.monotonic() + timeout
    notice = Notice("the daemon's reply")
    received = len(end.early)
    decoder.feed(end.early)
    grace: float | None = None  # set by a hang-up that may have been the answer
    while True:
        try:
            reply = decoder.next_message()
        except ProtocolError as error:
            raise TransportError(f"malformed reply from daemon: {error}") from None
        if reply is not NEED_DATA:
            return reply  # type: ignore[return-value]
        now = time.monotonic()
        if received == 0 and grace is not None and now >= grace:
            raise TransportError(f"the daemon closed {path} without replying")
        if now >= deadline:
            raise TransportError(f"no complete reply from the daemon within {timeout:g} s")
        # A clean read end sees no hang-up until a writer has come and gone, so this
        # waits until the daemon writes (or the time is up).
        until = deadline if received or grace is None else grace
        wait = min(until, max(now + 0.05, notice.at)) - now
        readable, _, _ = select.select([end.fd], [], [], wait)
        if not readable:
            notice.check()
            continue
        try:
            data = os.read(end.fd, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError as error:
            raise TransportError(f"cannot read {path}: {error.strerror}") from None
        if not data:
            if received:
                raise TransportError(
                    f"truncated reply from daemon: it closed {path} after {received} bytes"
                )
            if end.clean:
                raise TransportError(f"the daemon closed {path} without replying")
            if not _unread(request_fd):
                grace = min(deadline, time.monotonic() + REOPEN_GRACE)
            end.reopen()
            continue
        received += len(data)
        decoder.feed(data)


def over_fifos(
    pipes_dir: str, request: Request, open_timeout: float, reply_timeout: float
) -> Reply:
    request_path = os.path.join(pipes_dir, REQUEST_PIPE)
    reply_path = os.path.join(pipes_dir, REPLY_PIPE)
    for path in (request_path, reply_path):
        if not ours(path, stat.S_IFIFO, "FIFO"):
            raise TransportError(f"{path} does not exist (is saturnd running?)")
    decoder = ReplyDecoder(request.opcode)
    data = encode(request)
    lock_fd = _lock(pipes_dir)
    reply: _ReplyEnd | None = None
    request_fd = -1
    try:
        reply = _ReplyEnd(reply_path)
        request_fd = _open_request(request_path, open_timeout)
        _send(request_fd, request_path, data, time.monotonic() + reply_timeout)
        return _receive(reply, request_fd, decoder, reply_timeout)
    finally:
        # The request FIFO is closed only now, after the whole reply (see the rules).
        if reply is not None:
            reply.close()
        for fd in (request_fd, lock_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
