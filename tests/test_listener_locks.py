"""How the listener names the holder of cassini.lock, with real locks held by real
processes: one fcntl(F_GETLK) for our cassini (which also takes a shared POSIX lock),
confirmed by the holder's own fdinfo; /proc/locks for everyone else."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from saturnd.listener import CLIENT_LOCK, NOBODY, Listener, StopFlag, _posix_lock_holder
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
