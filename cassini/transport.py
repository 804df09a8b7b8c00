"""cassini's side of one exchange: over our daemon's socket, or over the two FIFOs.

This module owns `exchange`: send one request, read until the decoder has the whole
reply. The socket `saturnd.sock` is used when it is there and ours (the kernel gives
each client its own connection: replies cannot cross); otherwise, or with
CASSINI_TRANSPORT=fifo, the FIFOs of PROTOCOL.md, which a C daemon serves too.
CASSINI_TRANSPORT=socket refuses the FIFOs. An extension goes over the socket only; a
caller may name a course request to send in its place over the FIFOs (`fifo_request`:
LIST for LIST-EX). `NoSocketError` says an extension had no socket to go over,
`NoReplyError` that the daemon ended the connection without a byte of reply (how an
older saturnd drops a request it does not know).

Rules on the FIFOs (docs/protocol.md):
- An exclusive `flock` on `cassini.lock` is held for the whole exchange, so concurrent
  cassinis never read each other's replies. It is waited for in the kernel's queue (a
  blocking flock cut short by a timer, so `exchange` belongs to the main thread). A
  read-only directory gets no lock: a daemon there is still worth talking to.
- The reply FIFO is opened (for reading, non-blocking) before the request is sent, and
  whatever arrives on it from then on is the reply, even before the request is written:
  the course's test harness writes its reply as soon as a reader opens the FIFO.
- The request goes out in one `write`, and the request FIFO stays open until the whole
  reply is in: some daemons only answer while it is held open.
Everywhere:
- Nothing waits for ever: OPEN_TIMEOUT for a daemon to read the FIFO, LOCK_TIMEOUT for
  the lock, REPLY_TIMEOUT for the reply. After WAIT_NOTICE seconds, a client whose
  stderr is a terminal says what it is waiting for.
- After TERMINATE's `OK`, `exchange` returns once the daemon has let go of the pipes
  directory (`saturnd.lock` free), so `cassini -q && saturnd` starts a new daemon.
- Every failure is a `TransportError` whose message is one line without the program
  name; the caller prefixes it.
"""

from __future__ import annotations

# _socket rather than socket: socket.py imports enum, a few ms of every cassini start.
import _socket
import errno
import fcntl
import os
import select
import stat
import sys
import time

from saturnd.decoding import ReplyDecoder
from saturnd.protocol import (
    CLIENT_LOCK,
    COURSE_OPCODES,
    NEED_DATA,
    OP_TERMINATE,
    PIPES_LOCK,
    REPLY_PIPE,
    REQUEST_PIPE,
    SOCKET_NAME,
    OkReply,
    ProtocolError,
    encode,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from saturnd.protocol import Reply, Request

    _T = TypeVar("_T")

__all__ = [
    "LOCK_NAME",
    "LOCK_TIMEOUT",
    "OPEN_TIMEOUT",
    "REPLY_PIPE",
    "REPLY_TIMEOUT",
    "REQUEST_PIPE",
    "NoReplyError",
    "NoSocketError",
    "TransportError",
    "exchange",
]

LOCK_NAME = CLIENT_LOCK
OPEN_TIMEOUT = 2.0
"""Seconds to wait for a daemon to hold the request FIFO open for reading."""
REPLY_TIMEOUT = 30.0
"""Seconds to wait for the whole reply once the request is sent (or being sent)."""
LOCK_TIMEOUT = REPLY_TIMEOUT + OPEN_TIMEOUT + 8.0
"""Seconds to wait for another cassini's exchange to end: longer than any exchange."""
STOP_TIMEOUT = 15.0
"""Seconds to wait, after TERMINATE's OK, for the daemon to let go of its directory."""
WAIT_NOTICE = 2.0
"""Seconds of waiting after which a client on a terminal says what it waits for."""
REOPEN_GRACE = 1.0
"""Seconds a reply may take to begin after a hang-up that may have been the answer or a
late writer of the previous reply going (`_receive`): past them, it was the answer."""
_READ_SIZE = 1 << 16
_RETRY_FIRST = 0.001
_RETRY_MAX = 0.02


class TransportError(Exception):
    """The exchange failed; the message is one line, without the program name."""


class NoReplyError(TransportError):
    """The daemon closed or reset the socket connection without a byte of reply: a
    saturnd older than the request drops one it does not know that way."""


class NoSocketError(TransportError):
    """The request needs the daemon's socket (an extension, or CASSINI_TRANSPORT=socket),
    and there is none to use."""


class _Notice:
    """Says once on stderr, if it is a terminal, what we wait for after WAIT_NOTICE."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.at = time.monotonic() + WAIT_NOTICE
        self.said = False

    def check(self) -> None:
        if not self.said and time.monotonic() >= self.at:
            self.said = True
            self.say()

    def say(self) -> None:
        try:
            if os.isatty(2):
                os.write(2, f"cassini: waiting for {self.what}...\n".encode())
        except OSError:
            pass


def _retry(attempt: Callable[[], _T | None], timeout: float, what: str) -> _T | None:
    """Call `attempt` until it returns something, for up to `timeout` seconds; None when
    time is up. Exponential back-off (a daemon about to open its FIFO is caught within a
    millisecond or two); after WAIT_NOTICE, a client on a terminal says it waits for `what`.
    """
    deadline = time.monotonic() + timeout
    notice = _Notice(what)
    tries = 0
    while True:
        result = attempt()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            return None
        notice.check()
        delay = min(_RETRY_FIRST * (1 << min(tries, 16)), _RETRY_MAX)
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        tries += 1


def _check_dir(pipes_dir: str) -> None:
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


def _ours(path: str, kind: int, what: str) -> bool:
    """Whether `path` is there; a TransportError if it is not a `kind` of ours."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise TransportError(f"cannot use {path}: {error.strerror}") from None
    if stat.S_IFMT(info.st_mode) != kind:
        raise TransportError(f"{path} is not a {what}")
    # One that someone else made could be read or answered by them: refuse it.
    if info.st_uid != os.geteuid():
        raise TransportError(f"{path} belongs to uid {info.st_uid}, not to you")
    return True


# --- the socket -----------------------------------------------------------------------


def _daemon_alive(pipes_dir: str) -> bool:
    """Whether a daemon holds `saturnd.lock` (ours hold it from start to finish, also
    while the supervisor restarts a listener; other daemons have none)."""
    try:
        fd = os.open(
            os.path.join(pipes_dir, PIPES_LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _connect(pipes_dir: str) -> _socket.socket | None:
    """A connection to the daemon's socket; None when there is no daemon behind one.

    A refused connection while a daemon holds its lock is a listener being restarted:
    wait for the new one (up to OPEN_TIMEOUT) rather than fall back to the FIFOs, where
    a reply meant for another client could be read in that window.
    """
    path = os.path.join(pipes_dir, SOCKET_NAME)
    if not _ours(path, stat.S_IFSOCK, "socket"):
        return None

    def attempt() -> _socket.socket | bool | None:
        client = _connect_once(pipes_dir, path)
        if client is not None:
            return client
        return None if _daemon_alive(pipes_dir) else False  # False: no daemon, stop trying

    result = _retry(attempt, OPEN_TIMEOUT, "the daemon's listener to restart")
    return result if isinstance(result, _socket.socket) else None


def _connect_once(pipes_dir: str, path: str) -> _socket.socket | None:
    """One attempt at connecting; None when nobody accepts on the socket."""
    address, dir_fd = path, -1
    if len(os.fsencode(path)) > 107:  # beyond sun_path: through the directory's descriptor
        dir_fd = os.open(pipes_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        address = f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"
    client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        client.settimeout(OPEN_TIMEOUT)
        client.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        client.close()
        return None  # left behind by a daemon that is gone, or not yet bound again
    except OSError as error:
        client.close()
        raise TransportError(f"cannot connect to {path}: {error.strerror or error}") from None
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    _pid, uid, _gid = _peer(client)
    if uid != os.geteuid():
        client.close()
        raise TransportError(f"{path} is served by uid {uid}, not by you")
    return client


def _peer(client: _socket.socket) -> tuple[int, int, int]:
    import struct  # already loaded by saturnd.protocol: costs nothing

    pid, uid, gid = struct.unpack(
        "3i", client.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    )
    return pid, uid, gid


def _over_socket(client: _socket.socket, request: Request, reply_timeout: float) -> Reply:
    path = "the daemon's socket"
    decoder = ReplyDecoder(request.opcode)
    deadline = time.monotonic() + reply_timeout
    notice = _Notice("the daemon's reply")
    try:
        client.settimeout(reply_timeout)
        client.sendall(encode(request))
        while True:
            try:
                reply = decoder.next_message()
            except ProtocolError as error:
                raise TransportError(f"malformed reply from daemon: {error}") from None
            if reply is not NEED_DATA:
                return reply  # type: ignore[return-value]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(
                    f"no complete reply from the daemon within {reply_timeout:g} s"
                )
            client.settimeout(min(remaining, max(0.05, notice.at - time.monotonic())))
            try:
                data = client.recv(_READ_SIZE)
            except TimeoutError:
                notice.check()
                continue
            if not data:
                if decoder.buffered == 0:
                    raise NoReplyError("the daemon closed the connection without replying")
                raise TransportError(
                    f"truncated reply from daemon: it closed the connection after "
                    f"{decoder.buffered} bytes"
                )
            decoder.feed(data)
    except ConnectionResetError as error:
        # A daemon that closes with our request unread resets the connection.
        if decoder.buffered == 0:
            raise NoReplyError("the daemon reset the connection without replying") from None
        raise TransportError(f"cannot talk to {path}: {error.strerror or error}") from None
    except OSError as error:
        raise TransportError(f"cannot talk to {path}: {error.strerror or error}") from None
    finally:
        client.close()


# --- the FIFOs ------------------------------------------------------------------------


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
    notice = _Notice(f"{holder} to let go of {path}")
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

    fd = _retry(attempt, timeout, f"a daemon to read {path}")
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
            self.early = os.read(self.fd, _READ_SIZE)
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
    notice = _Notice("the daemon's reply")
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
            data = os.read(end.fd, _READ_SIZE)
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


def _over_fifos(
    pipes_dir: str, request: Request, open_timeout: float, reply_timeout: float
) -> Reply:
    request_path = os.path.join(pipes_dir, REQUEST_PIPE)
    reply_path = os.path.join(pipes_dir, REPLY_PIPE)
    for path in (request_path, reply_path):
        if not _ours(path, stat.S_IFIFO, "FIFO"):
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


# --- the exchange ---------------------------------------------------------------------


def _wait_for_stop(pipes_dir: str) -> None:
    """After TERMINATE's OK: return once the daemon has let go of `saturnd.lock` (our
    daemons hold it from start to finish; other daemons have none)."""
    path = os.path.join(pipes_dir, PIPES_LOCK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:

        def attempt() -> bool | None:
            try:
                # A shared lock is taken only once the daemon's exclusive one is gone;
                # it is let go at once (a starting daemon retries for a second).
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True

        if _retry(attempt, STOP_TIMEOUT, "the daemon to stop") is None:
            raise TransportError(
                f"the daemon acknowledged TERMINATE but still holds {pipes_dir} "
                f"after {STOP_TIMEOUT:g} s"
            )
    finally:
        os.close(fd)


def exchange(
    pipes_dir: str,
    request: Request,
    *,
    open_timeout: float = OPEN_TIMEOUT,
    reply_timeout: float = REPLY_TIMEOUT,
    fifo_request: Request | None = None,
) -> Reply:
    """Send `request` to the daemon of `pipes_dir` and return its reply.

    `fifo_request` is a course request to send instead when the FIFOs are used (LIST for
    LIST-EX). Raises `TransportError` for every failure, with a one-line message.
    """
    _check_dir(pipes_dir)
    mode = os.environ.get("CASSINI_TRANSPORT", "")
    client = None if mode == "fifo" else _connect(pipes_dir)
    if client is not None:
        reply = _over_socket(client, request, reply_timeout)
    elif fifo_request is not None and mode != "socket":
        reply = _over_fifos(pipes_dir, fifo_request, open_timeout, reply_timeout)
    elif mode == "socket" or request.opcode not in COURSE_OPCODES:
        # Our extensions never go over the FIFOs (docs/protocol.md).
        where = os.path.join(pipes_dir, SOCKET_NAME)
        if mode == "fifo":
            raise NoSocketError(f"CASSINI_TRANSPORT=fifo keeps cassini off {where}")
        raise NoSocketError(
            f"no saturnd is listening on {where} "
            "(is it running, and is it saturnd rather than a daemon with FIFOs only?)"
        )
    else:
        reply = _over_fifos(pipes_dir, request, open_timeout, reply_timeout)
    if request.opcode == OP_TERMINATE and isinstance(reply, OkReply):
        _wait_for_stop(pipes_dir)
    return reply
