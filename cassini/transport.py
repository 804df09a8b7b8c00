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

The FIFOs are fifos.py's; the limits and errors, transportcommon.py's.

Everywhere:
- Nothing waits for ever, and a client on a terminal says what it waits for
  (transportcommon.py).
- After TERMINATE's `OK`, `exchange` returns once the daemon has let go of the pipes
  directory (`saturnd.lock` free), so `cassini -q && saturnd` starts a new daemon.
- Every failure is a `TransportError` whose message is one line without the program
  name; the caller prefixes it.
"""

from __future__ import annotations

# _socket rather than socket: socket.py imports enum, a few ms of every cassini start.
import _socket
import fcntl
import os
import stat
import time

from cassini.fifos import LOCK_NAME, over_fifos
from cassini.transportcommon import (
    LOCK_TIMEOUT,
    OPEN_TIMEOUT,
    READ_SIZE,
    REOPEN_GRACE,
    REPLY_TIMEOUT,
    STOP_TIMEOUT,
    NoReplyError,
    NoSocketError,
    Notice,
    TransportError,
    check_dir,
    ours,
    retry,
)
from saturnd.decoding import ReplyDecoder
from saturnd.protocol import (
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
    from saturnd.protocol import Reply, Request

__all__ = [
    "LOCK_NAME",
    "LOCK_TIMEOUT",
    "OPEN_TIMEOUT",
    "REOPEN_GRACE",
    "REPLY_PIPE",
    "REPLY_TIMEOUT",
    "REQUEST_PIPE",
    "NoReplyError",
    "NoSocketError",
    "TransportError",
    "exchange",
]


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
    if not ours(path, stat.S_IFSOCK, "socket"):
        return None

    def attempt() -> _socket.socket | bool | None:
        client = _connect_once(pipes_dir, path)
        if client is not None:
            return client
        return None if _daemon_alive(pipes_dir) else False  # False: no daemon, stop trying

    result = retry(attempt, OPEN_TIMEOUT, "the daemon's listener to restart")
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
    notice = Notice("the daemon's reply")
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
                data = client.recv(READ_SIZE)
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

        if retry(attempt, STOP_TIMEOUT, "the daemon to stop") is None:
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
    check_dir(pipes_dir)
    mode = os.environ.get("CASSINI_TRANSPORT", "")
    client = None if mode == "fifo" else _connect(pipes_dir)
    if client is not None:
        reply = _over_socket(client, request, reply_timeout)
    elif fifo_request is not None and mode != "socket":
        reply = over_fifos(pipes_dir, fifo_request, open_timeout, reply_timeout)
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
        reply = over_fifos(pipes_dir, request, open_timeout, reply_timeout)
    if request.opcode == OP_TERMINATE and isinstance(reply, OkReply):
        _wait_for_stop(pipes_dir)
    return reply
