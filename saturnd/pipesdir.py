"""The listener's entries in the pipes directory: the two FIFOs, the socket, a watch.

This module owns how they are made and checked:
- A FIFO is ours, mode 0600: created when missing; something else at its name (put
  there by the user or a cleaner, in our checked 0700 directory) is replaced; one owned
  by another uid is refused. The request FIFO is held open read-write and non-blocking
  (as sysvinit does with /run/initctl), so a writer leaving never gives an endless EOF.
- The socket `saturnd.sock` is bound afresh, 0600, replacing a stale one: the daemon
  holds the pipes directory's lock (startup), so no other daemon can be using it. A
  directory path too long for `sun_path` is reached through /proc/self/fd.
- An inotify watch wakes the listener when an entry of the directory is created,
  deleted or renamed, or the directory itself goes; None where inotify is missing.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Final

SOCKET_BACKLOG: Final = 128
_SUN_PATH_MAX: Final = 107  # sun_path is 108 bytes with its terminating NUL

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


def ensure_fifo(path: Path, logger: logging.Logger) -> None:
    """Make `path` a FIFO of ours, mode 0600: create it, or replace what is there."""
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


def open_request_fifo(path: Path, logger: logging.Logger) -> tuple[int, int]:
    """The request FIFO (made if needed) opened read-write, non-blocking: (fd, inode)."""
    ensure_fifo(path, logger)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if not stat.S_ISFIFO(info.st_mode):  # swapped between the check and the open
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a FIFO")
    return fd, info.st_ino


def is_entry(path: Path, kind: int, inode: int | None = None) -> bool:
    """Whether `path` is (without following a link) of `kind` (stat.S_IFIFO, ...) and,
    when `inode` is given, still that inode."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_IFMT(info.st_mode) == kind and (inode is None or info.st_ino == inode)


def reachable(path: Path) -> tuple[str, int]:
    """An address for `path` that fits in sun_path, and a descriptor of its directory
    to close once it has been used (-1 when none was needed)."""
    name = os.fspath(path)
    if len(os.fsencode(name)) <= _SUN_PATH_MAX:
        return name, -1
    dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dir_fd}/{path.name}", dir_fd


def bind_socket(path: Path) -> tuple[socket.socket, int]:
    """A listening, non-blocking Unix stream socket at `path`, mode 0600, replacing
    whatever was there: (socket, inode of its file)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    address, dir_fd = reachable(path)
    try:
        previous = os.umask(0o177)  # born 0600: no moment where others could connect
        try:
            server.bind(address)
        finally:
            os.umask(previous)
        server.listen(SOCKET_BACKLOG)
        server.setblocking(False)
        return server, os.lstat(path).st_ino
    except BaseException:
        server.close()
        raise
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    _pid, uid, _gid = struct.unpack(
        "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    )
    return int(uid)


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


def read_events(watch_fd: int) -> bool:
    """Consume the pending events of a watch; True if the watched directory went."""
    gone = False
    try:
        while True:
            data = os.read(watch_fd, 4096)
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                gone = gone or bool(mask & _WATCH_GONE)
                offset += _EVENT.size + length
    except BlockingIOError:
        pass
    return gone
