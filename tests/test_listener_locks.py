"""How the listener names the holder of cassini.lock, with real locks held by real
processes: one fcntl(F_GETLK) for our cassini (which also takes a shared POSIX lock),
confirmed by the holder's own fdinfo; /proc/locks for everyone else. And what the
listener makes of a read that a cassini's request shares with another writer's bytes."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saturnd.listener import (
    CLIENT_LOCK,
    NOBODY,
    SMALL_REPLY,
    UNKNOWN,
    Listener,
    StopFlag,
    _posix_lock_holder,
    _Read,
)
from saturnd.store import Store


def hold(path: Path, flock: bool, posix: bool) -> int:
    """A child process holding `path`'s flock and/or a shared POSIX lock; its pid."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if flock:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if posix:
                fcntl.lockf(fd, fcntl.LOCK_SH)
            os.write(ready_write, b"x")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"x"
    os.close(ready_read)
    return pid


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    pipes, state = tmp_path / "pipes", tmp_path / "state"
    pipes.mkdir(mode=0o700)
    state.mkdir(mode=0o700)
    log = logging.getLogger("test_listener_locks")
    store = Store.open(state, log)
    yield Listener(pipes, store, log, StopFlag())
    store.close()


@pytest.fixture
def children() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def lock_path(listener: Listener) -> Path:
    return listener.pipes_dir / CLIENT_LOCK


def test_a_free_lock_has_no_holder(listener: Listener) -> None:
    assert listener._lock_holder() == NOBODY
    assert _posix_lock_holder(listener._lock_file()) == 0


@pytest.mark.parametrize("posix", [True, False], ids=["our cassini", "another client"])
def test_the_holder_of_the_flock_is_named(
    listener: Listener, children: list[int], posix: bool
) -> None:
    listener._lock_file()
    children.append(hold(lock_path(listener), flock=True, posix=posix))
    assert listener._lock_holder() == children[0]
    assert listener._holds_client_lock(children[0])
    if posix:
        # Named without /proc/locks at all.
        def refuse() -> bytes:
            raise AssertionError("/proc/locks read")

        listener._read_proc_locks = refuse  # type: ignore[method-assign]
        assert listener._lock_holder() == children[0]


def test_a_posix_lock_without_the_flock_names_nobody(
    listener: Listener, children: list[int]
) -> None:
    # A process that takes only the POSIX lock (never our cassini) must not be taken
    # for the holder: its fdinfo shows no flock, and /proc/locks has the last word.
    listener._lock_file()
    impostor = hold(lock_path(listener), flock=False, posix=True)
    children.append(impostor)
    assert _posix_lock_holder(listener._lock_file()) == impostor
    assert not listener._holds_client_lock(impostor)
    assert listener._lock_holder() == NOBODY
    holder = hold(lock_path(listener), flock=True, posix=False)
    children.append(holder)
    assert listener._lock_holder() == holder


ECHO = b"CR" + struct.pack(">QIB", 1, 1, 1) + struct.pack(">II", 1, 4) + b"echo"
RUNS = b"TX" + struct.pack(">Q", 7)


def swallowed(listener: Listener, data: bytes, holder: int, size: int) -> bool:
    """Whether the request in the first `size` bytes of one read `data` is taken for a
    stalled writer's bytes that swallowed the start of a cassini's request."""
    listener.chunks = [_Read(data, time.monotonic(), holder)]
    return listener._swallowed(size)


def test_a_request_begun_by_a_stalled_writer_and_ended_by_a_cassini_is_refused(
    listener: Listener,
) -> None:
    # "CR ... len 4" then the cassini's TX: the CREATE's string is "TX\0\0".
    assert swallowed(listener, ECHO[:-4] + RUNS, os.getpid(), len(ECHO))
    assert swallowed(listener, ECHO[:-1] + RUNS, os.getpid(), len(ECHO))


def test_a_cassinis_request_followed_by_another_writers_bytes_is_served(
    listener: Listener,
) -> None:
    assert not swallowed(listener, RUNS + b"ZZjunk", os.getpid(), len(RUNS))
    assert not swallowed(listener, RUNS + ECHO[:-4], os.getpid(), len(RUNS))
    # A command whose last argument is "LS", then a stray byte: no whole request ends it.
    create_ls = b"CR" + struct.pack(">QIB", 1, 1, 1) + struct.pack(">II", 1, 2) + b"LS"
    assert not swallowed(listener, create_ls + b"Z", os.getpid(), len(create_ls))
    # Alone in its read, a request is never refused, whatever it ends with.
    assert not swallowed(listener, create_ls, os.getpid(), len(create_ls))


def test_reads_without_a_cassini_under_way_are_left_alone(
    listener: Listener, children: list[int]
) -> None:
    # Clients without the lock may write as they like; the rule is for a cassini's read.
    assert not swallowed(listener, ECHO[:-4] + RUNS, NOBODY, len(ECHO))
    # Without /proc/locks: only while some client holds the lock.
    assert not swallowed(listener, ECHO[:-4] + RUNS, UNKNOWN, len(ECHO))
    children.append(hold(lock_path(listener), flock=True, posix=False))
    assert swallowed(listener, ECHO[:-4] + RUNS, UNKNOWN, len(ECHO))


def client(listener: Listener, reads: bool) -> tuple[int, int]:
    """A child that holds cassini.lock like our cassini and the request FIFO open for
    writing; with `reads`, also the reply FIFO for reading, and reports on the returned
    descriptor what it read within 2 s: the bytes, then b"|EOF" or b"|WAITING"."""
    ready_read, ready_write = os.pipe()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            lock = os.open(lock_path(listener), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            fcntl.lockf(lock, fcntl.LOCK_SH)
            if not reads:
                os.open(listener.request_path, os.O_WRONLY | os.O_NONBLOCK)
                os.write(ready_write, b"x")
                signal.pause()
            reply = os.open(listener.reply_path, os.O_RDONLY | os.O_NONBLOCK)
            os.open(listener.request_path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(ready_write, b"x")
            got, deadline = b"", time.monotonic() + 2.0
            while (left := deadline - time.monotonic()) > 0:
                if select.select([reply], [], [], left)[0]:
                    data = os.read(reply, 1 << 16)
                    if not data:
                        os.write(report_write, got + b"|EOF")
                        break
                    got += data
            else:
                os.write(report_write, got + b"|WAITING")
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(report_write)
    assert os.read(ready_read, 1) == b"x"
    os.close(ready_read)
    return pid, report_read


def test_a_reply_whose_client_lets_go_of_the_lock_as_it_is_opened_reaches_nobody(
    listener: Listener, children: list[int]
) -> None:
    """The long storm of a client that takes the lock, writes and dies: between the
    listener's look at the lock and its open of the reply FIFO, the next cassini took
    the lock and opened the FIFO, and got the dead client's reply."""
    listener.open()
    dead, _ = client(listener, reads=False)
    children.append(dead)
    nxt: list[tuple[int, int]] = []
    real_open = listener._open_reply

    def open_as_the_next_client_comes() -> int | None:
        if not nxt:
            os.kill(dead, signal.SIGKILL)
            os.waitpid(dead, 0)
            children.remove(dead)
            nxt.append(client(listener, reads=True))
            children.append(nxt[0][0])
        return real_open()

    listener._open_reply = open_as_the_next_client_comes  # type: ignore[method-assign]
    assert not listener.send(b"OK" + b"\0" * 4, dead)
    assert listener.parked_reply >= 0
    # The next client's own reply reaches it whole, and then it sees the end.
    pid, report = nxt[0]
    assert listener.send(b"OKmine", pid)
    assert listener.parked_reply < 0
    assert os.read(report, 1 << 16) == b"OKmine|EOF"
    os.close(report)


# --- a client without the lock: the lock taken at the read, let go after the reply ----


def lock_is_free(listener: Listener) -> bool:
    """Whether another open of cassini.lock could take its flock now (as a cassini)."""
    fd = os.open(lock_path(listener), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_read_while_the_lock_is_free_takes_it_until_the_reply_is_written(
    listener: Listener,
) -> None:
    listener.open()

    def refuse() -> bytes:
        raise AssertionError("/proc/locks read for a free lock")

    listener._read_proc_locks = refuse  # type: ignore[method-assign]
    reply = os.open(listener.reply_path, os.O_RDONLY | os.O_NONBLOCK)
    request = os.open(listener.request_path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(request, b"LS")
        listener._read_available()
        assert [read.holder for read in listener.chunks] == [NOBODY]
        # No cassini can start an exchange (and read this reply) from here on.
        assert not lock_is_free(listener)
        assert listener._serve_complete_requests() is None
        assert lock_is_free(listener)
        assert os.read(reply, 1 << 16) == b"OK" + bytes(4)
        assert os.read(reply, 1 << 16) == b""  # the end of the reply
    finally:
        os.close(request)
        os.close(reply)


def test_an_unfinished_request_without_the_lock_does_not_keep_it(listener: Listener) -> None:
    # A lockless client that sends half a request: every cassini would wait behind it
    # for REQUEST_TIMEOUT if the lock taken at the read were kept while the rest is due.
    listener.open()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)  # like the daemon's (saturnd/proc.py)
    listener.wake_fd = wake_read
    served = threading.Thread(target=listener.run)
    request = os.open(listener.request_path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        served.start()
        os.write(request, ECHO[:5])
        deadline = time.monotonic() + 0.5
        while not listener.chunks and time.monotonic() < deadline:
            time.sleep(0.001)
        assert listener.chunks, "the listener did not read the bytes"
        time.sleep(0.05)
        assert lock_is_free(listener)
    finally:
        listener.stop.stopping = True
        os.write(wake_write, b"x")  # as the daemon's signal handlers do
        served.join(timeout=10)
        os.close(request)
        os.close(wake_read)
        os.close(wake_write)
    assert not served.is_alive()


# --- the reply FIFO's type --------------------------------------------------------


def test_a_file_renamed_over_the_reply_fifo_gets_no_large_reply(
    listener: Listener, tmp_path: Path
) -> None:
    listener.open()
    assert listener.watch_fd is not None

    def rename_a_file_over_the_fifo() -> int:
        """A descriptor of the file, which the listener replaces with a FIFO again."""
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
        fd = os.open(plain, os.O_RDONLY)
        os.replace(plain, listener.reply_path)
        return fd

    # Past PIPE_BUF the type is checked at every reply, inotify or not.
    plain = rename_a_file_over_the_fifo()
    assert not listener.send(b"OK" + bytes(SMALL_REPLY), NOBODY)
    assert os.fstat(plain).st_size == 0
    os.close(plain)
    assert stat.S_ISFIFO(os.lstat(listener.reply_path).st_mode)  # recreated at once
    # Without inotify, even a small reply is checked.
    os.close(listener.watch_fd)
    listener.watch_fd = None
    plain = rename_a_file_over_the_fifo()
    assert not listener.send(b"OK" + bytes(4), NOBODY)
    assert os.fstat(plain).st_size == 0
    os.close(plain)
    assert lock_is_free(listener)
