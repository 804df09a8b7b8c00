"""The request loop: socket + FIFOs -> framing -> handlers -> store -> replies.

This module owns the listener process: one poll loop over the socket `saturnd.sock`
(each connection with its own decoder and its own reply), the request FIFO (the
course's contract, one exchange at a time), the wake-up pipe and a watch of the pipes
directory. What bytes make a request is `framing`'s rule; what a request means is
`handlers`'; this module only moves bytes and keeps time.

Invariants:
- Nothing blocks: every descriptor is non-blocking and every wait is the loop's poll,
  so a slow or hostile peer, on the socket or on the FIFOs, delays the others by no more
  than the store's own work for a request.
- Socket: only a peer with our uid (SO_PEERCRED) is served; others are closed and
  logged. Replies go out in request order; a connection with a reply still going out is
  not read (back-pressure). A store failure is answered `ER EM` with its reason.
- FIFOs: one exchange at a time. After a request, its reply waits at most
  REPLY_OPEN_TIMEOUT for a reader of the reply FIFO and REPLY_STALL_TIMEOUT for any
  progress, then is dropped; meanwhile the request FIFO is not read (what a FIFO can
  promise: whoever reads the reply FIFO gets the reply). A store failure sends no reply:
  the reply FIFO is opened and closed empty, so the client learns at once that nothing
  was acknowledged. No reply is ever sent for bytes that were not understood.
- A task is durable (the store returned) before its reply is queued.
- An entry deleted or replaced under us (a /tmp cleaner) is made again: the watch
  wakes the loop; without inotify, the entries are checked every IDLE_CHECK seconds.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saturnd import handlers, pipesdir, proc
from saturnd.framing import Close, Drop, FifoFraming, NeedMore, Serve, StreamFraming
from saturnd.outgoing import Outgoing
from saturnd.pipesdir import ensure_fifo
from saturnd.proc import StopFlag
from saturnd.protocol import REPLY_PIPE, REQUEST_PIPE, SOCKET_NAME, Request
from saturnd.store import StoreError

__all__ = [
    "EXIT_STOPPED",
    "EXIT_TERMINATED",
    "Listener",
    "StopFlag",
    "ensure_fifo",
]

REPLY_OPEN_TIMEOUT: Final = 1.0
"""Seconds a FIFO reply waits for the client to open the reply FIFO."""
REPLY_STALL_TIMEOUT: Final = 1.0
"""Seconds a reply (FIFO or socket) may make no progress before it is dropped."""
OPEN_RETRY: Final = 0.002
"""Seconds between two attempts to open the reply FIFO while no reader has it."""
IDLE_CHECK: Final = 30.0
"""Without inotify: how often an idle listener checks that its entries are still there."""
MAX_CONNECTIONS: Final = 256
"""Socket connections served at once; more are closed at once (and logged)."""
READ_SIZE: Final = 1 << 16
_REPLY_OPEN: Final = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC

EXIT_TERMINATED: Final = 0
"""Exit status of a listener that served TERMINATE: the daemon shuts down."""
EXIT_STOPPED: Final = 3
"""Exit status of a listener stopped by a signal."""


@dataclass(eq=False)
class _Connection:
    """One socket peer."""

    sock: socket.socket
    framing: StreamFraming
    out: Outgoing | None = None
    progress: float = 0.0  # when `out` last moved
    stop_after: bool = False  # the reply going out is TERMINATE's
    close_after: bool = False  # the reply going out is the last one
    eof: bool = False  # the peer will send nothing more


@dataclass
class _FifoReply:
    """The reply of the FIFO exchange under way; None `out`: no acknowledgement."""

    out: Outgoing | None
    since: float
    fd: int = -1
    progress: float = 0.0
    stop_after: bool = False


class Listener:
    """Serves requests until TERMINATE or a stop signal."""

    def __init__(
        self,
        pipes_dir: Path,
        store: handlers.TaskStore,
        logger: logging.Logger,
        stop: StopFlag,
        wake_fd: int | None = None,
        prepare_dir: Callable[[], None] | None = None,
    ) -> None:
        """`store` is the daemon's (runcontrol.ServedStore: the task store, plus RUN
        and KILL). `prepare_dir` creates and checks the pipes directory again if it
        vanishes (the daemon's own start-up check); without it a vanished directory is
        logged."""
        self.pipes_dir = pipes_dir
        self.request_path = pipes_dir / REQUEST_PIPE
        self.reply_path = pipes_dir / REPLY_PIPE
        self.socket_path = pipes_dir / SOCKET_NAME
        self._reply_target = os.fspath(self.reply_path)
        self.store = store
        self.log = logger
        self.stop = stop
        self.wake_fd = wake_fd
        self.prepare_dir = prepare_dir
        self.fifo = FifoFraming()
        self.fifo_reply: _FifoReply | None = None
        self.request_fd = -1
        self.request_ino = -1
        self.server: socket.socket | None = None
        self.server_ino = -1
        self.connections: dict[int, _Connection] = {}
        self.watch_fd: int | None = None
        self.last_check = time.monotonic()
        self.terminated = False

    # --- the entries of the pipes directory ----------------------------------------

    def open(self) -> None:
        """Open (making them if needed) the FIFOs and the socket; watch the directory."""
        self._open_request_fifo()
        ensure_fifo(self.reply_path, self.log)
        self._bind()
        self._watch()

    def _open_request_fifo(self) -> None:
        fd, inode = pipesdir.open_request_fifo(self.request_path, self.log)
        if self.request_fd >= 0:
            os.close(self.request_fd)
        self.request_fd, self.request_ino = fd, inode

    def _bind(self) -> None:
        server, inode = pipesdir.bind_socket(self.socket_path)
        if self.server is not None:
            self.server.close()
        self.server, self.server_ino = server, inode

    def _watch(self) -> None:
        """(Re)start the inotify watch of the pipes directory."""
        if self.watch_fd is not None:
            os.close(self.watch_fd)
        self.watch_fd = pipesdir.watch_directory(self.pipes_dir)

    def check_entries(self) -> None:
        """Make again a FIFO, the socket or the pipes directory that was deleted or
        replaced. Not fatal when it fails: what we hold open still serves the clients
        that have it, and the next event or idle check tries again."""
        self.last_check = time.monotonic()
        try:
            if not os.path.lexists(self.pipes_dir):
                if self.prepare_dir is None:
                    raise OSError(errno.ENOENT, f"{self.pipes_dir} vanished")
                self.log.warning("pipes directory %s vanished; creating it again", self.pipes_dir)
                self.prepare_dir()
                self._watch()
            if not pipesdir.is_entry(self.request_path, stat.S_IFIFO, self.request_ino):
                self.log.warning(
                    "request FIFO %s vanished or was replaced; making it again", self.request_path
                )
                self._open_request_fifo()
                self.fifo = FifoFraming()
            if not pipesdir.is_entry(self.reply_path, stat.S_IFIFO):
                self.log.warning(
                    "reply FIFO %s vanished or was replaced; making it again", self.reply_path
                )
                ensure_fifo(self.reply_path, self.log)
            if not pipesdir.is_entry(self.socket_path, stat.S_IFSOCK, self.server_ino):
                self.log.warning(
                    "socket %s vanished or was replaced; making it again", self.socket_path
                )
                self._bind()
        except (OSError, RuntimeError) as error:
            self.log.error("cannot make the entries of %s again: %s", self.pipes_dir, error)

    # --- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Serve until TERMINATE (EXIT_TERMINATED) or a stop signal (EXIT_STOPPED)."""
        if self.request_fd < 0:
            self.open()
        try:
            while not self.stop.stopping:
                self._step()
                if self.terminated and not self._terminate_pending():
                    return EXIT_TERMINATED
            return EXIT_STOPPED
        finally:
            self._close_all()

    def _step(self) -> None:
        """One poll, then everything it made possible."""
        poller = select.poll()
        for fd, events in self._interest().items():
            poller.register(fd, events)
        timeout = self._timeout(time.monotonic())
        try:
            ready = dict(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))
        except InterruptedError:  # a signal: the stop flag is looked at by the caller
            return
        if self.wake_fd is not None and self.wake_fd in ready:
            proc.drain(self.wake_fd)
        if self.watch_fd is not None and self.watch_fd in ready:
            if pipesdir.read_events(self.watch_fd):
                self._watch()  # the directory was replaced: watch the new one, if any
            self.check_entries()
        elif self.watch_fd is None and time.monotonic() - self.last_check >= IDLE_CHECK:
            self.check_entries()
            self._watch()
        if self.server is not None and self.server.fileno() in ready:
            self._accept()
        if self.request_fd in ready:
            self._read_fifo()
        for fd, connection in list(self.connections.items()):
            if fd in ready:
                self._on_connection(connection, ready[fd])
        self._advance(time.monotonic())

    def _interest(self) -> dict[int, int]:
        """The descriptors to poll, and for what."""
        interest: dict[int, int] = {}
        for fd in (self.wake_fd, self.watch_fd):
            if fd is not None and fd >= 0:
                interest[fd] = select.POLLIN
        if self.server is not None and not self.terminated:
            interest[self.server.fileno()] = select.POLLIN
        reply = self.fifo_reply
        if reply is None:
            if not self.terminated:
                interest[self.request_fd] = select.POLLIN
        elif reply.fd >= 0:
            interest[reply.fd] = select.POLLOUT
        for fd, connection in self.connections.items():
            interest[fd] = select.POLLOUT if connection.out is not None else select.POLLIN
        return interest

    def _timeout(self, now: float) -> float | None:
        """How long poll may wait: until the nearest deadline of a peer, or for ever."""
        deadlines: list[float] = []
        if self.fifo_reply is not None:
            reply = self.fifo_reply
            if reply.fd < 0:
                deadlines.append(now + OPEN_RETRY)
            else:
                deadlines.append(reply.progress + REPLY_STALL_TIMEOUT)
        elif self.fifo.deadline is not None:
            deadlines.append(self.fifo.deadline)
        for connection in self.connections.values():
            if connection.out is not None:
                deadlines.append(connection.progress + REPLY_STALL_TIMEOUT)
            else:
                deadlines.append(connection.framing.deadline)
        if self.watch_fd is None:
            deadlines.append(self.last_check + IDLE_CHECK)
        return min(deadlines) - now if deadlines else None

    def _advance(self, now: float) -> None:
        """Serve what the framers decided and move the replies on."""
        if self.fifo_reply is not None:
            self._push_fifo_reply(now)
        while self.fifo_reply is None and not self.terminated:
            step = self.fifo.next(now)
            if isinstance(step, NeedMore):
                break
            if isinstance(step, Drop):
                self.log.warning(
                    "FIFO request rejected: %s; dropped %d bytes", step.reason, step.size
                )
                continue
            self._serve_fifo(step.request, now)
        for connection in list(self.connections.values()):
            self._advance_connection(connection, now)

    # --- the FIFOs -------------------------------------------------------------------

    def _read_fifo(self) -> None:
        """Read what the request FIFO holds now into the framer, one read at a time."""
        while True:
            try:
                data = os.read(self.request_fd, READ_SIZE)
            except BlockingIOError:
                return
            if not data:  # cannot happen while we hold a write end; be safe
                return
            self.fifo.feed(data, time.monotonic())
            if len(data) < READ_SIZE:
                return  # it emptied the FIFO: no second read to be told so

    def _serve_fifo(self, request: Request, now: float) -> None:
        out, stop = self._execute(request, on_socket=False)
        self.fifo_reply = _FifoReply(out, now, stop_after=stop)
        self._push_fifo_reply(now)

    def _push_fifo_reply(self, now: float) -> None:
        reply = self.fifo_reply
        assert reply is not None
        if reply.fd < 0:
            try:
                reply.fd = os.open(self._reply_target, _REPLY_OPEN)
            except OSError as error:
                if error.errno == errno.ENXIO:  # no reader yet
                    if now >= reply.since + REPLY_OPEN_TIMEOUT:
                        self._end_fifo_reply(
                            f"reply dropped: no client opened the reply FIFO within "
                            f"{REPLY_OPEN_TIMEOUT:g} s"
                        )
                    return
                if error.errno in (errno.ENOENT, errno.ELOOP):
                    self.check_entries()
                self._end_fifo_reply(f"reply dropped: cannot open the reply FIFO ({error})")
                return
            if not stat.S_ISFIFO(os.fstat(reply.fd).st_mode):
                self.check_entries()
                self._end_fifo_reply(f"reply dropped: {self.reply_path} is not a FIFO")
                return
            reply.progress = now
        if reply.out is None:  # no acknowledgement: opened and closed empty
            self._end_fifo_reply(None)
            return
        try:
            if reply.out.push(reply.fd):
                reply.progress = now
        except OSError as error:
            self._end_fifo_reply(f"reply dropped: {_reason(error)}")
            return
        if reply.out.done:
            self._end_fifo_reply(None)
        elif now >= reply.progress + REPLY_STALL_TIMEOUT:
            self._end_fifo_reply(
                f"reply dropped: the client stopped reading "
                f"({reply.out.sent} of {reply.out.size} bytes sent)"
            )

    def _end_fifo_reply(self, problem: str | None) -> None:
        reply = self.fifo_reply
        assert reply is not None
        if problem is not None:
            self.log.warning("%s", problem)
        if reply.fd >= 0:
            os.close(reply.fd)
        if reply.out is not None:
            reply.out.close()
        self.fifo_reply = None
        if reply.stop_after:
            self.terminated = True

    # --- the socket ------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.server is not None
        while True:
            try:
                sock, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and the like: the next poll tries again
                self.log.error("cannot accept a connection: %s", _reason(error))
                return
            try:
                uid = pipesdir.peer_uid(sock)
            except OSError:
                uid = -1
            if uid != os.geteuid():
                self.log.warning("connection refused: its peer has uid %d, not ours", uid)
                sock.close()
                continue
            if len(self.connections) >= MAX_CONNECTIONS:
                self.log.warning("connection refused: %d connections already", MAX_CONNECTIONS)
                sock.close()
                continue
            sock.setblocking(False)
            self.connections[sock.fileno()] = _Connection(sock, StreamFraming(time.monotonic()))

    def _on_connection(self, connection: _Connection, events: int) -> None:
        if connection.out is None and events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = connection.sock.recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                connection.framing.feed(data, time.monotonic())
            else:
                connection.eof = True

    def _advance_connection(self, connection: _Connection, now: float) -> None:
        if connection.out is not None:
            try:
                if connection.out.push(connection.sock.fileno()):
                    connection.progress = now
            except OSError as error:
                self._close(connection, f"reply dropped: {_reason(error)}")
                return
            if not connection.out.done:
                if now >= connection.progress + REPLY_STALL_TIMEOUT:
                    self._close(connection, "reply dropped: the client stopped reading")
                return
            connection.out.close()
            connection.out = None
            connection.framing.rest(now)
            if connection.stop_after:
                self.terminated = True
            if connection.close_after or self.terminated:
                self._close(connection, None)
                return
        while connection.out is None and not self.terminated:
            step = connection.framing.next(now)
            if isinstance(step, Serve):
                out, stop = self._execute(step.request, on_socket=True)
                assert out is not None
                connection.out, connection.progress, connection.stop_after = out, now, stop
                self._advance_connection(connection, now)
                return
            if isinstance(step, Close):
                self.log.warning("connection closed: %s", step.reason)
                connection.out = Outgoing(handlers.error_message(step.reason))
                connection.progress, connection.close_after = now, True
                self._advance_connection(connection, now)
                return
            if connection.eof:  # the client is done
                problem = "connection closed inside a request" if step.deadline else None
                self._close(connection, problem if connection.framing.in_request else None)
            return

    def _close(self, connection: _Connection, problem: str | None) -> None:
        if problem is not None:
            self.log.warning("%s", problem)
        if connection.out is not None:
            connection.out.close()
        self.connections.pop(connection.sock.fileno(), None)
        connection.sock.close()

    # --- requests --------------------------------------------------------------------

    def _execute(self, request: Request, on_socket: bool) -> tuple[Outgoing | None, bool]:
        """Carry out `request`: its reply (None: not acknowledged, FIFO only) and
        whether it was TERMINATE."""
        try:
            outcome = handlers.handle(request, self.store)
            stop = isinstance(outcome, handlers.Stop)
            if isinstance(outcome, handlers.Stop):
                self.log.info("TERMINATE requested; stopping")
                outcome = outcome.reply
            return Outgoing(outcome), stop
        except (StoreError, OSError) as error:
            self.log.error("%s not acknowledged: %s", handlers.describe(request), error)
            if on_socket:
                return Outgoing(handlers.error_message(str(error))), False
            return None, False

    def _terminate_pending(self) -> bool:
        """Whether TERMINATE's reply is still going out."""
        return self.fifo_reply is not None or any(
            c.out is not None and c.stop_after for c in self.connections.values()
        )

    def _close_all(self) -> None:
        if self.fifo_reply is not None:
            self._end_fifo_reply(None)
        for connection in list(self.connections.values()):
            self._close(connection, None)
        if self.server is not None:
            self.server.close()
            self.server = None
            if pipesdir.is_entry(self.socket_path, stat.S_IFSOCK, self.server_ino):
                try:  # ours still: no daemon is behind it any more
                    os.unlink(self.socket_path)
                except OSError:
                    pass
        for fd in (self.request_fd, self.watch_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.request_fd = -1
        self.watch_fd = None


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
