"""Scenario 3, a hostile file system.

- A pipes or state directory that is a symbolic link, owned by another user, or open to
  others: refused with one line (or tightened to 0700, with one log line).
- A FIFO deleted, or replaced by a regular file, while the daemon runs: recreated, and
  cassini works again at once.
- A read-only state directory: refused at start with one line; while running, a CREATE
  is not acknowledged (one log line each), minutes are skipped with one log line each,
  and everything comes back when the directory is writable again.
- A full disk, as RLIMIT_FSIZE on the daemon and, where a tmpfs can be mounted, as a
  small file system: nothing that was not stored is acknowledged, runs still record
  their exit code, and after a restart exactly the acknowledged tasks are there.
- A part that cannot start (its `cmds` damaged under it): the supervisor says why in one
  line each time and keeps the rest running, without a traceback.

Root ignores file modes, so the permission cases run the daemon as `nobody`; run by an
ordinary user, which cannot chown or setuid, they skip with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saturnd import taskdir
from tests.conftest import NOW, needs_root
from tests.daemon_harness import SATURND, owner_name, wait_for
from tests.reliability.support import (
    NOBODY,
    REPLY_PIPE,
    REQUEST_PIPE,
    Figures,
    Target,
    run_cassini,
)

MakeTarget = Callable[..., Target]
SOCKET = "saturnd.sock"


def saturnd(pipes: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SATURND, "-f", "-p", str(pipes), "-s", str(state)],
        capture_output=True,
        text=True,
        timeout=20,
    )


def one_line(text: str) -> str:
    assert text.count("\n") == 1, f"not one line: {text!r}"
    return text


@pytest.mark.scenario("3a. directories: symlink, other owner, open modes")
@pytest.mark.parametrize("which", ["pipes", "state"])
def test_it_refuses_a_symlinked_directory(tmp_path: Path, which: str, figures: Figures) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    dirs = {"pipes": tmp_path / "pipes", "state": tmp_path / "state"}
    dirs[which].symlink_to(real)
    result = saturnd(dirs["pipes"], dirs["state"])
    assert result.returncode == 1
    assert "symbolic link" in one_line(result.stderr)
    figures.iterations = 1
    figures.checked = f"{which} directory a symlink: exit 1, one line"


@pytest.mark.scenario("3a. directories: symlink, other owner, open modes")
@pytest.mark.parametrize("which", ["pipes", "state"])
@needs_root
def test_it_refuses_a_directory_of_another_user(tmp_path: Path, which: str) -> None:
    dirs = {"pipes": tmp_path / "pipes", "state": tmp_path / "state"}
    dirs[which].mkdir(mode=0o700)
    os.chown(dirs[which], NOBODY, NOBODY)
    result = saturnd(dirs["pipes"], dirs["state"])
    assert result.returncode == 1
    assert f"owned by {owner_name(NOBODY)}," in one_line(result.stderr)


@pytest.mark.scenario("3a. directories: symlink, other owner, open modes")
@pytest.mark.parametrize("which", ["pipes", "state"])
def test_it_refuses_roots_directory_when_running_as_nobody(nobody_root: Path, which: str) -> None:
    daemon = Target(nobody_root, NOW, as_user=NOBODY)
    directory = daemon.pipes if which == "pipes" else daemon.state
    directory.mkdir(mode=0o700)  # root's, inside nobody's own directory
    daemon.launch()
    assert daemon.wait_exit(timeout=20) == 1
    stderr = daemon.stderr_path.read_text()
    assert f"owned by {owner_name(0)}," in one_line(stderr)


@pytest.mark.scenario("3a. directories: symlink, other owner, open modes")
@pytest.mark.parametrize("which", ["pipes", "state"])
def test_it_tightens_a_directory_open_to_others(
    target: MakeTarget, tmp_path: Path, which: str
) -> None:
    directory = tmp_path / which
    directory.mkdir()
    directory.chmod(0o777)
    daemon = target(start=NOW)
    assert directory.stat().st_mode & 0o777 == 0o700
    lines = [line for line in daemon.log_text().splitlines() if "tightened" in line]
    assert len(lines) == 1 and str(directory) in lines[0]


# --- FIFOs under a running daemon ---------------------------------------------------


@pytest.mark.scenario("3b. a FIFO deleted or replaced while running")
@pytest.mark.parametrize("entry", [REQUEST_PIPE, REPLY_PIPE, SOCKET])
@pytest.mark.parametrize("how", ["deleted", "replaced by a file"])
def test_it_recreates_an_entry_removed_under_it(
    target: MakeTarget, entry: str, how: str, figures: Figures
) -> None:
    daemon = target(start=NOW)
    task = daemon.create("echo", "kept")
    path = daemon.pipes / entry
    # cassini on the transport the entry belongs to, or it would not notice.
    env = {**os.environ, "CASSINI_TRANSPORT": "socket" if entry == SOCKET else "fifo"}
    worst = 0.0
    for _ in range(3):
        if how == "replaced by a file":
            # Renamed over it (the daemon may recreate a deleted entry at once).
            (daemon.root / "plain").write_bytes(b"")
            os.replace(daemon.root / "plain", path)
        else:
            path.unlink()
        started = time.monotonic()

        def works() -> bool:
            listing = run_cassini(daemon.pipes, "-l", env=env)[1]
            return listing == f"{task}: * * * echo kept\n".encode()

        wait_for(works, timeout=40, what="cassini to work again")
        worst = max(worst, time.monotonic() - started)
    lines = [line for line in daemon.log_text().splitlines() if "making it again" in line]
    assert 3 <= len(lines) <= 6, lines
    figures.iterations = 3
    figures.latency(worst)
    figures.checked = (
        f"{entry} {how} 3 times while running: made again, one log line each; worst "
        "latency = removal to cassini working again"
    )
    assert worst < 2.0, f"cassini failed for {worst:.1f} s after {entry} was {how}"


@pytest.mark.scenario("3b. a FIFO deleted or replaced while running")
def test_it_recreates_a_pipes_directory_removed_under_it(
    target: MakeTarget, figures: Figures
) -> None:
    daemon = target(start=NOW)
    task = daemon.create("echo", "kept")
    # A /tmp cleaner took the whole directory. Moved away first, then deleted: the daemon
    # may recreate its FIFOs at any instant, which would race a plain rmtree.
    gone = daemon.pipes.with_name("pipes.gone")
    daemon.pipes.rename(gone)
    shutil.rmtree(gone)
    started = time.monotonic()

    def works() -> bool:
        return run_cassini(daemon.pipes, "-l")[1] == f"{task}: * * * echo kept\n".encode()

    wait_for(works, timeout=40, what="cassini to work again")
    took = time.monotonic() - started
    assert daemon.pipes.stat().st_mode & 0o777 == 0o700
    assert "vanished; creating it again" in daemon.log_text()
    figures.latency(took)
    assert took < 2.0


# --- a read-only state directory -----------------------------------------------------


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line or " WARNING " in line]


@pytest.mark.scenario("3c. read-only state directory")
def test_it_refuses_to_start_on_a_read_only_state_directory(nobody_root: Path) -> None:
    daemon = Target(nobody_root, NOW, as_user=NOBODY)
    daemon.state.mkdir(mode=0o500)
    os.chown(daemon.state, NOBODY, NOBODY)
    daemon.launch()
    assert daemon.wait_exit(timeout=20) == 1
    assert "Permission denied" in one_line(daemon.stderr_path.read_text())


@pytest.mark.scenario("3c. read-only state directory")
def test_it_acknowledges_nothing_while_the_state_directory_is_read_only(
    nobody_root: Path, figures: Figures
) -> None:
    daemon = Target(nobody_root, NOW, as_user=NOBODY).start(wait_tick=False)
    try:
        wait_for(lambda: daemon.handled_minute() == NOW // 60, what="the first tick")
        every_minute = ((1 << 60) - 1, (1 << 24) - 1, 0x7F)
        assert daemon.raw_create([b"true"], every_minute) == b"OK" + bytes(8)
        daemon.new_log()
        daemon.state.chmod(0o500)
        refused = 0
        for _ in range(3):
            assert daemon.raw_create([b"echo", b"lost"]) == b"", "acknowledged, not stored"
            refused += 1
        assert [argv for _, argv in daemon.raw_list()] == [(b"true",)]
        seen: list[str] = []

        def logged(text: str) -> bool:
            seen.append(daemon.new_log())
            return text in "".join(seen)

        for minute in (1, 2):
            daemon.set_time(NOW + 60 * minute)
            line = f"08:0{minute} as handled"
            wait_for(lambda: logged(line), what="the minute's log line")  # noqa: B023
        time.sleep(0.2)
        seen.append(daemon.new_log())
        errors = _errors("".join(seen))
        assert len([e for e in errors if "not acknowledged" in e]) == refused, errors
        assert len([e for e in errors if "as handled" in e]) == 2, errors
        assert len(errors) == refused + 2, errors
        assert daemon.raw_list() == [(0, (b"true",))]
        assert daemon.exchange(b"TX" + bytes(8)) == b"OK" + bytes(4)  # no run meanwhile
        daemon.state.chmod(0o700)
        assert daemon.raw_create([b"echo", b"back"]) == b"OK" + (4).to_bytes(8, "big")
        # The minutes that could not be recorded were not handled: they are owed, and
        # run (once each) as a catch-up at the first minute that can be recorded.
        daemon.step_to(NOW + 180)
        wait_for(lambda: daemon.exchange(b"TX" + bytes(8))[:6] == b"OK\0\0\0\x03", what="3 runs")
        daemon.kill_group()
        daemon.start(wait_tick=False)
        assert [argv for _, argv in daemon.raw_list()] == [(b"true",), (b"echo", b"back")]
    finally:
        with contextlib.suppress(OSError):
            daemon.state.chmod(0o700)
        daemon.stop()
    figures.iterations = refused + 2
    figures.checked = (
        "state directory made read-only under a daemon running as nobody: 3 CREATE not "
        "acknowledged and 2 minutes not run, one log line each; LIST served; once "
        "writable, the owed minutes run once each, and after a restart exactly the "
        "acknowledged tasks"
    )


# --- a full disk --------------------------------------------------------------------

TRANSPORTS = ("fifo", "socket")


def forced(transport: str) -> dict[str, str]:
    """cassini's environment on one transport."""
    return {**os.environ, "CASSINI_TRANSPORT": transport}


def refusal_is_told(transport: str, err: bytes) -> bool:
    """What cassini says of a CREATE the daemon could not store: on the socket, the
    daemon's reason (ER EM); on the FIFOs, which have no such error, only that the
    reply FIFO was closed without a reply."""
    if transport == "socket":
        text = err.decode()
        return text.startswith("cassini: cannot store") and text.count("\n") == 1
    return b"without replying" in err


@pytest.mark.scenario("3d. full disk (RLIMIT_FSIZE, small tmpfs)")
def test_it_acknowledges_nothing_it_could_not_store_on_a_full_disk(
    target: MakeTarget, tmp_path: Path, figures: Figures
) -> None:
    limit = 64 * 1024
    daemon = target(start=NOW, fsize=limit)
    acked: dict[int, str] = {}
    refused = 0
    for index in range(60):
        transport = TRANSPORTS[index % 2]
        code, out, err, _ = run_cassini(
            daemon.pipes, "-c", "echo", f"{index:04d}" + "x" * 2000, env=forced(transport)
        )
        if code == 0:
            acked[int(out)] = f"{index:04d}"
        else:
            assert refusal_is_told(transport, err), err
            refused += 1
    assert refused >= 20 and len(acked) >= 20
    errors = _errors(daemon.log_text())
    assert len(errors) == refused, errors[:5]
    # A run whose output the disk cannot hold is still recorded, and nothing is left.
    task = next(iter(acked))
    flood = daemon.create("-m", "1", "-H", "8", "sh", "-c", "head -c 200000 /dev/zero; exit 3")
    daemon.step_to(NOW + 60)
    wait_for(lambda: daemon.runs(flood), what="the flood's run")
    assert daemon.runs(flood) == [("2026-11-21 08:01:00", 3)]
    assert (daemon.state / f"task_{flood}" / "stdout").stat().st_size <= limit
    assert not list(daemon.state.rglob("*.tmp"))
    # After a restart without the limit: exactly the acknowledged tasks.
    daemon.kill_group()
    daemon.fsize = None
    daemon.start(wait_tick=False)
    listing = daemon.cassini("-l").stdout.decode().splitlines()
    listed = {int(line.split(":")[0]): line.split()[-1][:4] for line in listing}
    del listed[flood]
    assert listed == acked
    assert task in listed
    figures.iterations = refused + len(acked)
    figures.checked = (
        f"RLIMIT_FSIZE {limit // 1024} KiB: {len(acked)} CREATE stored and acknowledged, "
        f"{refused} refused (no reply on the FIFOs, the reason on the socket) and one log line "
        "each; a run whose output does "
        "not fit is recorded (exit 3); after a restart exactly the acknowledged tasks"
    )


def saturnd_status(daemon: Target) -> tuple[int, dict[str, object]]:
    """`saturnd status --json` on this daemon: (exit status, the document)."""
    done = subprocess.run(
        [SATURND, "status", "-p", str(daemon.pipes), "-s", str(daemon.state), "--json"],
        capture_output=True,
        env=daemon.env,
        timeout=20,
    )
    return done.returncode, json.loads(done.stdout)


def set_fsize(pid: int, limit: int) -> None:
    """Change a daemon's process's soft file size limit (any user may, on its own)."""
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


@pytest.mark.scenario("3d. full disk (RLIMIT_FSIZE, small tmpfs)")
def test_it_records_the_runs_it_missed_once_space_is_back(
    target: MakeTarget, figures: Figures
) -> None:
    daemon = target(start=NOW)
    task = daemon.create("sh", "-c", "echo tick")
    task_dir = daemon.state / f"task_{task}"
    # The task's history is one run short of a file size limit, which its runs' P5s
    # get from the executor: their records are refused (EFBIG) as on a full disk,
    # while the listener, the executor's own files and the outputs still fit.
    limit = 64 * 1024
    seeded = (limit - 4) // 10
    old = [(NOW - 60 * (seeded - index), 0) for index in range(seeded)]
    (task_dir / "times-exitcodes").write_bytes(
        struct.pack(">I", seeded) + b"".join(struct.pack(">qH", *run) for run in old)
    )
    executor = daemon.parts()["executor"]
    set_fsize(executor, limit)
    daemon.new_log()
    missed = [NOW + 60 * minute for minute in (1, 2, 3)]
    for moment in missed:
        daemon.step_to(moment)
        wait_for(
            lambda: len(taskdir.pending_runs(task_dir)) == missed.index(moment) + 1,  # noqa: B023
            what="the run to be kept pending",
        )
    code, document = saturnd_status(daemon)
    assert code == 4, document
    assert document["runs_not_recorded"] == 3
    assert (
        f"3 runs of task {task} not recorded yet, the oldest from 2026-11-21 08:01:00"
        in " ".join(map(str, document["problems"]))  # type: ignore[call-overload]
    )
    # Space comes back: the P5s that kept the runs record them by themselves.
    set_fsize(executor, resource.RLIM_INFINITY)
    for run in taskdir.pending_runs(task_dir):
        with contextlib.suppress(ProcessLookupError):
            set_fsize(run.pid, resource.RLIM_INFINITY)
    freed = time.monotonic()

    def history() -> list[tuple[int, int]]:
        data = (task_dir / "times-exitcodes").read_bytes()
        count = struct.unpack_from(">I", data)[0]
        return [struct.unpack_from(">qH", data, 4 + 10 * i) for i in range(count)]

    wait_for(lambda: len(history()) == seeded + 3, timeout=70, what="the missed runs")
    took = time.monotonic() - freed
    assert history() == [*old, *((moment, 0) for moment in missed)]
    assert (task_dir / "stdout").read_bytes() == b"tick\n"
    log = daemon.new_log().splitlines()
    kept = [line for line in log if "kept pending" in line]
    assert len(kept) == 3 and all("File too large" in line for line in kept), log
    recovered = [line for line in log if "could not be recorded earlier" in line]
    assert len(recovered) == 1, log
    assert recovered[0].endswith(
        f"recorded 3 runs of task {task} that could not be recorded earlier (from 08:01 to 08:03)"
    )
    assert not [line for line in log if "LOST" in line], log
    code, document = saturnd_status(daemon)
    assert code == 0 and document["problems"] == [] and document["runs_not_recorded"] == 0
    # The next run comes after them.
    daemon.step_to(NOW + 240)
    wait_for(lambda: len(history()) == seeded + 4, what="the next run")
    assert history()[-4:] == [(moment, 0) for moment in (*missed, NOW + 240)]

    # Nothing pending is left: the course's files, the history and the kept outputs.
    def left() -> list[str]:
        return sorted(name for name in os.listdir(task_dir) if not name.startswith("kept."))

    # The run's marker goes just after its record.
    wait_for(
        lambda: left() == ["history", "stderr", "stdout", "times-exitcodes"],
        what=f"only the course's files and the history in {task_dir}",
    )
    figures.iterations = 3
    figures.latency(took)
    figures.checked = (
        "a task's records refused (RLIMIT_FSIZE) for 3 minutes: 3 runs kept pending, status "
        "exit 4 with a problem line; once allowed, recorded in order by their own P5s with "
        "one log line, status clean again; worst latency = limit raised to recorded"
    )


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, if this machine lets us mount one."""
    mount = tmp_path / "small"
    mount.mkdir(mode=0o700)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.scenario("3d. full disk (RLIMIT_FSIZE, small tmpfs)")
def test_it_survives_a_really_full_file_system(
    target: MakeTarget, tmp_path: Path, small_fs: Path, figures: Figures
) -> None:
    state = small_fs / "state"
    daemon = Target(tmp_path, NOW)
    daemon.state = state
    daemon.start()
    try:
        ticker = daemon.create("sh", "-c", "echo tick")
        filler = small_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(4096))
        finally:
            os.close(fd)
        acked, refused = [], 0
        for index in range(20):
            transport = TRANSPORTS[index % 2]
            code, out_, err, _ = run_cassini(
                daemon.pipes, "-c", "echo", "y" * 3000, str(index), env=forced(transport)
            )
            if code == 0:
                acked.append(int(out_))
            else:
                assert refusal_is_told(transport, err), err
                refused += 1
        assert refused > 1  # on both transports
        # The minute cannot be recorded as handled: it waits, and nothing runs.
        daemon.set_time(NOW + 60)
        time.sleep(0.5)
        assert daemon.answers()
        assert daemon.handled_minute() == NOW // 60
        filler.unlink()
        daemon.step_to(NOW + 120)
        # Owed minutes run once each, as a catch-up: two runs, none twice.
        wait_for(lambda: len(daemon.runs(ticker)) == 2, what="runs to resume")
        daemon.kill_group()
        daemon.start(wait_tick=False)
        listed = [int(line.split(b":")[0]) for line in daemon.cassini("-l").stdout.splitlines()]
        assert listed == [ticker, *acked]
        # The log could not take every line: it said so once, without a traceback.
        stderr = daemon.stderr_path.read_text()
        assert "Traceback" not in stderr and "Logging error" not in stderr, stderr
    finally:
        daemon.stop()
    figures.iterations = refused + len(acked)
    figures.checked = (
        f"a 512 KiB tmpfs filled up: {len(acked)} CREATE acknowledged, {refused} refused; "
        "runs resume once space is freed; after a restart exactly the acknowledged tasks"
    )


@pytest.mark.scenario("3d. full disk (RLIMIT_FSIZE, small tmpfs)")
def test_it_records_a_run_that_filled_the_disk_once_space_is_back(
    tmp_path: Path, small_fs: Path, figures: Figures
) -> None:
    daemon = Target(tmp_path, NOW)
    daemon.state = small_fs / "state"
    daemon.start()
    filler = small_fs / "filler"
    try:
        # The run itself fills the file system, after the minute was recorded as handled:
        # its output is cut and its record refused (the history's first page).
        task = daemon.create(
            "-m", "1", "-H", "8", "sh", "-c", f"head -c 1M /dev/zero > {filler}; echo tick"
        )
        task_dir = daemon.state / f"task_{task}"
        daemon.step_to(NOW + 60)
        wait_for(lambda: taskdir.pending_runs(task_dir), what="the run to be kept pending")
        code, document = saturnd_status(daemon)
        assert code == 4 and document["runs_not_recorded"] == 1, document
        filler.unlink()
        wait_for(lambda: daemon.runs(task) == [("2026-11-21 08:01:00", 0)], what="the record")
        log = daemon.log_text()
        assert log.count("kept pending") == 1, log
        assert (
            f"recorded 1 run of task {task} that could not be recorded earlier (from 08:01); "
            "output cut by the full disk: 08:01"
        ) in log
        assert saturnd_status(daemon)[1]["runs_not_recorded"] == 0
        assert not list(task_dir.glob("pending.*")) and not list(task_dir.glob("*.tmp"))
    finally:
        daemon.stop()
        filler.unlink(missing_ok=True)
    figures.iterations = 1
    figures.checked = (
        "a run fills a 512 KiB tmpfs: its record kept pending (status exit 4), recorded by "
        "its P5 once the space is freed, the log saying its output was cut"
    )


# --- a part that cannot start --------------------------------------------------------


@pytest.mark.scenario("3e. a part that cannot start")
def test_it_says_why_a_part_cannot_start_and_keeps_trying(
    target: MakeTarget, figures: Figures
) -> None:
    daemon = target(start=NOW)
    task = daemon.create("true")
    daemon.step_to(NOW + 60)  # the executor has the task in its table now
    wait_for(lambda: len(daemon.runs(task)) == 1, what="the first run")
    cmds = daemon.state / "cmds"
    good = cmds.read_bytes()
    cmds.write_bytes(b"JUNK" + good[4:])
    listener = daemon.parts()["listener"]
    daemon.new_log()
    os.kill(listener, signal.SIGKILL)
    time.sleep(3)
    log = daemon.new_log()
    assert "Traceback" not in log, log
    reasons = [line for line in log.splitlines() if "cannot start" in line]
    assert reasons and all("not a saturnd cmds file" in line for line in reasons), log
    # The executor goes on meanwhile, with the table it has.
    history = daemon.state / f"task_{task}" / "times-exitcodes"
    daemon.step_to(NOW + 120)
    wait_for(lambda: history.read_bytes()[:4] == b"\0\0\0\x02", what="the second run")
    cmds.write_bytes(good)
    wait_for(daemon.answers, timeout=10, what="the listener to come back")
    assert len(daemon.runs(task)) == 2
    figures.iterations = len(reasons)
    figures.checked = (
        "cmds damaged and the listener killed: one line per failed start, no traceback, "
        "growing pauses, the executor still runs tasks; back once repaired"
    )
