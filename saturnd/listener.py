"""The request loop: request FIFO -> protocol -> handlers -> store -> reply FIFO.

This module owns the listener process. It serves one client at a time and must
survive every client:
- The request FIFO is held open read-write and non-blocking (as sysvinit does with
  /run/initctl), so a writer leaving never gives an endless EOF; we wait with select.
- Bytes are fed to the incremental decoder as they arrive; a request is served as soon
  as its bytes are complete (never waiting for the writer to close).
- A request that is malformed, too large, or not complete within REQUEST_TIMEOUT of
  its first byte is dropped and logged. To find where the next request starts, we
  resynchronise at a read boundary: the bytes of the first read of the bad request are
  dropped, and decoding starts again with the next read (clients send a request in one
  write of at most PIPE_BUF bytes, which the kernel keeps whole), so a well-behaved
  client queued behind a stalled one is served as soon as the stalled one is dropped.
  No reply is ever sent for a request that was not understood.
- Opening the reply FIFO and writing the reply are bounded by short timeouts, so a
  client that vanished or never reads costs at most about a second.
- A task is durable (store.create returned) before its OK is written. When the store
  fails, no OK is sent: the reply FIFO is opened and closed empty, so the client learns
  at once that nothing was acknowledged, and the reason is logged.
- If a FIFO is deleted or replaced under us (a /tmp cleaner), it is recreated.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saturnd import handlers
from saturnd.handlers import (
    Answer,
    CreateTask,
    ListTasks,
    ReadOutput,
    ReadRuns,
    RemoveTask,
    Terminate,
)
from saturnd.protocol import NeedData, ProtocolError, Request, RequestDecoder
from saturnd.store import Store, StoreError

REQUEST_PIPE: Final = "saturnd-request-pipe"
REPLY_PIPE: Final = "saturnd-reply-pipe"

REQUEST_TIMEOUT: Final = 1.0
"""Seconds a request may take to arrive in full after its first byte."""
REPLY_OPEN_TIMEOUT: Final = 1.0
"""Seconds to wait for the client to open the reply FIFO."""
REPLY_STALL_TIMEOUT: Final = 1.0
"""Seconds a client may leave the reply FIFO full without reading."""
IDLE_CHECK: Final = 30.0
"""When idle, wake this often to check that the FIFOs are still there."""
READ_SIZE: Final = 1 << 16

EXIT_TERMINATED: Final = 0
"""Exit status of a listener that served TERMINATE: the daemon shuts down."""
EXIT_STOPPED: Final = 3
"""Exit status of a listener stopped by a signal."""


@dataclass
class StopFlag:
    """Set from a signal handler; loops check it."""

    stopping: bool = False


def ensure_fifo(path: Path, logger: logging.Logger) -> None:
    """Make `path` a FIFO of ours, mode 0600: create it, or replace what is there.

    The directory has been checked (0700, ours), so whatever else is at `path` was put
    there by the user or a cleaner and can be replaced.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        os.mkfifo(path, 0o600)
        return
    if not stat.S_ISFIFO(info.st_mode):
        logger.warning("%s is not a FIFO; replacing it", path)
        os.unlink(path)
        os.mkfifo(path, 0o600)
        return
    if info.st_uid != os.geteuid():
        raise PermissionError(
            errno.EPERM, f"FIFO {path} is owned by uid {info.st_uid}, not by us", str(path)
        )
    if stat.S_IMODE(info.st_mode) != 0o600:
        logger.warning("tightening %s from %o to 600", path, stat.S_IMODE(info.st_mode))
        os.chmod(path, 0o600)


class Listener:
    """Serves requests until TERMINATE or a stop signal."""

    def __init__(
        self,
        pipes_dir: Path,
        store: Store,
        logger: logging.Logger,
        stop: StopFlag,
        wake_fd: int | None = None,
    ) -> None:
        self.request_path = pipes_dir / REQUEST_PIPE
        self.reply_path = pipes_dir / REPLY_PIPE
        self.store = store
        self.log = logger
        self.stop = stop
        self.wake_fd = wake_fd
        self.decoder = RequestDecoder()
        # The reads fed to the decoder since the current request began: the
        # resynchronisation points if it turns out bad.
        self.chunks: list[bytes] = []
        self.request_fd = -1
        self.request_ino = -1

    # --- the request FIFO ------------------------------------------------------

    def _open_request_fifo(self) -> None:
        ensure_fifo(self.request_path, self.log)
        fd = os.open(self.request_path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode):  # swapped between the check and the open
            os.close(fd)
            raise OSError(errno.EINVAL, f"{self.request_path} is not a FIFO")
        if self.request_fd >= 0:
            os.close(self.request_fd)
        self.request_fd = fd
        self.request_ino = info.st_ino

    def check_fifos(self) -> None:
        """Recreate a FIFO that was deleted or replaced while we ran."""
        try:
            info = os.lstat(self.request_path)
            intact = stat.S_ISFIFO(info.st_mode) and info.st_ino == self.request_ino
        except FileNotFoundError:
            intact = False
        if not intact:
            self.log.warning(
                "request FIFO %s vanished or was replaced; recreating it", self.request_path
            )
            self._open_request_fifo()
            self.decoder.reset()
            self.chunks = []
        try:
            reply_info = os.lstat(self.reply_path)
            reply_ok = stat.S_ISFIFO(reply_info.st_mode)
        except FileNotFoundError:
            reply_ok = False
        if not reply_ok:
            self.log.warning(
                "reply FIFO %s vanished or was replaced; recreating it", self.reply_path
            )
            ensure_fifo(self.reply_path, self.log)

    def _read_available(self) -> bool:
        """Read everything the FIFO holds now into the decoder; True if bytes came."""
        got = False
        while True:
            try:
                data = os.read(self.request_fd, READ_SIZE)
            except BlockingIOError:
                return got
            if not data:  # cannot happen while we hold a write end; be safe
                return got
            self.chunks.append(data)
            self.decoder.feed(data)
            got = True

    # --- the loop --------------------------------------------------------------

    def run(self) -> int:
        """Serve until TERMINATE (EXIT_TERMINATED) or a stop signal (EXIT_STOPPED)."""
        self._open_request_fifo()
        ensure_fifo(self.reply_path, self.log)
        request_deadline: float | None = None
        last_check = time.monotonic()
        try:
            while not self.stop.stopping:
                now = time.monotonic()
                if request_deadline is not None:
                    timeout = max(0.0, request_deadline - now)
                else:
                    timeout = max(0.0, last_check + IDLE_CHECK - now)
                fds = [self.request_fd] if self.wake_fd is None else [self.request_fd, self.wake_fd]
                readable, _, _ = select.select(fds, [], [], timeout)
                if self.wake_fd is not None and self.wake_fd in readable:
                    _drain(self.wake_fd)
                if self.request_fd in readable and self._read_available():
                    if request_deadline is None:
                        request_deadline = time.monotonic() + REQUEST_TIMEOUT
                    status = self._serve_complete_requests()
                    if status is not None:
                        return status
                    if not self.decoder.in_message:
                        request_deadline = None
                elif request_deadline is not None and time.monotonic() >= request_deadline:
                    self.log.warning(
                        "request rejected: incomplete after %.1f s (%d bytes); dropped",
                        REQUEST_TIMEOUT,
                        self.decoder.buffered,
                    )
                    self._resync()
                    status = self._serve_complete_requests()
                    if status is not None:
                        return status
                    request_deadline = (
                        time.monotonic() + REQUEST_TIMEOUT if self.decoder.in_message else None
                    )
                if time.monotonic() - last_check >= IDLE_CHECK:
                    self.check_fifos()
                    last_check = time.monotonic()
            return EXIT_STOPPED
        finally:
            if self.request_fd >= 0:
                os.close(self.request_fd)
                self.request_fd = -1

    def _serve_complete_requests(self) -> int | None:
        """Serve every complete request in the buffer; an exit status after TERMINATE."""
        while True:
            try:
                message = self.decoder.next_message()
            except ProtocolError as error:
                dropped = len(self.chunks[0]) if self.chunks else 0
                self.log.warning("request rejected: %s; dropped %d bytes", error, dropped)
                self._resync()
                continue
            if isinstance(message, NeedData):
                return None
            leftover = self.decoder.unconsumed()
            self.chunks = [leftover] if leftover else []
            if self.serve(message):
                return EXIT_TERMINATED

    def _resync(self) -> None:
        """Drop the first read of the bad request; decode again from the next read."""
        if self.chunks:
            self.chunks.pop(0)
        self.decoder.reset()
        for chunk in self.chunks:
            self.decoder.feed(chunk)

    def serve(self, request: Request) -> bool:
        """Carry out one request and reply; True if it was TERMINATE."""
        action = handlers.decide(request, self.store.tasks)
        reply: bytes | None
        if isinstance(action, Answer):
            reply = action.data
        elif isinstance(action, ListTasks):
            reply = self.store.list_reply()
        elif isinstance(action, CreateTask):
            reply = self._create(action)
        elif isinstance(action, RemoveTask):
            reply = self._remove(action.task_id)
        elif isinstance(action, ReadRuns):
            reply = self._read(
                lambda: handlers.reply_runs(self.store.times_exitcodes_body(action.task_id)),
                request,
            )
        elif isinstance(action, ReadOutput):
            reply = self._read(
                lambda: handlers.reply_output(self.store.output(action.task_id, action.stream)),
                request,
            )
        else:
            assert isinstance(action, Terminate)
            self.log.info("TERMINATE requested; stopping")
            self.send(handlers.OK)
            return True
        self.send(reply)
        return False

    def _create(self, action: CreateTask) -> bytes | None:
        try:
            task_id = self.store.create(action.timing, action.argv)
        except StoreError as error:
            self.log.error("CREATE not acknowledged: %s", error)
            return None
        return handlers.reply_created(task_id)

    def _remove(self, task_id: int) -> bytes | None:
        try:
            removed = self.store.remove(task_id)
        except StoreError as error:
            self.log.error("REMOVE %d not acknowledged: %s", task_id, error)
            return None
        return handlers.OK if removed else handlers.NOT_FOUND

    def _read(self, build: Callable[[], bytes], request: Request) -> bytes | None:
        try:
            return build()
        except OSError as error:
            self.log.error("%s failed: %s", handlers.describe(request), error)
            return None

    # --- the reply FIFO --------------------------------------------------------

    def send(self, reply: bytes | None) -> bool:
        """Write one whole reply (or, for None, open and close: no acknowledgement).

        Bounded: at most REPLY_OPEN_TIMEOUT for the client to open its end, and
        REPLY_STALL_TIMEOUT without progress while writing.
        """
        deadline = time.monotonic() + REPLY_OPEN_TIMEOUT
        while True:
            try:
                fd = os.open(
                    self.reply_path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
                )
                break
            except OSError as error:
                if error.errno == errno.ENXIO and time.monotonic() < deadline:
                    time.sleep(0.002)
                    continue
                if error.errno in (errno.ENOENT, errno.ELOOP):
                    self.check_fifos()
                self.log.warning(
                    "reply dropped: client never opened the reply FIFO (%s)",
                    os.strerror(error.errno or 0),
                )
                return False
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                self.log.warning("reply dropped: %s is not a FIFO", self.reply_path)
                return False
            return reply is None or self._write_all(fd, reply)
        finally:
            os.close(fd)

    def _write_all(self, fd: int, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                _, writable, _ = select.select([], [fd], [], REPLY_STALL_TIMEOUT)
                if not writable:
                    self.log.warning(
                        "reply dropped: client stopped reading (%d of %d bytes sent)",
                        len(data) - len(view),
                        len(data),
                    )
                    return False
                continue
            except BrokenPipeError:
                self.log.warning("reply dropped: client closed the reply FIFO")
                return False
            view = view[written:]
        return True


def _drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
