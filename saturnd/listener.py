"""The request loop: request FIFO -> protocol -> handlers -> store -> reply FIFO.

This module owns the listener process. It serves one client at a time and must
survive every client:
- The request FIFO is held open read-write and non-blocking (as sysvinit does with
  /run/initctl), so a writer leaving never gives an endless EOF; we wait with poll.
- Bytes are fed to the incremental decoder as they arrive; a request is served as soon
  as its bytes are complete (never waiting for the writer to close).
- A request that is malformed, too large, or not complete within REQUEST_TIMEOUT of
  the read that brought its first byte is dropped and logged. To find where the next
  request starts, we resynchronise at a read boundary: the bytes of the first read of
  the bad request are dropped, and decoding starts again with the next read (clients
  send a request in one write of at most PIPE_BUF bytes, which the kernel keeps whole),
  so a well-behaved client queued behind a stalled one is served as soon as the stalled
  one is dropped. No reply is ever sent for a request that was not understood.
- Opening the reply FIFO and writing the reply are bounded by short timeouts, so a
  client that vanished or never reads costs at most about a second.
- A run history (TIMES_EXITCODES) is never read whole into memory: beyond SMALL_REPLY
  bytes, `OK` and NBRUNS are written, then the counted runs go from the file to the
  reply FIFO with sendfile, under the same rules as any write (non-blocking, the same
  timeouts, abandoned the same way). Where sendfile is refused, the rest is read and
  written in pieces from the same bytes of the same file, which an append never
  touches (Store.open_runs), so the client gets the same bytes either way.
- A task is durable (store.create returned) before its OK is written. When the store
  fails, no OK is sent: the reply FIFO is opened and closed empty, so the client learns
  at once that nothing was acknowledged, and the reason is logged in one line.
- If a FIFO is deleted or replaced under us (a /tmp cleaner), it is recreated at once:
  an inotify watch on the pipes directory wakes the loop when an entry is created,
  deleted or renamed, so an idle listener needs no periodic wake-up. Where inotify is
  missing, the FIFOs are checked every IDLE_CHECK seconds instead. A pipes directory
  that vanished is created again (checked like at start) when the daemon says how.

Whose request is this? The protocol cannot tell two replies apart, so a reply written
while another client reads the reply FIFO is that client's answer. cassini holds
cassini.lock for its whole exchange, opens the request FIFO for writing only once it
holds the lock and has seen the FIFO empty (through a read end), writes its request in
one write and keeps the FIFO open until its reply; /proc/locks
names the holder of the lock and /proc/PID/fd shows what it has open. (Reading
/proc/locks waits for an RCU grace period in the kernel after a quiet moment, 5-16 ms
here, so our cassini also takes a shared POSIX lock while it holds the flock: one
fcntl(F_GETLK) names it, and its fdinfo's lock lines confirm it holds the flock; a
process with only the POSIX lock is not taken for the holder.) So each read of
the request FIFO is attributed: to the lock's holder if it has the request FIFO open
for writing, to NOBODY if the lock is free, NOT_THE_HOLDER otherwise (UNKNOWN without
/proc), and these rules follow:
- A reply goes out only while the lock is held by the process its request is
  attributed to, which has written no second request since. A cassini that let go of
  the lock is gone: its reply is dropped. When nobody held it, the requester is a client
  without the lock (or a dead one): the listener takes the lock itself, at the read that
  found it free (one flock, which also names nobody without reading /proc/locks), and
  keeps it until that request is answered, waiting at most LOCKLESS_OPEN_TIMEOUT for
  the client's reader, so no cassini starts an exchange and reads the reply; it lets go
  before waiting for more bytes. The lock is checked again at every attempt to open the
  reply FIFO, and a reply being written is abandoned when its client's exchange ends.
- The lock is looked at again once the reply FIFO is open: a client that let go of it
  in between (it died after writing) left the reader to the next cassini, which took
  the lock and opened the FIFO meanwhile. That reply is dropped, and its write end kept
  open, unused, until the next open of the FIFO: closed at once, it would show that
  cassini a writer come and gone (a hang-up, the end of a reply it never got).
- A request whose bytes span reads, the last one from a cassini under way, is a stalled
  writer's bytes glued to that cassini's request when the first read was not that
  cassini's, or when the request is small enough to have been one of its writes (a
  cassini writes a request of up to PIPE_BUF bytes in one write, and may have opened
  the FIFO before the stalled bytes were read). It is dropped like a malformed one, at
  once, even while still incomplete if the cassini's read is a whole request by itself,
  and the cassini's request is served from its own read.
- A request that ends inside a read from a cassini under way, where that read ends
  with a whole request begun inside it, is a stalled writer's bytes completed by the
  start of the cassini's request, read at once with it (a CREATE whose string took
  its first bytes): dropped, and the whole request at the end is served. (Bytes the
  two make exactly one request of cannot be told apart: cassini writes only into an
  empty request FIFO, so that they are read apart.)
- When a read that is dropped may hold the request of the client under way (a writer of
  junk and the client wrote before one read took both), its tail is served if it is
  exactly one whole request (never TERMINATE): a client's request is whole and last in
  the read that caught it.
- A listener that starts while a client holds the lock and sends nothing for
  ORPHAN_GRACE is looking at a client whose request died with the previous listener
  (killed after reading it): that client would wait for its reply, holding the lock,
  until its own timeout (30 s), and every other client with it. The listener opens the
  reply FIFO and closes it empty, as for a request it could not store: that client fails
  at once, and the others go on.
What remains is a protocol limit: a client that writes a request without cassini.lock
while a cassini exchange is under way cannot be told from that cassini (RELIABILITY.md).
Without /proc, the first rule falls back to the flock alone: a free lock is taken while
waiting for a missing reader, and a missing reader while another process holds the lock
means the reply is not that process's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import select
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, Union

from saturnd import handlers, protocol
from saturnd.handlers import (
    Answer,
    CreateTask,
    ListTasks,
    ReadOutput,
    ReadRuns,
    RemoveTask,
    Terminate,
)
from saturnd.proc import StopFlag
from saturnd.protocol import NeedData, ProtocolError, Request, RequestDecoder
from saturnd.records import RUN_SIZE, RUNS_HEAD_SIZE
from saturnd.store import Store, StoreError

REQUEST_PIPE: Final = "saturnd-request-pipe"
REPLY_PIPE: Final = "saturnd-reply-pipe"
CLIENT_LOCK: Final = "cassini.lock"
"""The lock every cassini holds for a whole exchange (cassini/transport.py)."""

REQUEST_TIMEOUT: Final = 1.0
"""Seconds a request may take to arrive in full after the read of its first byte."""
REPLY_OPEN_TIMEOUT: Final = 1.0
"""Seconds to wait for the client to open the reply FIFO."""
LOCKLESS_OPEN_TIMEOUT: Final = 0.5
"""The same, for a client that wrote without cassini.lock (or died): the listener
holds the lock meanwhile and every cassini waits, and such a client opens the reply
FIFO right after writing, if it is alive."""
REPLY_STALL_TIMEOUT: Final = 1.0
"""Seconds a client may leave the reply FIFO full without reading."""
HOLDER_SETTLE: Final = 0.1
"""Seconds a reply waits at most for its client, still running, to be seen asleep
waiting for it (or to send a request of its own, which makes this one stale)."""
HOLDER_POLL: Final = 0.0002
"""Seconds between two looks at a running client (see HOLDER_SETTLE)."""
ORPHAN_GRACE: Final = 0.5
"""Seconds a client holding cassini.lock at start-up may take to send its request."""
IDLE_CHECK: Final = 30.0
"""Without inotify: how often an idle listener checks that the FIFOs are still there."""
READ_SIZE: Final = 1 << 16
WHOLE_WRITE: Final = select.PIPE_BUF
"""Largest request a client writes in one piece that the kernel keeps whole."""
_PROC_LOCKS_READ: Final = 1 << 16
"""Bytes asked of /proc/locks at once (a few lines of some 60 bytes, as a rule)."""
SMALL_REPLY: Final = select.PIPE_BUF
"""A TIMES_EXITCODES reply up to this size is read and written in one write (whole in
the pipe, and cheaper than a write plus a sendfile below 4-8 KB); a larger one is sent
from the file, so the listener's memory does not grow with the history."""
_REPLY_OPEN: Final = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
"""How the reply FIFO is opened: for writing, never waiting for a reader (ENXIO)."""
_NO_SENDFILE: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
"""Errors of sendfile that mean "not between these two files": read and write instead."""

EXIT_TERMINATED: Final = 0
"""Exit status of a listener that served TERMINATE: the daemon shuts down."""
EXIT_STOPPED: Final = 3
"""Exit status of a listener stopped by a signal."""

_OPCODES: Final = frozenset(
    {
        protocol.OP_LIST,
        protocol.OP_CREATE,
        protocol.OP_REMOVE,
        protocol.OP_TIMES_EXITCODES,
        protocol.OP_STDOUT,
        protocol.OP_STDERR,
    }
)
"""Requests a dropped read's tail may be served as: every one but TERMINATE."""
_TAIL_ATTEMPTS: Final = 64

# inotify(7): entries created, deleted or renamed in the pipes directory, and the
# directory itself going away (then the watch ends with IN_IGNORED).
_IN_MOVED_FROM: Final = 0x40
_IN_MOVED_TO: Final = 0x80
_IN_CREATE: Final = 0x100
_IN_DELETE: Final = 0x200
_IN_DELETE_SELF: Final = 0x400
_IN_MOVE_SELF: Final = 0x800
_IN_IGNORED: Final = 0x8000
_IN_ONLYDIR: Final = 0x01000000
_IN_DONT_FOLLOW: Final = 0x02000000
_WATCH_MASK: Final = (
    _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
    | _IN_DONT_FOLLOW
)
_WATCH_GONE: Final = _IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF
_EVENT: Final = struct.Struct("=iIII")  # wd, mask, cookie, len; then len bytes of name


NOBODY: Final = 0
"""No process holds cassini.lock."""
UNKNOWN: Final = -1
"""Who holds cassini.lock cannot be told (no /proc/locks, no lock file)."""
NOT_THE_HOLDER: Final = -2
"""The holder of cassini.lock had not opened the request FIFO: these are not its bytes."""


@dataclass(frozen=True, slots=True)
class FileReply:
    """A reply whose bulk comes from a file: `head`, then the `length` bytes of the open
    file `fd` from `offset`, which must not change while they are sent. `send` closes
    `fd`, whatever happens."""

    head: bytes
    fd: int
    offset: int
    length: int

    @property
    def size(self) -> int:
        """Bytes of the whole reply."""
        return len(self.head) + self.length


Outgoing = Union[bytes, FileReply, None]
"""What `send` takes: the reply's bytes, a FileReply, or None (no acknowledgement)."""


class _Read(NamedTuple):
    """The bytes of one read of the request FIFO, when they arrived, and who could have
    written them while holding cassini.lock: a pid, NOBODY, UNKNOWN or NOT_THE_HOLDER.
    (A named tuple: made at every read, and a frozen dataclass costs ten times more.)"""

    data: bytes
    at: float
    holder: int


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


def watch_directory(path: Path) -> int | None:
    """An inotify descriptor that becomes readable when an entry of `path` is created,
    deleted or renamed, or `path` itself goes; None where inotify is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None
    if add(fd, os.fsencode(path), ctypes.c_uint32(_WATCH_MASK)) < 0:
        os.close(fd)
        return None
    return int(fd)


class Listener:
    """Serves requests until TERMINATE or a stop signal."""

    def __init__(
        self,
        pipes_dir: Path,
        store: Store,
        logger: logging.Logger,
        stop: StopFlag,
        wake_fd: int | None = None,
        prepare_dir: Callable[[], None] | None = None,
    ) -> None:
        """`prepare_dir` creates and checks the pipes directory again if it vanishes
        (the daemon's own start-up check); without it a vanished directory is logged."""
        self.pipes_dir = pipes_dir
        self.request_path = pipes_dir / REQUEST_PIPE
        self.reply_path = pipes_dir / REPLY_PIPE
        self._reply_target = os.fspath(self.reply_path)  # once, not at every reply
        self.lock_path = pipes_dir / CLIENT_LOCK
        self.store = store
        self.log = logger
        self.stop = stop
        self.wake_fd = wake_fd
        self.prepare_dir = prepare_dir
        self.decoder = RequestDecoder()
        # The reads fed to the decoder since the current request began (the first may
        # be the rest of a read that ended a request): the resynchronisation points.
        self.chunks: list[_Read] = []
        self.request_fd = -1
        self.request_ino = -1
        self.watch_fd: int | None = None
        self.lock_fd = -1
        # Whether we hold cassini.lock now: taken when a read finds it free (see
        # _writer_holding_lock), or while waiting for a lockless client's reader.
        self.lock_held = False
        self.lock_key = b""  # how /proc/locks names cassini.lock (see _lock_file)
        self.lock_ident = (-1, -1)  # its device and inode
        self.proc_locks_fd = -1
        # A write end of the reply FIFO opened for a client that let go of cassini.lock
        # meanwhile: kept, unused, until the next open (see _send).
        self.parked_reply = -1
        self.last_check = time.monotonic()
        # Cleared for good the first time sendfile is refused (see FileReply's sending).
        self.use_sendfile = hasattr(os, "sendfile")

    # --- the FIFOs and their directory ---------------------------------------------

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

    def _watch(self) -> None:
        """(Re)start the inotify watch of the pipes directory."""
        if self.watch_fd is not None:
            os.close(self.watch_fd)
        self.watch_fd = watch_directory(self.pipes_dir)

    def check_fifos(self) -> None:
        """Recreate a FIFO (or the pipes directory) that was deleted or replaced."""
        self.last_check = time.monotonic()
        try:
            self._check_fifos()
        except (OSError, RuntimeError) as error:
            # Not fatal: the FIFO we hold still works for clients that have it open,
            # and the next event or idle check tries again.
            self.log.error("cannot recreate the FIFOs in %s: %s", self.pipes_dir, error)

    def _check_fifos(self) -> None:
        if not os.path.lexists(self.pipes_dir):
            if self.prepare_dir is None:
                raise OSError(errno.ENOENT, f"{self.pipes_dir} vanished")
            self.log.warning("pipes directory %s vanished; creating it again", self.pipes_dir)
            self.prepare_dir()
            self._watch()
            self._close_lock()
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

    def _on_directory_event(self) -> None:
        """Something changed in the pipes directory: look at the FIFOs again."""
        assert self.watch_fd is not None
        gone = False
        try:
            while True:
                data = os.read(self.watch_fd, 4096)
                offset = 0
                while offset + _EVENT.size <= len(data):
                    _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                    gone = gone or bool(mask & _WATCH_GONE)
                    offset += _EVENT.size + length
        except BlockingIOError:
            pass
        if gone:
            self._watch()  # the directory was replaced: watch the new one, if any
        self.check_fifos()

    def _read_available(self) -> None:
        """Read everything the FIFO holds now into the decoder, noting for each read who
        held cassini.lock (each read: a client may have taken it in between).

        A read that did not fill its buffer emptied the FIFO: no second read to be told
        so (EAGAIN); bytes written after it make the next select return at once."""
        while True:
            try:
                data = os.read(self.request_fd, READ_SIZE)
            except BlockingIOError:
                return
            if not data:  # cannot happen while we hold a write end; be safe
                return
            self.chunks.append(_Read(data, time.monotonic(), self._writer_holding_lock()))
            self.decoder.feed(data)
            if len(data) < READ_SIZE:
                return

    # --- cassini.lock ----------------------------------------------------------------

    def _lock_file(self) -> int:
        """Our descriptor of cassini.lock (created like cassini does), or -1."""
        if self.lock_fd < 0:
            try:
                self.lock_fd = os.open(
                    self.lock_path,
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError:
                return -1  # another user's file, a symlink: the rules cannot apply
            try:
                info = os.fstat(self.lock_fd)
            except OSError:
                self._close_lock()
                return -1
            self.lock_ident = (info.st_dev, info.st_ino)
            # How /proc/locks names this file: "MAJOR:MINOR:INODE", hexadecimal device.
            self.lock_key = b"%02x:%02x:%d" % (
                os.major(info.st_dev),
                os.minor(info.st_dev),
                info.st_ino,
            )
        return self.lock_fd

    def _close_lock(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
        self.lock_held = False

    def _take_client_lock(self) -> bool | None:
        """Take cassini.lock if it is free: True (we hold it), False (another process
        holds it), None (no lock file can be used)."""
        if self.lock_held:
            return True
        fd = self._lock_file()
        if fd < 0:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        self.lock_held = True
        return True

    def _release_client_lock(self) -> None:
        if self.lock_held and self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        self.lock_held = False

    def _lock_holder(self) -> int:
        """The pid holding cassini.lock, NOBODY, or UNKNOWN (read from /proc/locks,
        whose FLOCK lines name the holder and the file's device and inode)."""
        fd = self._lock_file()
        if fd < 0:
            return UNKNOWN
        # Our cassini also holds a POSIX lock while it holds the flock: one fcntl names
        # it, and its own fdinfo confirms the flock. Other clients: /proc/locks.
        candidate = _posix_lock_holder(fd)
        if candidate > 0 and self._holds_client_lock(candidate):
            return candidate
        try:
            text = self._read_proc_locks()
        except OSError:
            return UNKNOWN
        key = self.lock_key
        if key not in text:
            return NOBODY  # the common case of a free lock: no line to split
        for line in text.splitlines():
            # "1: FLOCK  ADVISORY  WRITE 2166 fe:00:2146320 0 EOF"; waiters have "->".
            fields = line.split()
            if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == key:
                try:
                    return int(fields[4])
                except ValueError:
                    return UNKNOWN
        return NOBODY

    def _read_proc_locks(self) -> bytes:
        """/proc/locks as it is now, through a descriptor kept open: `pread` at offset 0
        makes the kernel generate it afresh, in one call where opening the file each
        time took seven (py-spy: 18 % of the listener's time under a LIST load)."""
        if self.proc_locks_fd < 0:
            self.proc_locks_fd = os.open("/proc/locks", os.O_RDONLY | os.O_CLOEXEC)
        chunks = []
        offset = 0
        while True:
            chunk = os.pread(self.proc_locks_fd, _PROC_LOCKS_READ, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            if len(chunk) <= _PROC_LOCKS_READ // 2:
                # The kernel fills a read with whole lines while more remain (a line
                # is some 60 bytes): a read this short reached the end.
                break
        return b"".join(chunks)

    def _writer_holding_lock(self) -> int:
        """Who may have written what was just read, as far as cassini.lock tells: its
        holder if that process has the request FIFO open for writing (a cassini holds
        the lock while it writes, and opens the FIFO only once it holds the lock),
        NOT_THE_HOLDER if it has not, NOBODY, or UNKNOWN.

        A free lock is taken at once (one flock, no /proc/locks: the common case of a
        client without the lock) and kept until this read's requests are answered,
        which the reply to a lockless client needs anyway (see _reply_allowed); the
        loop lets go of it before it waits again."""
        taken = self._take_client_lock()
        if taken:
            return NOBODY
        if taken is None:
            return UNKNOWN
        holder = self._lock_holder()
        if holder > NOBODY and self._holds_request_fifo(holder) is False:
            return NOT_THE_HOLDER
        return holder

    def _client_exchange_under_way(self) -> bool:
        """True when some client holds cassini.lock right now."""
        if self.lock_held:
            return False
        held = self._take_client_lock()
        if held:
            self._release_client_lock()
        return held is False

    # --- the loop ------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating them if needed) the FIFOs, and watch their directory."""
        self._open_request_fifo()
        ensure_fifo(self.reply_path, self.log)
        self._watch()

    def release_orphaned_client(self) -> None:
        """Fail, at once, a client left waiting by a previous listener (see the module
        docstring): it holds cassini.lock and sends nothing within ORPHAN_GRACE."""
        deadline = time.monotonic() + ORPHAN_GRACE
        while self._client_exchange_under_way():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fd = self._open_reply()
                if fd is not None:
                    os.close(fd)
                    self.log.warning(
                        "a client was waiting for a reply lost with the previous listener; "
                        "told it no reply is coming"
                    )
                return
            readable, _, _ = select.select([self.request_fd], [], [], min(remaining, 0.05))
            if readable:
                return  # it is sending: served as usual

    def run(self) -> int:
        """Serve until TERMINATE (EXIT_TERMINATED) or a stop signal (EXIT_STOPPED)."""
        if self.request_fd < 0:
            self.open()
        self.release_orphaned_client()
        polled: tuple[int | None, ...] = ()
        poller = select.poll()
        try:
            while not self.stop.stopping:
                # A poll object registered once (again when a descriptor changes): an
                # exchange costs one poll of it rather than three fd_sets to build.
                watched = (self.request_fd, self.wake_fd, self.watch_fd)
                if watched != polled:
                    poller = select.poll()
                    for fd in watched:
                        if fd is not None and fd >= 0:
                            poller.register(fd, select.POLLIN)
                    polled = watched
                timeout = self._timeout()
                readable = [
                    fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)
                ]
                if self.wake_fd is not None and self.wake_fd in readable:
                    _drain(self.wake_fd)
                if self.watch_fd is not None and self.watch_fd in readable:
                    self._on_directory_event()
                if self.request_fd in readable:
                    self._read_available()
                status = self._serve_complete_requests()
                if status is not None:
                    return status
                self._release_client_lock()  # if a read took it, its request waits for bytes
                if self.watch_fd is None and time.monotonic() - self.last_check >= IDLE_CHECK:
                    self.check_fifos()
                    if self.watch_fd is None:
                        self._watch()
            return EXIT_STOPPED
        finally:
            for fd in (self.request_fd, self.watch_fd, self.lock_fd, self.parked_reply):
                if fd is not None and fd >= 0:
                    os.close(fd)
            self.request_fd = self.lock_fd = self.parked_reply = -1
            self.watch_fd = None

    def _timeout(self) -> float | None:
        """How long select may wait: until the pending request times out, until the
        next idle check without inotify, or (idle, watched) for ever."""
        now = time.monotonic()
        limits = []
        if self.chunks:
            limits.append(self.chunks[0].at + REQUEST_TIMEOUT - now)
        if self.watch_fd is None:
            limits.append(self.last_check + IDLE_CHECK - now)
        return max(0.0, min(limits)) if limits else None

    def _serve_complete_requests(self) -> int | None:
        """Serve every complete request in the buffer, drop bad and timed-out ones;
        an exit status after TERMINATE."""
        while True:
            try:
                message = self.decoder.next_message()
            except ProtocolError as error:
                self._reject(str(error))
                continue
            if isinstance(message, NeedData):
                if self.chunks and time.monotonic() >= self.chunks[0].at + REQUEST_TIMEOUT:
                    self._reject(
                        f"incomplete after {REQUEST_TIMEOUT:.1f} s ({self.decoder.buffered} bytes)"
                    )
                    continue
                if self._stalled_before_a_client():
                    # A client's whole request came while this one waits: it is stalled.
                    self._reject(
                        f"incomplete ({self.decoder.buffered} bytes) when another client's "
                        "request arrived"
                    )
                    continue
                return None
            size = sum(len(read.data) for read in self.chunks) - self.decoder.pending
            if self._glued(size):
                self._reject(
                    f"its {size} bytes came in more than one read, the last one from a "
                    "client under way (a stalled writer's bytes glued to its request)"
                )
                continue
            if self._swallowed(size):
                self._reject(
                    f"its {size} bytes end inside a read from a client under way that ends "
                    "with a whole request begun inside them (a stalled writer's bytes read "
                    "at once with that client's request)"
                )
                continue
            holder = self.chunks[0].holder
            self._advance(size)
            if self.serve(message, holder):
                return EXIT_TERMINATED

    def _glued(self, size: int) -> bool:
        """Whether the first `size` bytes of the reads (a request, or the start of one)
        are a stalled writer's bytes followed by those of a cassini under way: they
        span reads, and the last read came from the holder of cassini.lock while the
        first did not. A cassini writes a request of at most WHOLE_WRITE bytes in one
        write; a client without the lock may write one in pieces, and is left alone."""
        if not self.chunks or size <= len(self.chunks[0].data):
            return False
        first, last, total = self.chunks[0], self.chunks[0], 0
        for read in self.chunks:
            last = read
            total += len(read.data)
            if total >= size:
                break
        if first.holder == UNKNOWN or last.holder == UNKNOWN:
            # Without /proc/locks: any request that spans reads while a client is
            # under way, if it is small enough to have been one whole write.
            return size <= WHOLE_WRITE and self._client_exchange_under_way()
        # The holder may have opened the request FIFO, not yet written, when the stalled
        # bytes were read (so they were attributed to it too): a request it could have
        # written in one write cannot span reads either.
        return last.holder > NOBODY and (first.holder != last.holder or size <= WHOLE_WRITE)

    def _swallowed(self, size: int) -> bool:
        """Whether the request in the first `size` bytes of the first read is a stalled
        writer's bytes completed by the start of a cassini's request read at once with
        them: the read came from a cassini under way, goes on past the request, and ends
        with a whole request that begins inside it. A cassini's request is whole and
        last in the read that caught it, unless a writer without the lock wrote after it
        (its bytes then end the read, and do not make a whole request with ours)."""
        if not self.chunks:
            return False
        first = self.chunks[0]
        if size >= len(first.data):
            return False
        if first.holder <= NOBODY and not (
            first.holder == UNKNOWN and self._client_exchange_under_way()
        ):
            return False
        tail = _whole_request_at_end(first.data)
        return bool(tail) and len(first.data) - len(tail) < size

    def _stalled_before_a_client(self) -> bool:
        """Whether the incomplete request at the head of the reads is a stalled
        writer's: a later read came from a cassini under way, and either the first did
        not, or that later read is by itself one whole request (the cassini's)."""
        if len(self.chunks) < 2:
            return False
        first, last = self.chunks[0], self.chunks[-1]
        if first.holder == UNKNOWN or last.holder == UNKNOWN:
            # Without /proc/locks: as _glued, a client under way and a whole request.
            return self._glued(len(first.data) + 1)
        if last.holder <= NOBODY:
            return False
        if first.holder != last.holder:
            return True
        try:
            protocol.decode_request(last.data)
        except ProtocolError:
            return False
        return True

    def _advance(self, size: int) -> None:
        """Forget the first `size` bytes of the reads: a request that was served."""
        while size:
            first = self.chunks[0]
            if len(first.data) <= size:
                size -= len(first.data)
                self.chunks.pop(0)
            else:
                self.chunks[0] = _Read(first.data[size:], first.at, first.holder)
                size = 0

    def _reject(self, reason: str) -> None:
        """Drop the first read of a bad request (or all but a whole request at its end)
        and decode again from what follows."""
        dropped = self.chunks.pop(0) if self.chunks else _Read(b"", 0.0, UNKNOWN)
        tail = b""
        if len(dropped.data) > 2 and self._client_exchange_under_way():
            tail = _whole_request_at_end(dropped.data)
        self.log.warning(
            "request rejected: %s; dropped %d bytes%s",
            reason,
            len(dropped.data) - len(tail),
            f" (serving the {len(tail)} bytes after them)" if tail else "",
        )
        if tail:
            self.chunks.insert(0, _Read(tail, dropped.at, dropped.holder))
        self.decoder.reset()
        for read in self.chunks:
            self.decoder.feed(read.data)

    def serve(self, request: Request, holder: int = UNKNOWN) -> bool:
        """Carry out one request and reply; True if it was TERMINATE. `holder`: who
        held cassini.lock when the request's first byte was read."""
        action = handlers.decide(request, self.store.tasks)
        reply: Outgoing
        if isinstance(action, Answer):
            reply = action.data
        elif isinstance(action, ListTasks):
            reply = self.store.list_reply()
        elif isinstance(action, CreateTask):
            reply = self._create(action)
        elif isinstance(action, RemoveTask):
            reply = self._remove(action.task_id)
        elif isinstance(action, ReadRuns):
            reply = self._runs(action.task_id, request)
        elif isinstance(action, ReadOutput):
            reply = self._read(
                lambda: handlers.reply_output(self.store.output(action.task_id, action.stream)),
                request,
            )
        else:
            assert isinstance(action, Terminate)
            self.log.info("TERMINATE requested; stopping")
            self.send(handlers.OK, holder)
            return True
        self.send(reply, holder)
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
        except (OSError, StoreError) as error:
            self.log.error("%s failed: %s", handlers.describe(request), error)
            return None

    def _runs(self, task_id: int, request: Request) -> Outgoing:
        """TIMES_EXITCODES' reply: up to SMALL_REPLY bytes, read now; larger, a FileReply
        of the runs in `times-exitcodes` (NBRUNS as counted when the file was opened)."""
        try:
            opened = self.store.open_runs(task_id)
        except StoreError as error:
            self.log.error("%s failed: %s", handlers.describe(request), error)
            return None
        if opened is None:  # never finished a run
            return handlers.reply_runs_head(0)
        fd, count = opened
        try:
            head = handlers.reply_runs_head(count)
            length = count * RUN_SIZE
            if len(head) + length > SMALL_REPLY:
                reply = FileReply(head, fd, RUNS_HEAD_SIZE, length)
                fd = -1  # the reply's now: send closes it
                return reply
            return head + _pread_exactly(fd, length, RUNS_HEAD_SIZE)
        except OSError as error:
            self.log.error("%s failed: %s", handlers.describe(request), error)
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    # --- the reply FIFO --------------------------------------------------------------

    def _open_reply(self) -> int | None:
        """The reply FIFO opened for writing, or None when no reader has it open."""
        try:
            return os.open(self._reply_target, _REPLY_OPEN)
        except OSError as error:
            if error.errno == errno.ENXIO:
                return None
            raise

    def send(self, reply: Outgoing, holder: int = UNKNOWN) -> bool:
        """Write one whole reply (or, for None, open and close: no acknowledgement).

        Only to the client it is for, as far as cassini.lock tells (see the module
        docstring): `holder` held the lock when the request was read; if another
        process holds it when the reply is due, or takes it while the listener waits
        for the reader, the reply is dropped. Bounded: at most REPLY_OPEN_TIMEOUT for
        the client to open its end, and REPLY_STALL_TIMEOUT without progress while
        writing. A FileReply's descriptor is closed on return, sent or not.
        """
        try:
            return self._send(reply, holder)
        finally:
            if isinstance(reply, FileReply):
                os.close(reply.fd)

    def _send(self, reply: Outgoing, holder: int) -> bool:
        holding = False
        try:
            allowed, holding = self._reply_allowed(holder)
            try:
                fd = self._open_reply() if allowed else None
                started = time.monotonic()
                while allowed and fd is None:
                    limit = LOCKLESS_OPEN_TIMEOUT if holding else REPLY_OPEN_TIMEOUT
                    if time.monotonic() >= started + limit:
                        self.log.warning(
                            "reply dropped: client never opened the reply FIFO (%.1f s)", limit
                        )
                        return False
                    time.sleep(0.002)
                    if not holding:  # the lock may change hands while we wait
                        allowed, holding = self._lock_still_with(holder, retry=True)
                    if allowed:
                        fd = self._open_reply()
            except OSError as error:
                if error.errno in (errno.ENOENT, errno.ELOOP):
                    self.check_fifos()
                self.log.warning("reply dropped: cannot open the reply FIFO (%s)", error)
                return False
            if fd is None:
                self.log.warning(
                    "reply dropped: its client is gone and another one's exchange is under way"
                )
                return False
            self._close_parked()
            if not holding and holder > NOBODY and self._lock_holder() not in (holder, UNKNOWN):
                # The lock changed hands between our look and the open: the reader is the
                # next client, there for its own reply. Closing now would tell it the
                # daemon hung up (a writer came and went since it opened), so this write
                # end is kept until the next open, which it then cannot be mistaken for.
                self.parked_reply = fd
                self.log.warning(
                    "reply dropped: its client let go of cassini.lock as the reply FIFO "
                    "was opened (by another reader)"
                )
                return False
            try:
                if not self._trusted_fifo(reply) and not stat.S_ISFIFO(os.fstat(fd).st_mode):
                    self.log.warning("reply dropped: %s is not a FIFO", self.reply_path)
                    self.check_fifos()
                    return False
                return reply is None or self._write_all(fd, reply, holder)
            finally:
                os.close(fd)
        finally:
            if holding:
                self._release_client_lock()

    def _trusted_fifo(self, reply: Outgoing) -> bool:
        """Whether `reply` may go to the opened reply FIFO without checking its type.

        Opened with O_NOFOLLOW and O_NONBLOCK, the path cannot be a symlink, and a
        directory, a socket or a FIFO without a reader fail to open: only a regular file
        renamed over it (in our 0700 directory: by the user) opens like the FIFO. While
        inotify watches the directory, such a rename wakes the loop, which recreates the
        FIFO before the next reply; what can reach the file in between is the reply
        opened just after the rename. A small reply (up to PIPE_BUF bytes) is allowed
        that, and skips the fstat (a system call of ~1 us: 5 % of a LIST exchange); a
        larger one, or any reply without inotify, is sent only after the check."""
        if self.watch_fd is None:
            return False
        return reply is None or (isinstance(reply, bytes) and len(reply) <= SMALL_REPLY)

    def _close_parked(self) -> None:
        """Close the parked write end, once another is open: a reader then sees no
        hang-up from it (see _send)."""
        if self.parked_reply >= 0:
            os.close(self.parked_reply)
            self.parked_reply = -1

    def _reply_allowed(self, holder: int) -> tuple[bool, bool]:
        """(may the reply be written, do we hold cassini.lock now).

        Free lock: we take it, so no cassini starts an exchange and reads this reply
        (the requester is a client without the lock, or died). Held by the process that
        held it when the request was read: that client's exchange, go on. Held by
        another: its reader is there for its own reply, not this one.
        """
        allowed, holding = self._lock_still_with(holder)
        if not allowed or holding or holder <= NOBODY:
            return allowed, holding
        # The holder may have taken the lock and opened the request FIFO just after a
        # client that died (or never reads) wrote this request. It keeps the FIFO open
        # until its reply (PROTOCOL.md), and it writes one request: if another one,
        # read while it held the lock, is waiting, this one is older than its exchange.
        # Right after writing, a cassini sleeps waiting for its reply: while the holder
        # is still running, its own request may be on its way, so wait a little
        # (HOLDER_SETTLE at most) for it to be asleep or for its request to come.
        if self._holds_request_fifo(holder) is False:
            return False, False
        deadline = time.monotonic() + HOLDER_SETTLE
        while True:
            if self._another_request_from(holder):
                return False, False
            if self._sleeping(holder) is not False or time.monotonic() >= deadline:
                return True, False
            time.sleep(HOLDER_POLL)

    @staticmethod
    def _sleeping(pid: int) -> bool | None:
        """Whether process `pid` sleeps (state S in /proc/PID/stat); None if unknown."""
        try:
            text = _read_small(f"/proc/{pid}/stat")
        except OSError:
            return None
        after = text.rfind(b")")  # the command name may hold spaces and parentheses
        return after >= 0 and text[after + 2 : after + 3] == b"S"

    def _lock_still_with(self, holder: int, retry: bool = False) -> tuple[bool, bool]:
        """(is cassini.lock free, and now ours, or still held by `holder`; do we hold it).

        Without /proc/locks (`holder` UNKNOWN) only the flock itself is known: the first
        attempt goes ahead; when the reader is missing (`retry`), a free lock is taken
        and a lock held by another process means its reader is not ours.
        """
        if holder == UNKNOWN:
            if not retry:
                return True, False
            taken = self._take_client_lock()
            return taken is not False, bool(taken)
        if holder == NOBODY:
            # Free when the request was read: try to take it straight away (one flock,
            # no /proc/locks when it is still free, the common case).
            taken = self._take_client_lock()
            if taken:
                return True, True
            now = UNKNOWN if taken is None else self._lock_holder()  # taken meanwhile
        else:
            now = self._lock_holder()
            if now == NOBODY and holder > NOBODY:
                return False, False  # the cassini that wrote it let go of the lock: gone
            if now == NOBODY:
                if self._take_client_lock():
                    return True, True
                now = self._lock_holder()  # someone took it meanwhile
        if now == UNKNOWN:
            return True, False
        return now == holder, False

    def _holds_client_lock(self, pid: int) -> bool:
        """Whether process `pid` holds the flock of cassini.lock, from the lock lines of
        its own descriptors' fdinfo (no /proc/locks: see `_lock_holder`)."""
        # "lock:\t2: FLOCK  ADVISORY  WRITE 6740 fe:00:2327211 0 EOF"
        return any(
            line.startswith(b"lock:") and b" FLOCK " in line and b" WRITE " in line
            for text in _fdinfos(pid, self.lock_ident) or ()
            for line in text.splitlines()
        )

    def _holds_request_fifo(self, pid: int) -> bool | None:
        """Whether process `pid` has the request FIFO open for writing (None: unknown)."""
        try:
            ours = os.fstat(self.request_fd)
        except OSError:
            return None
        texts = _fdinfos(pid, (ours.st_dev, ours.st_ino))
        if texts is None:
            return None
        for text in texts:
            try:
                flags = next(
                    int(line.split()[1], 8)
                    for line in text.splitlines()
                    if line.startswith(b"flags:")
                )
            except (StopIteration, ValueError, IndexError):
                continue
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                return True
        return False

    def _another_request_from(self, pid: int) -> bool:
        """Whether a whole request read while `pid` held the lock waits after this one."""
        self._read_available()
        if not any(read.holder == pid for read in self.chunks):
            return False
        decoder = RequestDecoder()
        for read in self.chunks:
            decoder.feed(read.data)
        try:
            return not isinstance(decoder.next_message(), NeedData)
        except ProtocolError:
            return False

    def _write_all(self, fd: int, reply: bytes | FileReply, holder: int = UNKNOWN) -> bool:
        """Write `reply`; give up when the client stops reading for REPLY_STALL_TIMEOUT,
        or when the lock holder changed (its exchange is over: the bytes still to come
        would reach the next client, if another reader keeps the FIFO open)."""
        if isinstance(reply, FileReply):
            total, push = reply.size, self._file_pusher(fd, reply)
        else:
            total, push = len(reply), _bytes_pusher(fd, reply)
        sent = 0
        while sent < total:
            try:
                sent += push(sent)
            except BlockingIOError:
                _, writable, _ = select.select([], [fd], [], REPLY_STALL_TIMEOUT)
                if not writable:
                    self.log.warning(
                        "reply dropped: client stopped reading (%d of %d bytes sent)",
                        sent,
                        total,
                    )
                    return False
                if holder > NOBODY and self._lock_holder() not in (holder, UNKNOWN):
                    self.log.warning(
                        "reply dropped: its client left (%d of %d bytes sent)", sent, total
                    )
                    return False
            except BrokenPipeError:
                self.log.warning("reply dropped: client closed the reply FIFO")
                return False
            except OSError as error:  # reading the file of a FileReply, most likely
                self.log.error(
                    "reply dropped: %s (%d of %d bytes sent)", _reason(error), sent, total
                )
                return False
        return True

    def _file_pusher(self, fd: int, reply: FileReply) -> Callable[[int], int]:
        """A function that writes some of `reply` into `fd` from byte `sent` on and
        returns how many it wrote (raising like os.write): the head with write, the
        file's bytes with sendfile, or, once sendfile was refused, read and written
        in pieces (the same bytes of the same file: the client cannot tell)."""
        head = memoryview(reply.head)
        pending = memoryview(b"")  # read from the file, not written yet

        def push(sent: int) -> int:
            nonlocal pending
            if sent < len(head):
                return os.write(fd, head[sent:])
            position = reply.offset + sent - len(head)
            if not pending and self.use_sendfile:
                try:
                    count = os.sendfile(fd, reply.fd, position, reply.size - sent)
                except OSError as error:
                    if error.errno not in _NO_SENDFILE:
                        raise
                    self.use_sendfile = False
                    self.log.warning(
                        "sendfile refused (%s): replies are read and written instead",
                        _reason(error),
                    )
                else:
                    if count == 0:
                        raise OSError(errno.EIO, "the file ended before its last bytes")
                    return count
            if not pending:
                pending = memoryview(
                    os.pread(reply.fd, min(reply.size - sent, READ_SIZE), position)
                )
                if not pending:
                    raise OSError(errno.EIO, "the file ended before its last bytes")
            written = os.write(fd, pending)
            pending = pending[written:]
            return written

        return push


def _read_small(path: str) -> bytes:
    """The first 4 KiB of a small file (a /proc entry): one open, one read, one close."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _fdinfos(pid: int, ident: tuple[int, int]) -> list[bytes] | None:
    """The /proc/PID/fdinfo texts of the descriptors of process `pid` that refer to the
    file `ident` (device, inode); None if its descriptors cannot be listed (gone, or
    not ours to look at)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    texts = []
    for name in names:
        try:
            info = os.stat(f"/proc/{pid}/fd/{name}")
            if (info.st_dev, info.st_ino) == ident:
                texts.append(_read_small(f"/proc/{pid}/fdinfo/{name}"))
        except OSError:
            continue  # closed meanwhile
    return texts


# struct flock of Linux (l_type, l_whence, l_start, l_len, l_pid), padded to its size.
_FLOCK: Final = struct.Struct("hhqqi4x")


def _posix_lock_holder(fd: int) -> int:
    """The pid of a process holding a POSIX lock on the file of `fd` that a write lock
    would conflict with (fcntl F_GETLK), or 0."""
    try:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _whence, _start, _length, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except (OSError, ValueError, struct.error):
        return 0
    return pid if kind != fcntl.F_UNLCK and pid > 0 else 0


def _whole_request_at_end(data: bytes) -> bytes:
    """The longest tail of `data` (shorter than all of it, at most WHOLE_WRITE bytes)
    that is exactly one whole request other than TERMINATE, or b""."""
    attempts = 0
    for start in range(max(1, len(data) - WHOLE_WRITE), len(data) - 1):
        if data[start : start + 2] not in _OPCODES:
            continue
        attempts += 1
        if attempts > _TAIL_ATTEMPTS:
            break
        try:
            protocol.decode_request(data[start:])
        except ProtocolError:
            continue
        return data[start:]
    return b""


def _bytes_pusher(fd: int, data: bytes) -> Callable[[int], int]:
    """A function that writes `data` into `fd` from byte `sent` on (see _write_all)."""
    view = memoryview(data)

    def push(sent: int) -> int:
        return os.write(fd, view[sent:])

    return push


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


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
