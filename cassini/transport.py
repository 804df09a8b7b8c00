"""cassini's side of one exchange over the two FIFOs (PROTOCOL.md "Transport").

This module owns `exchange`: check the pipes directory, take `cassini.lock`, drain the
reply FIFO, send the request in one write, read until the decoder has the whole reply.

Rules (DESIGN.md, "Bad input and hostile clients"):
- The exclusive `flock` on `cassini.lock` is held for the whole exchange, so concurrent
  clients never read each other's replies. A read-only directory gets no lock: there is
  nothing better to do, and a daemon on a read-only directory is still worth talking to.
  A busy lock is waited for in the kernel's queue (a blocking flock that a timer cuts
  short, so `exchange` belongs to the main thread), never by polling.
- The reply FIFO is opened before the request is sent (the daemon opens it for writing
  once it has our request) and drained first: a client that abandoned a reply while the
  FIFO stayed open would otherwise hand it to us.
- The request goes out in one `write`: the daemon resynchronises at read boundaries.
- ...and only into an empty request FIFO: before opening it for writing, we look at it
  through a read end (FIONREAD) and wait up to QUEUE_WAIT for the daemon to read what
  others left there. Bytes a stalled writer left before ours, read at once with them,
  could decode as one request with ours (a CREATE whose string swallows our LIST),
  which nothing in the bytes tells apart; and the daemon takes what it reads while we
  hold the lock *and* the FIFO open for writing for ours (a read end does not count).
- The request FIFO stays open until the reply is complete: some daemons only answer
  while it is held open.
- Nothing waits forever: opening the request FIFO gives up after OPEN_TIMEOUT, the lock
  after LOCK_TIMEOUT, the reply after REPLY_TIMEOUT.
- Every failure is a `TransportError` whose message is one line without the program
  name; the caller prefixes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import sys
import termios
import time

from saturnd.protocol import NEED_DATA, ProtocolError, ReplyDecoder, encode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from saturnd.protocol import Reply, Request

__all__ = [
    "LOCK_NAME",
    "LOCK_TIMEOUT",
    "OPEN_TIMEOUT",
    "REPLY_PIPE",
    "REPLY_TIMEOUT",
    "REQUEST_PIPE",
    "TransportError",
    "exchange",
]

REQUEST_PIPE = "saturnd-request-pipe"
REPLY_PIPE = "saturnd-reply-pipe"
LOCK_NAME = "cassini.lock"

OPEN_TIMEOUT = 2.0
"""Seconds to wait for a daemon to hold the request FIFO open for reading."""
REPLY_TIMEOUT = 30.0
"""Seconds to wait for the whole reply once the request is sent (or being sent)."""
LOCK_TIMEOUT = REPLY_TIMEOUT + OPEN_TIMEOUT + 8.0
"""Seconds to wait for another cassini's exchange to end: longer than any exchange."""

QUEUE_WAIT = 3.0
"""Seconds to wait for the daemon to read bytes another writer left in the request FIFO
before ours go in (longer than the daemon spends on one exchange); then we write anyway."""
DRAIN_QUIET = 0.1
"""Seconds of silence from an attached writer after which no stale bytes are coming."""
_READ_SIZE = 1 << 16  # a whole default pipe buffer per read
_RETRY_FIRST = 0.001
_RETRY_MAX = 0.02


class TransportError(Exception):
    """The exchange failed; the message is one line, without the program name."""


def _pause(attempt: int, deadline: float) -> None:
    """Sleep before retry number `attempt`, never past `deadline`.

    Exponential back-off: a daemon that is about to open its FIFO is caught within a
    millisecond or two, and a long wait costs little CPU.
    """
    delay = min(_RETRY_FIRST * (1 << min(attempt, 16)), _RETRY_MAX)
    time.sleep(max(0.0, min(delay, deadline - time.monotonic())))


def _check_paths(pipes_dir: str) -> tuple[str, str]:
    """The two FIFOs' paths, after checking the directory and that they are our FIFOs."""
    try:
        info = os.stat(pipes_dir)
    except FileNotFoundError:
        raise TransportError(
            f"pipes directory {pipes_dir} does not exist (is saturnd running?)"
        ) from None
    except OSError as error:
        raise TransportError(f"cannot use pipes directory {pipes_dir}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise TransportError(f"pipes directory {pipes_dir} is not a directory")
    paths = []
    for name in (REQUEST_PIPE, REPLY_PIPE):
        path = os.path.join(pipes_dir, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise TransportError(f"{path} does not exist (is saturnd running?)") from None
        except OSError as error:
            raise TransportError(f"cannot use {path}: {error.strerror}") from None
        if not stat.S_ISFIFO(info.st_mode):
            raise TransportError(f"{path} is not a FIFO")
        # A FIFO someone else made could be read or answered by them: refuse it.
        if info.st_uid != os.geteuid():
            raise TransportError(f"{path} belongs to uid {info.st_uid}, not to you")
        paths.append(path)
    return paths[0], paths[1]


def _lock(pipes_dir: str) -> int | None:
    """Hold `cassini.lock` exclusively; None when the directory cannot take a lock file."""
    path = os.path.join(pipes_dir, LOCK_NAME)
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
            _wait_for_lock(fd, path)
        _announce(fd)
        return fd
    except BaseException:
        os.close(fd)
        raise


class _LockTimeout(Exception):
    """The timer of _wait_for_lock expired."""


def _wait_for_lock(fd: int, path: str) -> None:
    """Wait for the flock of `fd` in the kernel's queue of waiters, at most LOCK_TIMEOUT.

    A blocking flock cut short by a timer (what `flock -w` does), not a loop of
    non-blocking tries: the kernel hands a released lock to a waiter it queued, at once,
    so a client that only looked from time to time found it free only when nobody else
    waited, and lost every hand-over to clients waiting in the queue. Under a storm of
    such clients (tests/reliability/test_clients.py) polling cassinis waited 11-34 s and
    one gave up after 40 s. Here every cassini is in the queue, and takes the lock the
    moment it is its turn rather than up to a back-off step later.
    """
    import signal  # only when another exchange is under way: not on the usual path

    waiting = True

    def expire(_signum: int, _frame: object) -> None:
        if waiting:
            raise _LockTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    if previous is None:  # a handler installed outside Python: the default is the best bet
        previous = signal.SIG_DFL
    # A parent may have blocked SIGALRM (the mask survives exec): the timer must cut in.
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    try:
        signal.setitimer(signal.ITIMER_REAL, LOCK_TIMEOUT)
        # Should the timer fire just after the flock, the lock is given back (the caller
        # closes fd) and the exchange fails as timed out, at the very end of its time.
        fcntl.flock(fd, fcntl.LOCK_EX)
    except _LockTimeout:
        raise TransportError(
            f"{path} is still locked by another cassini after {LOCK_TIMEOUT:g} s"
        ) from None
    finally:
        waiting = False  # from here on, a late signal is ignored
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _announce(fd: int) -> None:
    """Also take a shared POSIX lock on cassini.lock while holding its flock: the
    daemon finds who holds the flock with one fcntl(F_GETLK) then, instead of reading
    /proc/locks, which waits for an RCU grace period in the kernel after a quiet
    moment (5-16 ms). Only a hint: the flock is the lock, and other clients do
    without it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pass


def _open_fifo(path: str, flags: int) -> int:
    """Open a FIFO without following a symbolic link, and check it is still a FIFO."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise TransportError(f"{path} is not a FIFO")
    return fd


def _open_reply(path: str, timeout: float) -> int:
    """Open the reply FIFO for reading and throw away any stale bytes in it.

    read() returning 0 means no writer is attached and nothing is left: clean. EAGAIN
    means a writer is attached: a daemon may still be writing the reply of a client
    that gave up (our reads free the space it was waiting for), so keep draining until
    the writer leaves or stays quiet for DRAIN_QUIET seconds. Gives up after `timeout`
    seconds if something keeps writing into it.
    """
    try:
        fd = _open_fifo(path, os.O_RDONLY)
    except OSError as error:
        raise TransportError(f"cannot open {path}: {error.strerror}") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise TransportError(f"something keeps writing into {path}")
            try:
                if not os.read(fd, _READ_SIZE):
                    break
            except BlockingIOError:
                quiet = min(DRAIN_QUIET, max(0.0, deadline - time.monotonic()))
                readable, _, _ = select.select([fd], [], [], quiet)
                if not readable:
                    break
        # Once a writer has come and gone, this descriptor reports end-of-file at once
        # (Linux raises POLLHUP on it); a fresh one waits for the daemon's reply.
        fresh = _open_fifo(path, os.O_RDONLY)
    except OSError as error:
        os.close(fd)
        raise TransportError(f"cannot open {path}: {error.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return fresh


def _open_request(path: str, timeout: float) -> int:
    """Open the request FIFO for writing, waiting up to `timeout` for a reader."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return _open_fifo(path, os.O_WRONLY)
        except OSError as error:
            # ENXIO: nobody has the FIFO open for reading (yet).
            if error.errno != errno.ENXIO:
                raise TransportError(f"cannot open {path}: {error.strerror}") from None
        if time.monotonic() >= deadline:
            raise TransportError(f"no daemon is reading {path} (is saturnd running?)")
        _pause(attempt, deadline)
        attempt += 1


def _queued(fd: int) -> int:
    """Bytes waiting in the FIFO `fd` is an end of, or 0 if that cannot be told."""
    buffer = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buffer)
    except OSError:
        return 0
    return int.from_bytes(buffer, sys.byteorder)


def _wait_until_read(path: str, timeout: float) -> None:
    """Wait, up to `timeout`, until the daemon has read what others left in the request
    FIFO, looking through a read end (so that none of it is taken for ours); then we
    write anyway, and the daemon's own rules apply."""
    try:
        fd = _open_fifo(path, os.O_RDONLY)
    except (OSError, TransportError):
        return  # _open_request says what is wrong with it
    try:
        deadline = time.monotonic() + timeout
        attempt = 0
        while _queued(fd) and time.monotonic() < deadline:
            _pause(attempt, deadline)
            attempt += 1
    finally:
        os.close(fd)


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


def _receive(fd: int, path: str, decoder: ReplyDecoder, timeout: float) -> Reply:
    """Read until `decoder` has the whole reply."""
    deadline = time.monotonic() + timeout
    received = 0
    while True:
        try:
            reply = decoder.next_message()
        except ProtocolError as error:
            raise TransportError(f"malformed reply from daemon: {error}") from None
        if reply is not NEED_DATA:
            return reply  # type: ignore[return-value]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError(f"no complete reply from the daemon within {timeout:g} s")
        # A reader opened before any writer sees no hang-up until a writer has come and
        # gone, so this blocks until the daemon writes (or the time is up).
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            continue
        except OSError as error:
            raise TransportError(f"cannot read {path}: {error.strerror}") from None
        if not data:
            if received == 0:
                raise TransportError(f"the daemon closed {path} without replying")
            raise TransportError(
                f"truncated reply from daemon: it closed {path} after {received} bytes"
            )
        received += len(data)
        decoder.feed(data)


def exchange(
    pipes_dir: str,
    request: Request,
    *,
    open_timeout: float = OPEN_TIMEOUT,
    reply_timeout: float = REPLY_TIMEOUT,
) -> Reply:
    """Send `request` to the daemon listening in `pipes_dir` and return its reply.

    Raises `TransportError` for every failure, with a one-line message.
    """
    request_path, reply_path = _check_paths(pipes_dir)
    decoder = ReplyDecoder(request.opcode)
    data = encode(request)
    lock_fd = _lock(pipes_dir)
    reply_fd = request_fd = -1
    try:
        reply_fd = _open_reply(reply_path, open_timeout)
        _wait_until_read(request_path, min(QUEUE_WAIT, reply_timeout))
        request_fd = _open_request(request_path, open_timeout)
        _send(request_fd, request_path, data, time.monotonic() + reply_timeout)
        return _receive(reply_fd, reply_path, decoder, reply_timeout)
    finally:
        # The request FIFO is closed only now, after the whole reply (see the rules).
        for fd in (request_fd, reply_fd, lock_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
