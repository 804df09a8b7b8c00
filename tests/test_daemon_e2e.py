"""End to end: the real `saturnd -f --clock FILE` and the real `cassini`.

No test waits for a real minute: the fake clock is stepped and the harness waits until
the executor has handled each minute.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from tests.conftest import NOW, needs_root
from tests.daemon_harness import SATURND, Daemon, crontab_field, owner_name, wait_for

MIDNIGHT = NOW - 8 * 3600  # Saturday 2026-11-21 00:00:00 UTC

MakeDaemon = Callable[..., Daemon]


_expand = crontab_field


def test_it_runs_every_task_once_per_matching_minute_over_a_day(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(start=MIDNIGHT)
    schedules = [
        ("*/15", "*", "*"),
        ("0", "9,14", "*"),
        ("30", "12", "6"),  # Saturday
        ("0-4", "10", "*"),
        ("*", "*", "0"),  # Sunday: only the last step, 00:00 on Sunday
        ("59", "23", "6"),
    ]
    ids = [daemon.create("-m", m, "-H", h, "-d", d, "true") for m, h, d in schedules]
    expected = dict.fromkeys(ids, 0)
    for moment in daemon.steps(MIDNIGHT + 60, 1440):
        wall = datetime.fromtimestamp(moment, UTC)
        weekday = (wall.weekday() + 1) % 7
        for task_id, (m, h, d) in zip(ids, schedules, strict=True):
            if (
                wall.minute in _expand(m, 59)
                and wall.hour in _expand(h, 23)
                and weekday in _expand(d, 6)
            ):
                expected[task_id] += 1
    assert expected[ids[0]] == 96 and expected[ids[4]] == 1
    wait_for(
        lambda: all(len(daemon.runs(i)) == n for i, n in expected.items()),
        timeout=30,
        what="every run to be recorded",
    )
    time.sleep(0.2)
    assert {i: len(daemon.runs(i)) for i in ids} == expected
    # Each run is recorded with the (fake) time it started, at second 0 of its minute.
    assert [t for t, _ in daemon.runs(ids[1])] == ["2026-11-21 09:00:00", "2026-11-21 14:00:00"]


def _run_once(daemon: Daemon, *command: str) -> int:
    task_id = daemon.create("-m", "1", "-H", "8", *command)
    daemon.step_to(NOW + 60)
    wait_for(lambda: daemon.runs(task_id), what="the run to finish")
    return task_id


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (("true",), 0),
        (("sh", "-c", "exit 3"), 3),
        (("sh", "-c", "kill -9 $$"), 0xFFFF),
        (("/nonexistent/program",), 127),
    ],
)
def test_it_records_exit_codes(
    make_daemon: MakeDaemon, command: tuple[str, ...], code: int
) -> None:
    daemon = make_daemon()
    task_id = _run_once(daemon, *command)
    assert daemon.runs(task_id) == [("2026-11-21 08:01:00", code)]
    if code == 127:
        stderr = daemon.cassini("-e", str(task_id)).stdout
        assert b"/nonexistent/program" in stderr and stderr.count(b"\n") == 1


def test_it_keeps_the_exact_output_of_the_last_run(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    task_id = daemon.create("sh", "-c", 'printf "out %s\\0x" "$(date +%N)"; printf "err" >&2')
    assert daemon.cassini("-o", str(task_id), check=False).returncode == 1  # never ran
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(daemon.runs(task_id)) == 1)
    first = daemon.cassini("-o", str(task_id)).stdout
    daemon.step_to(NOW + 120)
    wait_for(lambda: len(daemon.runs(task_id)) == 2)
    second = daemon.cassini("-o", str(task_id)).stdout
    assert first.startswith(b"out ") and first.endswith(b"\0x") and first != second
    assert daemon.cassini("-e", str(task_id)).stdout == b"err"


def test_it_lets_a_pipeline_end_like_in_a_shell(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    task_id = _run_once(daemon, "sh", "-c", "yes | head -1")
    assert daemon.runs(task_id)[0][1] == 0
    assert daemon.cassini("-o", str(task_id)).stdout == b"y\n"
    assert daemon.cassini("-e", str(task_id)).stdout == b""


def test_it_removes_a_task_while_it_runs_and_leaves_nothing(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    marker = daemon.root / "started"
    task_id = daemon.create("-m", "1", "-H", "8", "sh", "-c", f"touch {marker}; sleep 1")
    daemon.step_to(NOW + 60)
    wait_for(marker.exists, what="the run to start")
    daemon.cassini("-r", str(task_id))
    assert not (daemon.state / f"task_{task_id}").exists()
    time.sleep(1.3)  # the run ends after its sleep 1
    assert not (daemon.state / f"task_{task_id}").exists()
    assert [p.name for p in daemon.state.iterdir() if "removed" in p.name] == []
    assert daemon.cassini("-x", str(task_id), check=False).returncode == 1


def test_it_keeps_tasks_histories_and_ids_across_a_restart(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon()
    first = daemon.create("-m", "*", "echo", "a")
    second = daemon.create("-m", "0", "echo", "b")
    daemon.cassini("-r", str(second))
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(daemon.runs(first)) == 1)
    listing = daemon.cassini("-l").stdout
    daemon.stop()
    # Restart in the same minute: that minute was handled, nothing runs again.
    again = make_daemon(start=NOW + 90)
    assert again.cassini("-l").stdout == listing
    assert again.create("true") == second + 1  # ids are never reused
    time.sleep(0.3)
    assert len(again.runs(first)) == 1
    again.step_to(NOW + 120)
    wait_for(lambda: len(again.runs(first)) == 2)
    assert [t for t, _ in again.runs(first)] == ["2026-11-21 08:01:00", "2026-11-21 08:02:00"]


def test_it_catches_up_minutes_missed_while_stopped(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    task_id = daemon.create("-m", "*", "true")
    daemon.stop()
    again = make_daemon(start=NOW + 3 * 60)  # down for minutes 1 and 2: owed, in order
    wait_for(lambda: len(again.runs(task_id)) == 3)
    assert [t for t, _ in again.runs(task_id)] == ["2026-11-21 08:03:00"] * 3


def test_it_leaves_no_process_after_terminate(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    pids = daemon.pids()
    assert len(pids) == 3  # supervisor, listener, executor
    assert daemon.cassini("-q").stdout == b""
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=10) == 0
    wait_for(
        lambda: (
            not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
        ),
        what="every daemon process to end",
    )
    assert not (daemon.state / "saturnd.pid").exists()


def test_it_says_a_second_daemon_is_already_running(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    result = subprocess.run(
        [
            SATURND,
            "-f",
            "-p",
            str(daemon.pipes),
            "-s",
            str(daemon.state),
            "--clock",
            str(daemon.clock_file),
        ],
        capture_output=True,
        timeout=10,
        env=daemon.env,
    )
    assert result.returncode == 0
    assert f"already running (pid {daemon.pids()[0]})".encode() in result.stderr


def test_it_restarts_a_part_that_dies(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    task_id = daemon.create("true")
    _supervisor, *children = daemon.pids()
    for child in children:
        os.kill(child, signal.SIGKILL)
        wait_for(
            lambda victim=child: len(daemon.pids()) == 3 and victim not in daemon.pids(),
            what="the part to be restarted",
        )
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(daemon.runs(task_id)) == 1)
    assert "died unexpectedly" in (daemon.state / "saturnd.log").read_text()


# --- a raw client written from PROTOCOL.md, not from our codec ---------------------


def raw_exchange(daemon: Daemon, request: bytes, read_timeout: float = 5.0) -> bytes:
    """Write `request`, read the whole reply until the daemon closes its end."""
    reply_fd = os.open(daemon.pipes / "saturnd-reply-pipe", os.O_RDONLY | os.O_NONBLOCK)
    request_fd = os.open(daemon.pipes / "saturnd-request-pipe", os.O_WRONLY)
    try:
        os.write(request_fd, request)
        os.close(request_fd)  # this client closes before reading: both must work
        request_fd = -1
        chunks = []
        import select

        deadline = time.monotonic() + read_timeout
        seen = False
        while time.monotonic() < deadline:
            readable, _, _ = select.select([reply_fd], [], [], 0.1)
            if not readable:
                continue
            data = os.read(reply_fd, 65536)
            if not data:
                if seen:
                    break
                continue
            seen = True
            chunks.append(data)
        return b"".join(chunks)
    finally:
        if request_fd >= 0:
            os.close(request_fd)
        os.close(reply_fd)


def test_it_answers_a_raw_client_byte_for_byte(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    # CREATE "echo test-1" every Wednesday at 9:00 and 14:00 (the worked example).
    create = bytes.fromhex(
        "4352 0000000000000001 00004200 08 00000002 00000004 6563686f 00000006 746573742d31"
    )
    assert raw_exchange(daemon, create) == bytes.fromhex("4f4b 0000000000000000")
    assert raw_exchange(daemon, b"LS") == bytes.fromhex(
        "4f4b 00000001 0000000000000000 0000000000000001 00004200 08"
        " 00000002 00000004 6563686f 00000006 746573742d31"
    )
    assert raw_exchange(daemon, bytes.fromhex("5458 0000000000000000")) == bytes.fromhex(
        "4f4b 00000000"
    )
    assert raw_exchange(daemon, bytes.fromhex("534f 0000000000000000")) == b"ERNR"
    assert raw_exchange(daemon, bytes.fromhex("5345 0000000000000007")) == b"ERNF"
    assert raw_exchange(daemon, bytes.fromhex("524d 0000000000000007")) == b"ERNF"
    assert raw_exchange(daemon, bytes.fromhex("524d 0000000000000000")) == b"OK"
    assert raw_exchange(daemon, b"LS") == bytes.fromhex("4f4b 00000000")
    assert raw_exchange(daemon, b"TM") == b"OK"
    assert daemon.proc is not None and daemon.proc.wait(timeout=10) == 0


def test_it_reports_runs_to_a_raw_client(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    task_id = _run_once(daemon, "sh", "-c", "printf hi; exit 4")
    tx = raw_exchange(daemon, b"TX" + struct.pack(">Q", task_id))
    assert tx == b"OK" + struct.pack(">IqH", 1, NOW + 60, 4)
    assert raw_exchange(daemon, b"SO" + struct.pack(">Q", task_id)) == b"OK\0\0\0\x02hi"


# --- bad input ---------------------------------------------------------------------


BAD_REQUESTS = {
    "garbage opcode": b"ZZ\x00\x01",
    "truncated request": b"CR\x00\x00",
    "argc 2**32-1": b"CR" + bytes(13) + b"\xff\xff\xff\xff",
    "string of 4 GiB": b"CR" + bytes(13) + b"\x00\x00\x00\x01\xff\xff\xff\xff",
    "never writes": b"",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_it_survives_bad_requests(
    make_daemon: MakeDaemon, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # cassini on the FIFOs too: over the socket the bad bytes could not delay it at all.
    monkeypatch.setenv("CASSINI_TRANSPORT", "fifo")
    daemon = make_daemon()
    daemon.create("-m", "5", "echo", "kept")
    before = daemon.cassini("-l").stdout
    cmds = (daemon.state / "cmds").read_bytes()
    holder = os.open(daemon.pipes / "saturnd-request-pipe", os.O_WRONLY)
    os.write(holder, BAD_REQUESTS[name])  # and keep the pipe open, writing nothing more
    time.sleep(0.05)
    started = time.monotonic()
    assert daemon.cassini("-l").stdout == before
    assert time.monotonic() - started < 2.0
    os.close(holder)
    assert (daemon.state / "cmds").read_bytes() == cmds
    assert "request rejected" in (daemon.state / "saturnd.log").read_text() or name in (
        "never writes",
    )


@pytest.mark.parametrize("transport", ["socket", "fifo"])
def test_it_survives_a_client_that_never_reads_its_reply(
    make_daemon: MakeDaemon, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    daemon = make_daemon()
    for index in range(20):  # a LIST reply larger than a pipe buffer
        daemon.create("echo", "x" * 4000, str(index))
    before = daemon.cassini("-l").stdout
    # Opens the reply FIFO, sends LIST, never reads.
    reply_fd = os.open(daemon.pipes / "saturnd-reply-pipe", os.O_RDONLY | os.O_NONBLOCK)
    request_fd = os.open(daemon.pipes / "saturnd-request-pipe", os.O_WRONLY)
    os.write(request_fd, b"LS")
    time.sleep(0.05)
    started = time.monotonic()
    os.close(request_fd)
    monkeypatch.setenv("CASSINI_TRANSPORT", transport)
    try:
        if transport == "fifo":
            # What the FIFOs can promise: the daemon gives up on the stalled reader
            # within its stall timeout; once that reader is gone (and its reply with the
            # FIFO's buffer), the next client gets its own reply.
            wait_for(
                lambda: "client stopped reading" in (daemon.state / "saturnd.log").read_text(),
                timeout=3,
                what="the stalled reply to be dropped",
            )
            os.close(reply_fd)
            reply_fd = -1
        # The socket: its own connection, whatever the FIFO's reader does meanwhile.
        proc = daemon.cassini("-l", check=False)
        elapsed = time.monotonic() - started
    finally:
        if reply_fd >= 0:
            os.close(reply_fd)
    assert proc.returncode == 0 and proc.stdout == before
    assert elapsed < (2.5 if transport == "fifo" else 0.9)


def test_it_loses_no_acknowledged_task_when_killed(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    acknowledged: dict[int, str] = {}
    removed: set[int] = set()
    assert daemon.proc is not None
    killer_at = time.monotonic() + 1.5
    index = 0
    while time.monotonic() < killer_at:
        result = daemon.cassini("-c", "echo", f"task-{index}", check=False)
        if result.returncode == 0:
            acknowledged[int(result.stdout)] = f"task-{index}"
        if index % 3 == 2 and acknowledged:
            victim = min(set(acknowledged) - removed, default=None)
            if (
                victim is not None
                and daemon.cassini("-r", str(victim), check=False).returncode == 0
            ):
                removed.add(victim)
        index += 1
    # kill -9 the whole daemon while a client is mid-stream.
    client = subprocess.Popen(
        [str(Path(SATURND).parent / "cassini"), "-p", str(daemon.pipes), "-c", "echo", "last"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    parts = daemon.pids()
    for pid in parts:
        os.kill(pid, signal.SIGKILL)
    try:
        out, _ = client.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        # Its request was sent but never answered: cassini waits out its own reply
        # timeout (30 s). Nothing was acknowledged to it; it must not outlive the kill.
        client.kill()
        out, _ = client.communicate()
    if client.returncode == 0:
        acknowledged[int(out)] = "last"
    daemon.proc.wait(timeout=10)
    daemon.proc = None
    # A part killed in the middle of an fsync may exit after the supervisor; until it
    # has, it holds the pid file's lock and a new daemon would say "already running".
    wait_for(lambda: not any(_alive(pid) for pid in parts), what="every part to exit")
    again = make_daemon(start=NOW)
    listing = again.cassini("-l").stdout.decode().splitlines()
    listed = {int(line.split(":")[0]): line.rsplit(" ", 1)[1] for line in listing}
    for task_id, text in acknowledged.items():
        if task_id not in removed:
            assert listed.get(task_id) == text
    assert not removed & set(listed)
    assert again.create("true") > max(acknowledged)


def test_it_refuses_a_symlinked_state_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    result = subprocess.run(
        [SATURND, "-f", "-p", str(tmp_path / "pipes"), "-s", str(link)],
        capture_output=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert result.stderr.decode().count("\n") == 1 and "symbolic link" in result.stderr.decode()


@needs_root
def test_it_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user (uid 65534)")
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)  # nobody: root ignores modes, so ownership is the test
    result = subprocess.run(
        [SATURND, "-f", "-p", str(other), "-s", str(tmp_path / "state")],
        capture_output=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert f"{other} is owned by {owner_name(65534)}, not by you;" in result.stderr.decode()
    assert result.stderr.decode().count("\n") == 1


def test_it_tightens_an_open_directory_of_ours(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o775)
    daemon = make_daemon()
    assert (daemon.state.stat().st_mode & 0o777) == 0o700
    assert "tightened" in (daemon.state / "saturnd.log").read_text()


def test_it_runs_in_local_time(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(tz="Europe/Paris")  # 08:00 UTC is 09:00 in Paris in November
    task_id = daemon.create("-m", "1", "-H", "9", "true")
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(daemon.runs(task_id)) == 1)
    assert daemon.runs(task_id) == [("2026-11-21 09:01:00", 0)]


def test_it_detaches_without_f(tmp_path: Path) -> None:
    pipes, state = tmp_path / "pipes", tmp_path / "state"
    result = subprocess.run(
        [SATURND, "-p", str(pipes), "-s", str(state)], capture_output=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    cassini = str(Path(SATURND).parent / "cassini")
    try:
        wait_for(
            lambda: (
                subprocess.run([cassini, "-p", str(pipes), "-l"], capture_output=True).returncode
                == 0
            )
        )
        pid = int((state / "saturnd.pid").read_text())
        process = psutil.Process(pid)
        assert process.ppid() == 1 or process.ppid() != os.getpid()
        assert os.getsid(pid) != os.getsid(0)
    finally:
        subprocess.run([cassini, "-p", str(pipes), "-q"], capture_output=True, timeout=10)
    wait_for(lambda: not (state / "saturnd.pid").exists())


def _alive(pid: int) -> bool:
    """Whether `pid` is still running (a zombie has released everything it held)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
