"""Tests of saturnd.store: the state directory, with real files in tmp_path."""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from saturnd.protocol import ListExReply, ListReply, Run, TaskEntry, encode
from saturnd.records import (
    HEADER_SIZE,
    RECORD_HEAD_SIZE,
    TOMBSTONE,
    decode_body,
    decode_runs,
    encode_record,
    scan_cmds,
)
from saturnd.records import encode_body as encode_task_body
from saturnd.store import Store, StoreError
from saturnd.task import Extras, Task
from saturnd.taskdir import append_run
from saturnd.taskindex import read_into_bytearray
from saturnd.timing import Timing
from tests.conftest import open_fds

LOG = logging.getLogger("test.store")
EVERY_MINUTE = Timing()
AT_NINE = Timing.parse("0", "9", "1-5")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def store(state: Path) -> Iterator[Store]:
    opened = Store.open(state, LOG)
    yield opened
    opened.close()


def encode_body(timing: Timing, argv: tuple[bytes, ...]) -> bytes:
    return encode_task_body(Task(timing, argv))


def reopen(state: Path) -> Store:
    opened = Store.open(state, LOG)
    opened.close()
    return opened


def cmds_bytes(state: Path) -> bytes:
    return (state / "cmds").read_bytes()


def id_at(state: Path, offset: int) -> int:
    value: int = struct.unpack_from(">Q", cmds_bytes(state), offset)[0]
    return value


# --- create, remove, reopen -----------------------------------------------------


def test_it_creates_a_fresh_store(state: Path, store: Store) -> None:
    assert dict(store.tasks) == {}
    assert store.next_id == 0
    cmds = state / "cmds"
    assert cmds.read_bytes() == b"SATD\x00\x00\x00\x03" + bytes(8)
    assert stat.S_IMODE(cmds.stat().st_mode) == 0o600


def test_it_keeps_tasks_and_ids_across_reopening(state: Path, store: Store) -> None:
    assert store.create(EVERY_MINUTE, (b"echo", b"a")) == 0
    assert store.create(AT_NINE, (b"echo", b"b")) == 1
    assert store.create(EVERY_MINUTE, (b"true",)) == 2
    assert store.remove(1) is True
    assert store.remove(1) is False
    assert store.remove(42) is False
    expected = {
        0: TaskEntry(0, EVERY_MINUTE, (b"echo", b"a")),
        2: TaskEntry(2, EVERY_MINUTE, (b"true",)),
    }
    assert dict(store.tasks) == expected
    again = reopen(state)
    assert dict(again.tasks) == expected
    assert list(again.tasks) == [0, 2]
    assert again.next_id == 3
    assert sorted(p.name for p in state.iterdir()) == ["cmds", "task_0", "task_2"]
    assert stat.S_IMODE((state / "task_0").stat().st_mode) == 0o700


def test_it_never_gives_an_id_back_after_removing_the_highest(state: Path, store: Store) -> None:
    for _ in range(3):
        store.create(EVERY_MINUTE, (b"true",))
    assert store.remove(2)
    assert store.next_id == 3
    again = Store.open(state, LOG)
    assert again.next_id == 3
    assert again.create(EVERY_MINUTE, (b"true",)) == 3
    assert again.remove(3) and again.remove(0) and again.remove(1)
    again.close()
    assert reopen(state).next_id == 4
    assert dict(reopen(state).tasks) == {}


def test_it_reuses_the_first_free_slot_that_is_big_enough(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a" * 50,))
    store.create(EVERY_MINUTE, (b"b" * 10,))
    store.create(EVERY_MINUTE, (b"c" * 40,))
    store.create(EVERY_MINUTE, (b"keep",))
    offsets = [slot.offset for slot in scan_cmds(cmds_bytes(state)).slots]
    store.remove(0)
    store.remove(1)
    store.remove(2)
    size = len(cmds_bytes(state))
    # 30 bytes fit the first hole (50): it is taken, keeping its SIZE.
    assert store.create(EVERY_MINUTE, (b"d" * 30,)) == 4
    assert len(cmds_bytes(state)) == size
    slots = scan_cmds(cmds_bytes(state)).slots
    assert (slots[0].offset, slots[0].task_id, slots[0].argv) == (offsets[0], 4, (b"d" * 30,))
    assert slots[0].size == len(encode_body(EVERY_MINUTE, (b"a" * 50,)))
    # 35 bytes do not fit the 10-byte hole, but fit the 40-byte one after it.
    assert store.create(EVERY_MINUTE, (b"e" * 35,)) == 5
    assert len(cmds_bytes(state)) == size
    assert id_at(state, offsets[1]) == TOMBSTONE
    assert id_at(state, offsets[2]) == 5
    # 60 bytes fit no hole: appended, the file grows by exactly one record.
    body = encode_body(EVERY_MINUTE, (b"f" * 60,))
    assert store.create(EVERY_MINUTE, (b"f" * 60,)) == 6
    assert len(cmds_bytes(state)) == size + RECORD_HEAD_SIZE + len(body)
    assert dict(reopen(state).tasks) == dict(store.tasks)
    assert list(store.tasks) == [3, 4, 5, 6]


def test_it_writes_no_stale_bytes_into_a_reused_slot(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"x" * 64,))
    store.remove(0)
    store.create(AT_NINE, (b"y",))
    assert dict(reopen(state).tasks) == {1: TaskEntry(1, AT_NINE, (b"y",))}
    assert b"x" not in cmds_bytes(state)


# --- repairs on open ------------------------------------------------------------


def test_it_drops_a_torn_tail_on_open(
    state: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.create(EVERY_MINUTE, (b"echo", b"kept"))
    store.close()
    good = cmds_bytes(state)
    torn = encode_record(TOMBSTONE, encode_body(EVERY_MINUTE, (b"lost",)), 60)[:17]
    (state / "cmds").write_bytes(good + torn)
    with caplog.at_level(logging.WARNING):
        again = reopen(state)
    assert dict(again.tasks) == {0: TaskEntry(0, EVERY_MINUTE, (b"echo", b"kept"))}
    assert cmds_bytes(state) == good
    assert f"dropped a torn tail of 17 bytes at offset {len(good)}" in caplog.text


def test_it_starts_over_from_a_torn_header(state: Path) -> None:
    (state / "cmds").write_bytes(b"SAT")
    assert reopen(state).next_id == 0
    assert cmds_bytes(state) == b"SATD\x00\x00\x00\x03" + bytes(8)


def test_it_finishes_an_interrupted_removal(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    store.create(EVERY_MINUTE, (b"b",))
    store.close()
    # A crash right after the tombstone of task 1 was written: its directory remains.
    offset = scan_cmds(cmds_bytes(state)).slots[1].offset
    with open(state / "cmds", "r+b") as file:
        file.seek(offset)
        file.write(struct.pack(">Q", TOMBSTONE))
    (state / "task_1" / "stdout").write_bytes(b"old")
    # ... and a crash between renaming a directory and deleting it.
    leftover = state / ".removed-7-0badcafe"
    (leftover / "deep").mkdir(parents=True)
    (leftover / "deep" / "file").write_bytes(b"x")
    (state / "task_99").mkdir()  # a task that does not exist at all
    (state / "saturnd.log").write_bytes(b"log")  # not the store's business
    again = reopen(state)
    assert list(again.tasks) == [0]
    assert sorted(p.name for p in state.iterdir()) == ["cmds", "saturnd.log", "task_0"]


def test_it_recreates_a_missing_task_directory(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    store.close()
    (state / "task_0").rmdir()
    reopen(state)
    assert stat.S_IMODE((state / "task_0").lstat().st_mode) == 0o700


def test_it_replaces_a_task_directory_that_is_a_symlink(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    store.close()
    elsewhere = state.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_bytes(b"x")
    (state / "task_0").rmdir()
    (state / "task_0").symlink_to(elsewhere)
    reopen(state)
    assert not (state / "task_0").is_symlink()
    assert (state / "task_0").is_dir()
    assert (elsewhere / "precious").read_bytes() == b"x"


def test_it_frees_a_live_record_that_does_not_decode(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    store.close()
    data = cmds_bytes(state) + encode_record(5, bytes(60), 60)
    (state / "cmds").write_bytes(data)
    again = Store.open(state, LOG)
    assert list(again.tasks) == [0]
    # The freed slot is reused, so nothing was lost but an impossible record.
    assert again.create(EVERY_MINUTE, (b"b",)) == 1
    assert len(cmds_bytes(state)) == len(data)
    again.close()
    assert list(reopen(state).tasks) == [0, 1]


def test_it_refuses_an_unknown_version(state: Path) -> None:
    (state / "cmds").write_bytes(b"SATD\x00\x00\x00\x04" + bytes(8))
    with pytest.raises(StoreError, match="unsupported cmds version 4"):
        Store.open(state, LOG)
    assert cmds_bytes(state) == b"SATD\x00\x00\x00\x04" + bytes(8)


def test_it_refuses_a_cmds_that_is_a_symlink(state: Path) -> None:
    target = state.parent / "target"
    target.write_bytes(b"")
    (state / "cmds").symlink_to(target)
    with pytest.raises(StoreError, match="cmds"):
        Store.open(state, LOG)
    assert target.read_bytes() == b""


def test_it_refuses_a_cmds_that_is_not_a_file(state: Path) -> None:
    os.mkfifo(state / "cmds", 0o600)
    with pytest.raises(StoreError, match="not a regular file"):
        Store.open(state, LOG)


def test_it_tightens_a_cmds_open_to_others(state: Path) -> None:
    reopen(state)
    os.chmod(state / "cmds", 0o644)
    reopen(state)
    assert stat.S_IMODE((state / "cmds").stat().st_mode) == 0o600


# --- replies --------------------------------------------------------------------


def test_it_builds_the_list_reply(store: Store) -> None:
    assert store.list_reply() == encode(ListReply(())) == b"OK\x00\x00\x00\x00"
    store.create(EVERY_MINUTE, (b"echo", b"a b"))
    store.create(AT_NINE, (b"ls",))
    store.create(EVERY_MINUTE, (b"x",))
    assert store.list_reply() == encode(ListReply(tuple(store.tasks.values())))
    store.remove(1)
    reply = store.list_reply()
    assert reply == encode(
        ListReply(
            (
                TaskEntry(0, EVERY_MINUTE, (b"echo", b"a b")),
                TaskEntry(2, EVERY_MINUTE, (b"x",)),
            )
        )
    )
    assert store.list_reply() is reply  # cached until the next change


def test_it_reads_the_run_history(state: Path, store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    assert store.times_exitcodes_body(task_id) == b"\x00\x00\x00\x00"
    append_run(store.task_dir(task_id), 1_790_000_000, 0)
    append_run(store.task_dir(task_id), 1_790_000_060, 0xFFFF)
    body = store.times_exitcodes_body(task_id)
    assert decode_runs(body) == (Run(1_790_000_000, 0), Run(1_790_000_060, 0xFFFF))
    history = state / f"task_{task_id}" / "times-exitcodes"
    assert history.read_bytes() == body
    assert stat.S_IMODE(history.stat().st_mode) == 0o600


def test_it_reads_the_last_output(store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    assert store.output(task_id, "stdout") is None
    assert store.output(task_id, "stderr") is None
    (store.task_dir(task_id) / "stdout").write_bytes(b"hello\n")
    (store.task_dir(task_id) / "stderr").write_bytes(b"")
    assert store.output(task_id, "stdout") == b"hello\n"
    assert store.output(task_id, "stderr") == b""
    with pytest.raises(ValueError):
        store.output(task_id, "cmds")


def test_it_does_not_follow_a_symlinked_output(state: Path, store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    secret = state.parent / "secret"
    secret.write_bytes(b"secret")
    (store.task_dir(task_id) / "stdout").symlink_to(secret)
    with pytest.raises(StoreError):
        store.output(task_id, "stdout")


# --- the read-only view ---------------------------------------------------------


def age(state: Path) -> None:
    """Make `cmds` look long unchanged, so its stamp is trusted (not "racy")."""
    os.utime(state / "cmds", ns=(1_000_000_000, 1_000_000_000))


def test_it_follows_changes_in_a_second_instance(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    age(state)
    reader = Store.open(state, LOG, read_only=True)
    assert list(reader.tasks) == [0]
    assert reader.refresh() is False
    store.create(AT_NINE, (b"b",))
    assert reader.refresh() is True
    assert dict(reader.tasks) == dict(store.tasks)
    assert reader.next_id == 2
    store.remove(0)
    assert reader.refresh() is True
    assert list(reader.tasks) == [1]
    assert reader.list_reply() == store.list_reply()
    age(state)
    assert reader.refresh() is False  # a new stamp but the same bytes: nothing changed
    assert reader.refresh() is False
    with pytest.raises(StoreError):
        reader.create(EVERY_MINUTE, (b"c",))


def test_it_refreshes_with_one_stat_when_nothing_changed(
    state: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    age(state)
    reader = Store.open(state, LOG, read_only=True)
    calls: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        real = getattr(os, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    for name in ("open", "stat", "fstat", "pread", "read"):
        monkeypatch.setattr(os, name, spy(name))
    for _ in range(5):
        assert reader.refresh() is False
    assert calls == ["stat"] * 5


def test_it_sees_a_change_hidden_by_a_coarse_time_stamp(state: Path, store: Store) -> None:
    # Reuse a slot, so that the file size does not change either.
    store.create(EVERY_MINUTE, (b"a",))
    store.remove(0)
    reader = Store.open(state, LOG, read_only=True)  # just written: racy
    before = os.stat(state / "cmds")
    store.create(EVERY_MINUTE, (b"b",))
    os.utime(state / "cmds", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(state / "cmds").st_size == before.st_size
    assert reader.refresh() is True
    assert list(reader.tasks) == [1]


def test_it_opens_a_missing_cmds_read_only_as_empty(state: Path) -> None:
    reader = Store.open(state, LOG, read_only=True)
    assert dict(reader.tasks) == {}
    assert not (state / "cmds").exists()
    assert reader.refresh() is False
    writer = Store.open(state, LOG)
    writer.create(EVERY_MINUTE, (b"a",))
    assert reader.refresh() is True
    assert list(reader.tasks) == [0]
    writer.close()


# --- append_run -----------------------------------------------------------------


def test_it_refuses_to_record_a_run_of_a_removed_task(state: Path, store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    task_dir = store.task_dir(task_id)
    store.remove(task_id)
    with pytest.raises(FileNotFoundError):
        append_run(task_dir, 1, 0)
    assert not task_dir.exists()


def test_it_does_not_follow_a_symlinked_history(state: Path, store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    victim = state.parent / "victim"
    victim.write_bytes(b"")
    (store.task_dir(task_id) / "times-exitcodes").symlink_to(victim)
    with pytest.raises(OSError) as caught:
        append_run(store.task_dir(task_id), 1, 0)
    assert caught.value.errno == errno.ELOOP
    assert victim.read_bytes() == b""


def test_it_overwrites_an_unfinished_append(store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    history = store.task_dir(task_id) / "times-exitcodes"
    # A crash after writing run 2 but before its count: NBRUNS still says 1.
    history.write_bytes(struct.pack(">IqHqH", 1, 10, 0, 20, 1))
    append_run(store.task_dir(task_id), 30, 2)
    assert history.read_bytes() == struct.pack(">IqHqH", 2, 10, 0, 30, 2)


def test_it_appends_after_the_runs_present_when_the_count_is_damaged(store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    history = store.task_dir(task_id) / "times-exitcodes"
    history.write_bytes(struct.pack(">IqH", 3, 10, 0))  # NBRUNS 3, one run present
    append_run(store.task_dir(task_id), 30, 2)
    assert history.read_bytes() == struct.pack(">IqHqH", 2, 10, 0, 30, 2)


def test_it_loses_no_run_when_two_processes_append_at_once(store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    task_dir = store.task_dir(task_id)
    writers, each = 4, 25
    children = []
    for writer in range(writers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                for run in range(each):
                    append_run(task_dir, writer * 1000 + run, writer)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    runs = decode_runs(store.times_exitcodes_body(task_id))
    assert len(runs) == writers * each
    assert sorted(runs, key=lambda r: r.time) == [
        Run(writer * 1000 + run, writer) for writer in range(writers) for run in range(each)
    ]
    for writer in range(writers):  # each writer's runs stay in its order
        mine = [r.time for r in runs if r.exitcode == writer]
        assert mine == sorted(mine)


# --- failures -------------------------------------------------------------------


class Injected:
    """Makes the n-th call (counting from 1) of some os functions fail once."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        fail_at: int,
        error: int,
        names: tuple[str, ...] = ("pwrite", "fdatasync", "mkdir", "ftruncate"),
    ) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.error = error
        self.failed = False
        for name in names:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.fail_at:
                self.failed = True
                raise OSError(self.error, os.strerror(self.error))
            return real(*args, **kwargs)

        return wrapper


@pytest.mark.parametrize("reuse", [False, True], ids=["append", "reuse"])
def test_it_acknowledges_nothing_when_any_step_of_create_fails(
    state: Path, reuse: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Store.open(state, LOG)
    base.create(EVERY_MINUTE, (b"one",))
    base.create(EVERY_MINUTE, (b"x" * 40,))
    base.create(AT_NINE, (b"three",))
    if reuse:
        base.remove(1)
    base.close()
    pristine = cmds_bytes(state)
    fail_at = 1
    while True:
        (state / "cmds").write_bytes(pristine)
        opened = Store.open(state, LOG)
        before = (dict(opened.tasks), opened.list_reply())
        with monkeypatch.context() as patch:
            injected = Injected(patch, fail_at, errno.ENOSPC)
            try:
                new_id = opened.create(EVERY_MINUTE, (b"new",))
            except StoreError as error:
                assert injected.failed
                assert "No space left on device" in str(error)
                assert (dict(opened.tasks), opened.list_reply()) == before
                assert not (state / "task_3").exists()
            else:
                assert not injected.failed
                assert new_id == 3
                break
        opened.close()
        after = reopen(state)
        assert dict(after.tasks) == before[0], fail_at
        assert after.next_id >= 3
        # Undone cleanly: what remains is the old file, maybe with NEXT_ID moved on.
        assert len(cmds_bytes(state)) == len(pristine), fail_at
        fail_at += 1
    assert fail_at > 5  # every step was tried: 2 pwrites, fdatasync, pwrite, fdatasync, mkdir
    opened.close()
    assert 3 in reopen(state).tasks


def test_it_keeps_a_task_whose_removal_fails(
    state: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    with monkeypatch.context() as patch:
        Injected(patch, 2, errno.EIO)  # the fdatasync after the tombstone
        with pytest.raises(StoreError):
            store.remove(0)
    assert list(store.tasks) == [0]
    assert store.remove(0) is True


def test_it_survives_a_full_file_system(state: Path) -> None:
    """ENOSPC for real (a file size limit), in a child: nothing unstored is acknowledged."""
    base = Store.open(state, LOG)
    for number in range(3):
        base.create(EVERY_MINUTE, (b"before", str(number).encode()))
    base.remove(1)
    base.close()
    earlier = dict(reopen(state).tasks)
    limit = len(cmds_bytes(state)) + 500
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            opened = Store.open(state, LOG)
            acknowledged: list[int] = []
            failures = 0
            for number in range(100):
                tasks = dict(opened.tasks)
                try:
                    acknowledged.append(opened.create(AT_NINE, (b"x" * 90, b"%d" % number)))
                except StoreError:
                    failures += 1
                    assert dict(opened.tasks) == tasks
                    if failures == 3:
                        break
            # A slot freed now is still reused although the file cannot grow.
            opened.remove(acknowledged[0])
            acknowledged[0] = opened.create(AT_NINE, (b"reused",))
            os.write(write_end, json.dumps([acknowledged, failures]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    acknowledged, failures = json.loads(report)
    assert failures == 3
    assert len(acknowledged) >= 3
    after = reopen(state)
    assert {k: v for k, v in after.tasks.items() if k in earlier} == earlier
    assert set(after.tasks) == set(earlier) | set(acknowledged)
    assert after.tasks[acknowledged[0]].argv == (b"reused",)
    assert len(cmds_bytes(state)) <= limit
    assert scan_cmds(cmds_bytes(state)).problems == []
    assert len(cmds_bytes(state)) >= HEADER_SIZE


# --- the lean index and its views -------------------------------------------------


def reused_slots(store: Store) -> None:
    """Tasks 2, 3 and 1 in file order: task 3 went into the slot task 0 left."""
    store.create(EVERY_MINUTE, (b"x" * 20,))
    store.create(AT_NINE, (b"echo", b"one"))
    store.create(EVERY_MINUTE, (b"two",))
    store.remove(0)
    store.create(AT_NINE, (b"three",))


def test_it_lists_by_id_a_file_whose_slots_were_reused(state: Path, store: Store) -> None:
    reused_slots(store)
    assert [slot.task_id for slot in scan_cmds(cmds_bytes(state)).slots] == [3, 1, 2]
    again = reopen(state)
    assert list(again.tasks) == list(again.timings) == [1, 2, 3]
    assert again.list_reply() == store.list_reply()
    assert again.list_reply() == encode(ListReply(tuple(store.tasks.values())))


def test_the_tasks_view_behaves_like_the_old_mapping(state: Path, store: Store) -> None:
    reused_slots(store)
    view = reopen(state).tasks
    assert len(view) == 3
    assert list(view) == [1, 2, 3]
    text_key: object = "2"
    assert 2 in view and 0 not in view and text_key not in view
    assert view[3] == TaskEntry(3, AT_NINE, (b"three",))
    assert view.get(0) is None
    with pytest.raises(KeyError):
        view[0]
    assert list(view.items()) == [
        (1, TaskEntry(1, AT_NINE, (b"echo", b"one"))),
        (2, TaskEntry(2, EVERY_MINUTE, (b"two",))),
        (3, TaskEntry(3, AT_NINE, (b"three",))),
    ]
    assert view == dict(view.items())
    with pytest.raises(TypeError):
        view[4] = TaskEntry(4, AT_NINE, (b"x",))  # type: ignore[index]


def test_the_views_follow_creates_and_removes_but_not_a_reload(state: Path, store: Store) -> None:
    tasks, timings = store.tasks, store.timings
    store.create(AT_NINE, (b"a",))
    assert list(tasks) == list(timings) == [0]
    store.remove(0)
    assert len(tasks) == len(timings) == 0
    store.create(EVERY_MINUTE, (b"b",))
    age(state)
    reader = Store.open(state, LOG, read_only=True)
    before = reader.tasks
    store.create(AT_NINE, (b"c",))
    assert reader.refresh() is True
    assert list(before) == [1]  # the table of the earlier load
    assert list(reader.tasks) == [1, 2]


def test_it_loads_without_decoding_a_command_line(
    state: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(5):
        store.create(EVERY_MINUTE, (b"echo", b"%d" % number))
    decoded: list[bytes] = []

    def spy(body: bytes) -> tuple[Timing, tuple[bytes, ...]]:
        decoded.append(body)
        return decode_body(body)

    monkeypatch.setattr("saturnd.taskindex.decode_body", spy)
    again = Store.open(state, LOG)
    assert len(again.tasks) == 5 and 4 in again.tasks
    assert again.list_reply() == store.list_reply()
    assert dict(again.timings) == dict.fromkeys(range(5), EVERY_MINUTE)
    assert decoded == []
    assert again.tasks[4].argv == (b"echo", b"4")
    assert len(decoded) == 1
    again.close()


def test_the_timings_are_read_only_and_shared(state: Path, store: Store) -> None:
    store.create(AT_NINE, (b"a",))
    store.create(EVERY_MINUTE, (b"b",))
    store.create(Timing.parse("0", "9", "1-5"), (b"c",))
    again = Store.open(state, LOG)
    timings = again.timings
    assert dict(timings) == {0: AT_NINE, 1: EVERY_MINUTE, 2: AT_NINE}
    assert timings[0] is timings[2]
    # A task created later with a timing already loaded shares it too.
    new_id = again.create(Timing.parse("0", "9", "1-5"), (b"d",))
    assert again.timings[new_id] is timings[0]
    assert again.tasks[new_id].timing is timings[0]
    with pytest.raises(TypeError):
        timings[0] = EVERY_MINUTE  # type: ignore[index]
    with pytest.raises(AttributeError):
        timings.pop(0)  # type: ignore[attr-defined]
    again.close()


def test_it_does_not_stat_the_task_directories_at_start(
    state: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        store.create(EVERY_MINUTE, (b"true",))
    store.close()
    real_scandir, real_stat = os.scandir, os.stat
    stats: list[str] = []

    class Entry:
        """A directory entry that records the stat() calls made on it."""

        def __init__(self, entry: os.DirEntry[str]) -> None:
            self._entry = entry
            self.name, self.path = entry.name, entry.path

        def is_dir(self, *, follow_symlinks: bool = True) -> bool:
            return self._entry.is_dir(follow_symlinks=follow_symlinks)

        def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
            stats.append(self.name)
            return self._entry.stat(follow_symlinks=follow_symlinks)

    class Listing:
        """os.scandir's iterator, handing out recording entries."""

        def __init__(self, path: str) -> None:
            self._listing = real_scandir(path)

        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._listing.close()

        def __iter__(self) -> Listing:
            return self

        def __next__(self) -> Entry:
            return Entry(next(self._listing))

    def spy_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if "task_" in str(path):
            stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", Listing)
    monkeypatch.setattr(os, "stat", spy_stat)
    (state / "task_1").rmdir()
    again = reopen(state)
    assert list(again.tasks) == [0, 1, 2]
    assert stats == []
    monkeypatch.undo()
    assert (state / "task_1").is_dir()  # a missing directory is still recreated


def copy_of_cmds(store: Store) -> bytes:
    """The writer's in-memory copy of `cmds`, which its index reads tasks from."""
    return bytes(store._index.data)


def assert_like_a_fresh_load(state: Path, store: Store) -> None:
    """The writer's copy is the file, and its views agree with a load from disk."""
    assert copy_of_cmds(store) == cmds_bytes(state)
    reader = Store.open(state, LOG, read_only=True)
    assert reader.list_reply() == store.list_reply()
    assert reader.list_ex_reply() == store.list_ex_reply()
    assert dict(reader.tasks) == dict(store.tasks)
    assert dict(reader.timings) == dict(store.timings)
    assert reader.next_id == store.next_id


def test_the_writers_copy_of_cmds_follows_every_write(state: Path, store: Store) -> None:
    assert_like_a_fresh_load(state, store)
    store.create(EVERY_MINUTE, (b"x" * 40,))
    store.create(AT_NINE, (b"echo", b"one"))
    store.create(EVERY_MINUTE, (b"two",))
    assert_like_a_fresh_load(state, store)
    store.remove(0)
    assert_like_a_fresh_load(state, store)
    # Into task 0's slot, with padding after it; then the end of the file again.
    store.create(AT_NINE, (b"three",))
    store.create(AT_NINE, (b"y" * 90,))
    assert_like_a_fresh_load(state, store)
    store.remove(4)
    store.remove(3)
    assert_like_a_fresh_load(state, store)
    assert list(store.tasks) == [1, 2]


def test_a_failed_create_leaves_the_copy_of_cmds_as_the_file(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    (state / "task_1").write_bytes(b"")  # in the way of the next task's directory
    with pytest.raises(StoreError):
        store.create(EVERY_MINUTE, (b"fails",))
    # NEXT_ID moved on in the file (an id once written is never handed out again);
    # the record was undone. The copy only has to be right where the index reads it.
    assert copy_of_cmds(store)[HEADER_SIZE:] == cmds_bytes(state)[HEADER_SIZE:]
    assert store.create(AT_NINE, (b"b",)) == 2
    assert_like_a_fresh_load(state, store)


def test_the_copy_of_cmds_gets_the_repairs_of_the_file(state: Path) -> None:
    body = encode_body(AT_NINE, (b"kept",))
    # NEXT_ID 0 is behind the live id 3, and a torn record follows.
    data = b"SATD" + struct.pack(">IQ", 3, 0) + encode_record(3, body, len(body) + 5)
    (state / "cmds").write_bytes(data + encode_record(TOMBSTONE, body, 60)[:20])
    store = Store.open(state, LOG)
    assert cmds_bytes(state) == b"SATD" + struct.pack(">IQ", 3, 4) + data[HEADER_SIZE:]
    assert_like_a_fresh_load(state, store)
    assert store.create(EVERY_MINUTE, (b"new",)) == 4  # appended where the file ends
    assert_like_a_fresh_load(state, store)
    store.close()


def test_the_copy_of_a_torn_header_is_the_new_header(state: Path) -> None:
    (state / "cmds").write_bytes(b"SATD\x00")
    store = Store.open(state, LOG)
    assert_like_a_fresh_load(state, store)
    store.create(EVERY_MINUTE, (b"a",))
    assert_like_a_fresh_load(state, store)
    store.close()


def test_a_task_created_with_a_timing_no_load_met(state: Path, store: Store) -> None:
    store.create(AT_NINE, (b"a",))
    store.create(AT_NINE, (b"b",))
    again = Store.open(state, LOG)
    timings = again.timings
    every_hour = Timing.parse("0", "*", "*")
    assert again.create(every_hour, (b"c",)) == 2
    again.create(AT_NINE, (b"d",))
    assert timings[2] is every_hour  # kept as given, not shared with later loads
    assert list(timings.items()) == [(0, AT_NINE), (1, AT_NINE), (2, every_hour), (3, AT_NINE)]
    assert list(timings.values()) == [AT_NINE, AT_NINE, every_hour, AT_NINE]
    assert (2, every_hour) in timings.items() and (2, AT_NINE) not in timings.items()
    assert again.tasks[2] == TaskEntry(2, every_hour, (b"c",))
    assert again.list_reply() == encode(ListReply(tuple(again.tasks.values())))
    again.remove(1)
    assert list(timings.items()) == [(0, AT_NINE), (2, every_hour), (3, AT_NINE)]
    again.remove(2)
    assert list(timings.items()) == [(0, AT_NINE), (3, AT_NINE)]
    assert 2 not in timings and timings.get(2) is None
    with pytest.raises(KeyError):
        timings[2]
    assert_like_a_fresh_load(state, again)
    again.close()


def test_it_handles_a_cmds_of_more_than_a_mebibyte(state: Path, store: Store) -> None:
    big = (b"printf", b"%s", b"z" * (1 << 20))
    store.create(EVERY_MINUTE, big)
    store.create(AT_NINE, (b"small",))
    reply = store.list_reply()
    assert len(reply) > 1 << 20
    assert reply == encode(
        ListReply((TaskEntry(0, EVERY_MINUTE, big), TaskEntry(1, AT_NINE, (b"small",))))
    )
    assert reopen(state).list_reply() == reply
    reader = Store.open(state, LOG, read_only=True)  # just written: racy, so read again
    assert reader.refresh() is False  # the same bytes (their copy is freed at once)
    assert reader.list_reply() == reply
    assert reader.tasks[0].argv == big


@pytest.mark.parametrize("told", [0, 10, 3 << 20, (3 << 20) + 100])
def test_it_reads_a_file_whose_size_changed_since_fstat(tmp_path: Path, told: int) -> None:
    content = bytes(range(256)) * (3 << 12)  # 3 MiB: more than one read past `told`
    path = tmp_path / "file"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_into_bytearray(fd, told) == content
    finally:
        os.close(fd)


# --- open_runs ------------------------------------------------------------------


def runs_of(opened: tuple[int, int] | None) -> bytes:
    """NBRUNS then the counted runs, read from an open_runs result (closing it)."""
    assert opened is not None
    fd, count = opened
    try:
        return struct.pack(">I", count) + os.pread(fd, count * 10, 4)
    finally:
        os.close(fd)


def test_it_opens_the_run_history(store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    assert store.open_runs(task_id) is None  # never finished a run
    append_run(store.task_dir(task_id), 1_790_000_000, 0)
    append_run(store.task_dir(task_id), 1_790_000_060, 3)
    opened = store.open_runs(task_id)
    assert opened is not None
    with pytest.raises(OSError):
        os.write(opened[0], b"x")  # read-only
    assert os.get_inheritable(opened[0]) is False
    assert runs_of(opened) == store.times_exitcodes_body(task_id)
    assert decode_runs(runs_of(store.open_runs(task_id))) == (
        Run(1_790_000_000, 0),
        Run(1_790_000_060, 3),
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x00\x00",
        struct.pack(">I", 2) + struct.pack(">qH", 10, 0) + b"\x00\x00\x00\x00\x00\x01",
        struct.pack(">IqHqH", 1, 10, 0, 20, 1),
        struct.pack(">IqHqH", 7, 10, 0, 20, 1),
    ],
    ids=["empty", "short", "torn-run", "unfinished-append", "count-too-high"],
)
def test_it_counts_only_complete_runs(store: Store, content: bytes) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    (store.task_dir(task_id) / "times-exitcodes").write_bytes(content)
    assert runs_of(store.open_runs(task_id)) == store.times_exitcodes_body(task_id)


def test_it_opens_no_history_of_a_missing_task_directory(store: Store) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    store.task_dir(task_id).rmdir()
    assert store.open_runs(task_id) is None


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_it_refuses_a_history_that_is_not_a_regular_file(
    state: Path, store: Store, kind: str
) -> None:
    task_id = store.create(EVERY_MINUTE, (b"true",))
    history = store.task_dir(task_id) / "times-exitcodes"
    if kind == "symlink":
        target = state.parent / "target"
        target.write_bytes(struct.pack(">IqH", 1, 10, 0))
        history.symlink_to(target)
    else:
        history.mkdir()
    before = open_fds()
    with pytest.raises(StoreError, match=f"runs of task {task_id}"):
        store.open_runs(task_id)
    assert open_fds() == before


# --- check ----------------------------------------------------------------------


def test_it_checks_a_fresh_directory(state: Path) -> None:
    Store.check(state)
    assert (state / "cmds").read_bytes() == b""
    assert stat.S_IMODE((state / "cmds").stat().st_mode) == 0o600
    Store.check(state)
    reopen(state)
    Store.check(state)


@pytest.mark.parametrize(
    "content",
    [b"SAT", b"SATD\x00\x00\x00\x03" + bytes(8) + b"a torn tail"],
    ids=["torn-header", "torn-tail"],
)
def test_it_passes_what_open_repairs(state: Path, content: bytes) -> None:
    (state / "cmds").write_bytes(content)
    Store.check(state)
    assert cmds_bytes(state) == content  # checked, not repaired
    reopen(state)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"SATX\x00\x00\x00\x01" + bytes(8), "not a saturnd cmds file"),
        (b"SATD\x00\x00\x00\x04" + bytes(8), "unsupported cmds version 4"),
    ],
    ids=["magic", "version"],
)
def test_it_refuses_in_check_what_open_refuses(state: Path, content: bytes, message: str) -> None:
    (state / "cmds").write_bytes(content)
    with pytest.raises(StoreError, match=message):
        Store.check(state)
    with pytest.raises(StoreError, match=message):
        Store.open(state, LOG)
    assert cmds_bytes(state) == content


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "missing-state-dir"])
def test_it_refuses_in_check_a_cmds_that_is_no_file(tmp_path: Path, state: Path, kind: str) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"")
    if kind == "symlink":
        (state / "cmds").symlink_to(target)
    elif kind == "directory":
        (state / "cmds").mkdir()
    elif kind == "fifo":
        os.mkfifo(state / "cmds", 0o600)
    else:
        state = tmp_path / "nowhere"
    before = open_fds()
    with pytest.raises(StoreError, match="cmds"):
        Store.check(state)
    with pytest.raises(StoreError):
        Store.open(state, LOG)
    assert open_fds() == before
    assert target.read_bytes() == b""


# --- whole tasks (CREATE-EX, LIST-EX) and REPLACE ----------------------------------

WHOLE = Task(
    Timing.cron("30 4 1,15 */2 5", zone="Europe/Paris"),
    (b"backup", b"--all"),
    Extras(((b"PATH", b"/opt/bin"),), b"yes\n", b""),
)
REBOOT = Task(Timing.cron("@reboot"), (b"sh", b"-c", b"echo up"), Extras(mailto=b"me"))


def course_entry(task_id: int, task: Task) -> TaskEntry:
    """What the course's LIST says of a task: the first three sets, the command line."""
    timing = task.timing
    return TaskEntry(task_id, Timing(timing.minutes, timing.hours, timing.daysofweek), task.argv)


def test_it_stores_a_whole_task(state: Path, store: Store) -> None:
    assert store.create_task(WHOLE) == 0
    assert store.create(AT_NINE, (b"ls",)) == 1
    assert store.create_task(REBOOT) == 2
    expected = {
        0: TaskEntry(0, WHOLE.timing, WHOLE.argv, WHOLE.extras),
        1: TaskEntry(1, AT_NINE, (b"ls",)),
        2: TaskEntry(2, REBOOT.timing, REBOOT.argv, REBOOT.extras),
    }
    assert dict(store.tasks) == expected
    assert dict(store.timings) == {key: entry.timing for key, entry in expected.items()}
    assert dict(reopen(state).tasks) == expected
    assert_like_a_fresh_load(state, store)


def test_it_answers_list_in_the_course_layout_and_list_ex_whole(store: Store) -> None:
    assert store.list_ex_reply() == encode(ListExReply(())) == b"OK\x00\x00\x00\x00"
    store.create_task(WHOLE)
    store.create(AT_NINE, (b"ls",))
    store.create_task(REBOOT)
    store.remove(1)
    assert store.list_reply() == encode(
        ListReply((course_entry(0, WHOLE), course_entry(2, REBOOT)))
    )
    reply = store.list_ex_reply()
    assert reply == encode(ListExReply(tuple(store.tasks.values())))
    assert store.list_ex_reply() is reply  # cached until the next change
    store.create_task(WHOLE)
    assert store.list_ex_reply() != reply


def test_it_refuses_a_whole_task_it_could_not_read_back(state: Path, store: Store) -> None:
    with pytest.raises(ValueError, match="NUL"):
        store.create_task(Task(EVERY_MINUTE, (b"x",), Extras(((b"A", b"\0"),))))
    assert store.next_id == 0
    assert dict(reopen(state).tasks) == {}


def history(state: Path, task_id: int) -> bytes:
    return (state / f"task_{task_id}" / "times-exitcodes").read_bytes()


def test_it_replaces_tasks_all_at_once(state: Path, store: Store) -> None:
    for name in (b"zero", b"one", b"two", b"three"):
        store.create(EVERY_MINUTE, (name,))
    store.remove(3)
    append_run(store.task_dir(1), 1_700_000_000, 0)
    kept = history(state, 1)
    assert store.replace([0, 2], [WHOLE, REBOOT]) == [4, 5]
    assert dict(store.tasks) == {
        1: TaskEntry(1, EVERY_MINUTE, (b"one",)),
        4: TaskEntry(4, WHOLE.timing, WHOLE.argv, WHOLE.extras),
        5: TaskEntry(5, REBOOT.timing, REBOOT.argv, REBOOT.extras),
    }
    assert store.next_id == 6
    assert sorted(p.name for p in state.iterdir()) == ["cmds", "task_1", "task_4", "task_5"]
    assert history(state, 1) == kept
    assert_like_a_fresh_load(state, store)
    # The store goes on writing the new file.
    assert store.create(AT_NINE, (b"after",)) == 6
    assert store.remove(4)
    assert_like_a_fresh_load(state, store)
    assert list(reopen(state).tasks) == [1, 5, 6]


def test_a_replace_that_removes_or_creates_nothing(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    assert store.replace([], []) == []
    assert store.replace([0, 0], []) == []  # an id named twice is removed once
    assert store.replace([], [WHOLE]) == [1]
    assert list(store.tasks) == [1]
    assert_like_a_fresh_load(state, store)


def test_a_replace_naming_an_unknown_task_changes_nothing(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    store.create(EVERY_MINUTE, (b"b",))
    store.remove(1)
    before = (cmds_bytes(state), sorted(state.iterdir()), dict(store.tasks))
    for missing in (1, 9):
        with pytest.raises(StoreError, match=f"^cannot replace: no task with id {missing}$"):
            store.replace([0, missing], [WHOLE])
    with pytest.raises(ValueError):
        store.replace([0], [WHOLE, Task(EVERY_MINUTE, (b"",))])
    assert (cmds_bytes(state), sorted(state.iterdir()), dict(store.tasks)) == before
    assert store.next_id == 2


def test_a_reader_follows_a_replace(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    age(state)
    reader = Store.open(state, LOG, read_only=True)
    store.replace([0], [WHOLE])
    assert reader.refresh() is True
    assert (
        dict(reader.tasks)
        == dict(store.tasks)
        == {1: TaskEntry(1, WHOLE.timing, WHOLE.argv, WHOLE.extras)}
    )


def test_a_replace_acknowledges_nothing_when_a_step_fails(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Store.open(state, LOG)
    for name in (b"zero", b"one", b"two"):
        base.create(EVERY_MINUTE, (name,))
    base.close()
    pristine = cmds_bytes(state)
    steps = ("mkdir", "open", "pwrite", "fsync", "rename")
    fail_at = 1
    while True:
        (state / "cmds").write_bytes(pristine)
        opened = Store.open(state, LOG)
        with monkeypatch.context() as patch:
            injected = Injected(patch, fail_at, errno.ENOSPC, steps)
            try:
                ids = opened.replace([1], [WHOLE, REBOOT])
            except StoreError as error:
                assert "No space left on device" in str(error)
                assert list(opened.tasks) == [0, 1, 2]
                assert cmds_bytes(state) == pristine
                names = sorted(p.name for p in state.iterdir())
                assert names == ["cmds", "task_0", "task_1", "task_2"], fail_at
                assert opened.next_id == 3
            else:
                # Only the flush of the directory, after the rename, may fail unseen.
                assert ids == [3, 4]
                if not injected.failed:
                    break
        opened.close()
        fail_at += 1
    assert fail_at > 6  # 2 mkdirs, open, pwrite, fsync, rename, then the directory's flush
    opened.close()
    assert list(reopen(state).tasks) == [0, 2, 3, 4]


# --- PAUSE and RESUME: one byte in place -----------------------------------------------


def pflags_at(state: Path, task_id: int) -> tuple[int, int]:
    """(offset in `cmds`, value) of a task's PFLAGS, found by decoding its record: the
    byte 8 past the end of its COMMANDLINE (4 of TIMEOUT, 4 of JITTER)."""
    data = cmds_bytes(state)
    for slot in scan_cmds(data, lean=True).slots:
        if slot.task_id == task_id:
            at = slot.offset + RECORD_HEAD_SIZE + slot.command_end + 8
            return at, data[at]
    raise KeyError(task_id)


def test_it_pauses_and_resumes_a_task_by_rewriting_one_byte(state: Path, store: Store) -> None:
    policies = Extras(((b"A", b"1"),), b"in", None, 60, 5, True, False, b"notify")
    store.create_task(Task(AT_NINE, (b"job",), policies))
    store.create_task(WHOLE)
    before = cmds_bytes(state)
    list_before = store.list_reply()
    at, value = pflags_at(state, 0)
    assert value == 0x01  # no-overlap
    assert store.set_paused(0, True) is True
    after = cmds_bytes(state)
    assert [i for i in range(len(before)) if before[i] != after[i]] == [at]
    assert after[at] == 0x05  # no-overlap | paused
    assert store.tasks[0].extras == policies.replace(paused=True)
    assert store.tasks[1].extras == WHOLE.extras
    assert store.list_reply() == list_before  # the course's LIST has no policies
    assert store.list_ex_reply() == encode(ListExReply(tuple(store.tasks.values())))
    assert store.paused_ids() == {0}
    assert_like_a_fresh_load(state, store)
    assert reopen(state).tasks[0].extras.paused
    # Already paused: OK, and nothing written.
    assert store.set_paused(0, True) is True
    assert cmds_bytes(state) == after
    assert store.set_paused(0, False) is True
    assert cmds_bytes(state) == before
    assert store.paused_ids() == frozenset()
    assert store.set_paused(1, False) is True  # not paused: nothing to do
    assert cmds_bytes(state) == before
    assert store.set_paused(7, True) is False
    assert store.remove(0)
    assert store.set_paused(0, True) is False


def test_a_reader_sees_a_pause_that_keeps_the_size_of_cmds(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    store.create(EVERY_MINUTE, (b"b",))
    age(state)
    reader = Store.open(state, LOG, read_only=True)  # not racy: the stamp is trusted
    assert reader.refresh() is False
    assert reader.paused_ids() == frozenset()
    size = os.stat(state / "cmds").st_size
    store.set_paused(1, True)
    assert os.stat(state / "cmds").st_size == size
    assert reader.refresh() is True
    assert reader.paused_ids() == {1}
    assert reader.tasks[1].extras.paused
    age(state)
    assert reader.refresh() is False
    store.set_paused(1, False)
    assert reader.refresh() is True
    assert reader.paused_ids() == frozenset()


def test_the_paused_ids_follow_every_write(state: Path, store: Store) -> None:
    def fresh() -> frozenset[int]:
        return Store.open(state, LOG, read_only=True).paused_ids()

    assert store.paused_ids() == fresh() == frozenset()
    store.create(EVERY_MINUTE, (b"a",))
    store.create_task(Task(EVERY_MINUTE, (b"b",), Extras(paused=True)))
    assert store.paused_ids() == fresh() == {1}
    cached = store.paused_ids()
    assert store.paused_ids() is cached  # no scan while nothing changes
    store.set_paused(0, True)
    store.create_task(Task(AT_NINE, (b"c",), Extras(paused=True, catch_up=True)))
    assert store.paused_ids() == fresh() == {0, 1, 2}
    store.remove(1)
    assert store.paused_ids() == fresh() == {0, 2}
    store.replace([0], [Task(EVERY_MINUTE, (b"d",), Extras(paused=True)), Task(AT_NINE, (b"e",))])
    assert store.paused_ids() == fresh() == {2, 3}
    store.set_paused(3, False)
    assert store.paused_ids() == fresh() == {2}
    assert Store.open(state, LOG).paused_ids() == {2}


def test_a_failed_pause_changes_nothing(
    state: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    before = cmds_bytes(state)
    for fail_at in (1, 2):  # the pwrite, then the fdatasync after it
        with monkeypatch.context() as patch:
            Injected(patch, fail_at, errno.EIO)
            with pytest.raises(StoreError, match="cannot pause task 0"):
                store.set_paused(0, True)
        assert cmds_bytes(state) == before
        assert store.paused_ids() == frozenset()
        assert not store.tasks[0].extras.paused
        assert_like_a_fresh_load(state, store)
    assert store.set_paused(0, True) is True
    assert reopen(state).paused_ids() == {0}


def test_a_read_only_store_cannot_pause(state: Path, store: Store) -> None:
    store.create(EVERY_MINUTE, (b"a",))
    with pytest.raises(StoreError):
        Store.open(state, LOG, read_only=True).set_paused(0, True)
