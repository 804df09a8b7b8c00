"""cassini and the fields beyond the course's, end to end: a real daemon, real processes.

`-c --dom/--month/--cron/--tz/--env` create whole tasks (CREATE-EX on the socket, the
course's CREATE when it says everything), `-l` lists them with its extra words and its
escapes, `--json` and `-l -v` carry them, `-n` reads a zoned task in its zone; over the
FIFOs (a daemon of the course) a listing is the course's and a whole task is refused in
one line; a saturnd older than LIST-EX is asked again with LIST.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from saturnd.protocol import ListReply, TaskEntry, encode
from saturnd.timing import Timing
from tests.daemon_harness import CASSINI, Daemon
from tests.test_cassini_e2e import loaded_by_main
from tests.test_cassini_next import oracle

MakeDaemon = Callable[..., Daemon]

NEW_YORK = ZoneInfo("America/New_York")
TRY = "Try 'cassini -h' for more information.\n"


def _fifo(daemon: Daemon, *args: str) -> tuple[bytes, str, int]:
    """`cassini ARGS` made to use the FIFOs, as against a daemon of the course."""
    env = dict(daemon.env, CASSINI_TRANSPORT="fifo")
    done = subprocess.run(
        [CASSINI, "-p", str(daemon.pipes), *args],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    return done.stdout, done.stderr.decode(), done.returncode


def test_it_creates_and_lists_whole_tasks(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    ids = [
        daemon.create("-m", "5", "echo", "course"),
        daemon.create("--cron", "0 3 1 * *", "certbot", "renew"),
        daemon.create("--cron", "0 20 1-7 * 5", "first-friday"),
        daemon.create("-m", "0", "-H", "0", "--dom", "29", "--month", "feb", "leap"),
        daemon.create("--cron", "@daily", "--tz", "America/New_York", "report"),
        daemon.create("--cron", "@reboot", "mount-backups"),
        daemon.create("--env", "GREETING=hi there", "--env", "X=", "env"),
    ]
    assert ids == list(range(7))
    assert daemon.cassini("-l").stdout == (
        b"0: 5 * * echo course\n"
        b"1: 0 3 * dom=1 certbot renew\n"
        b"2: 0 20 5 or-dom=1-7 first-friday\n"
        b"3: 0 0 * dom=29 mon=2 leap\n"
        b"4: 0 0 * tz=America/New_York report\n"
        b"5: - - - @reboot mount-backups\n"
        b"6: * * * env\n"
    )
    tasks = json.loads(daemon.cassini("-l", "--json").stdout)
    assert [task["days_or"] for task in tasks] == [False, False, True, False, False, False, False]
    assert tasks[3]["daysofmonth"] == "29" and tasks[3]["months"] == "2"
    assert tasks[4]["zone"] == "America/New_York"
    assert tasks[5]["reboot"] is True
    assert tasks[6]["env"] == [
        {"name": "GREETING", "value": "hi there"},
        {"name": "X", "value": ""},
    ]
    assert (tasks[6]["stdin"], tasks[6]["mailto"]) == ("", None)

    verbose = daemon.cassini("-l", "-v", "-v").stdout.decode()
    assert "5: - - - @reboot mount-backups\n    next run: at each start of the daemon" in verbose
    assert "    env: GREETING=hi there\n    env: X=\n" in verbose
    assert "(America/New_York time)" in verbose


def test_it_lists_only_the_course_fields_over_the_fifos(make_daemon: MakeDaemon) -> None:
    # What a C client sees: the three sets, nothing saying that more exists.
    daemon = make_daemon()
    daemon.create("--cron", "0 3 1 * *", "certbot")
    daemon.create("--cron", "@reboot", "boot")
    daemon.create("--tz", "UTC", "-m", "7", "zoned")
    stdout, stderr, status = _fifo(daemon, "-l")
    assert (stdout, stderr, status) == (b"0: 0 3 * certbot\n1:    boot\n2: 7 * * zoned\n", "", 0)
    # The same daemon over its socket says it all.
    assert daemon.cassini("-l").stdout == (
        b"0: 0 3 * dom=1 certbot\n1: - - - @reboot boot\n2: 7 * * tz=UTC zoned\n"
    )


def test_it_creates_a_course_task_over_the_fifos_and_refuses_a_whole_one(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon()
    assert _fifo(daemon, "-c", "--dom", "*", "--month", "*", "-m", "1", "true") == (
        b"0\n",
        "",
        0,
    )
    stdout, stderr, status = _fifo(daemon, "-c", "--dom", "1", "--tz", "UTC", "true")
    assert (stdout, status) == (b"", 1)
    assert stderr == (
        "cassini: this task has a day of month, a time zone: only saturnd's socket can "
        f"carry it, and CASSINI_TRANSPORT=fifo keeps cassini off {daemon.pipes}/saturnd.sock\n"
    )
    assert daemon.cassini("-l").stdout == b"0: 1 * * true\n"  # nothing else was created


def test_it_escapes_control_characters_in_the_listing(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.create("printf", "a\n1: * * * rm -rf ~", "\x1b[2J\t")
    listing = daemon.cassini("-l").stdout
    assert listing == b"0: * * * printf a\\n1: * * * rm -rf ~ \\x1b[2J\\t\n"
    assert listing.count(b"\n") == 1
    # The exact bytes are in the JSON.
    assert json.loads(daemon.cassini("--json").stdout)[0]["argv"][1] == "a\n1: * * * rm -rf ~"
    # And over the FIFOs too.
    assert _fifo(daemon, "-l")[0] == listing


def test_it_shows_next_starts_of_a_zoned_task_in_local_time(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(tz="Europe/Paris")
    task_id = daemon.create("--tz", "America/New_York", "-m", "0", "-H", "9", "true")
    before = int(datetime.now().timestamp())
    shown = daemon.cassini("-n", str(task_id), "-N", "60").stdout.decode().splitlines()
    after = int(datetime.now().timestamp())
    paris = ZoneInfo("Europe/Paris")
    candidates = [
        [datetime.fromtimestamp(s, paris).strftime("%Y-%m-%d %H:%M:%S") for s in starts]
        for starts in (oracle("0 9 * * *", moment, 60, NEW_YORK) for moment in (before, after))
    ]
    assert shown in candidates
    assert {line[11:] for line in shown} <= {"14:00:00", "15:00:00", "13:00:00"}


def test_it_says_when_an_at_reboot_task_starts(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    task_id = daemon.create("--cron", "@reboot", "true")
    done = daemon.cassini("-n", str(task_id))
    assert (done.stdout, done.returncode) == (b"", 0)
    assert done.stderr == b"cassini: task 0 runs at each start of the daemon (@reboot)\n"


def test_it_warns_with_the_tasks_path(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "mytool").write_text("#!/bin/sh\n")
    (tools / "mytool").chmod(0o755)
    # In cassini's PATH, not in the task's (cron's /usr/bin:/bin).
    env = dict(daemon.env, PATH=f"{tools}:{os.environ['PATH']}")

    def create(*args: str) -> tuple[str, str]:
        done = subprocess.run(
            [CASSINI, "-p", str(daemon.pipes), "-c", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        return done.stdout, done.stderr

    fails = "the task will fail with exit code 127"
    assert create("mytool") == (
        "0\n",
        f"cassini: warning: no program 'mytool' in the task's PATH (/usr/bin:/bin): {fails}\n",
    )
    assert create("--env", f"PATH={tools}", "mytool") == ("1\n", "")
    assert create("--env", "PATH=/nowhere", "ls") == (
        "2\n",
        f"cassini: warning: no program 'ls' in the task's PATH (/nowhere): {fails}\n",
    )


def test_it_refuses_bad_fields_in_one_line(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    cases = [
        (["--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--dom", "32"], "invalid day-of-month field '32': 32 is out of range 1-31"),
        (["--cron", "@daily", "-H", "1"], "option --cron cannot be combined with -H"),
        (["--env", "NOEQUALS"], "invalid --env 'NOEQUALS': expected NAME=VALUE"),
    ]
    for args, reason in cases:
        done = daemon.cassini("-c", *args, "true", check=False)
        assert (done.stdout, done.returncode) == (b"", 1)
        assert done.stderr.decode() == f"cassini: {reason}\n{TRY}"
    assert daemon.cassini("-l").stdout == b""  # nothing was sent


def test_it_loads_zoneinfo_only_for_tz(tmp_path: Path) -> None:
    # Parsing happens before any I/O: a missing pipes directory still shows what loads.
    nowhere = str(tmp_path / "none")
    loaded, done = loaded_by_main("-p", nowhere, "-c", "--dom", "1", "--month", "jan", "x")
    assert done.returncode == 1
    assert "zoneinfo" not in loaded and "datetime" not in loaded
    loaded, done = loaded_by_main("-p", nowhere, "-c", "--tz", "UTC", "x")
    assert done.returncode == 1 and "zoneinfo" in loaded


class _OlderDaemon(threading.Thread):
    """A socket that drops LIST-EX (a saturnd older than it) and answers LIST."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.server.settimeout(20)
        self.requests: list[bytes] = []

    def run(self) -> None:
        reply = encode(ListReply((TaskEntry(4, Timing(minutes=1), (b"old",)),)))
        for _ in range(2):
            connection, _ = self.server.accept()
            with connection:
                request = connection.recv(64)
                self.requests.append(request)
                if request == b"LS":
                    connection.sendall(reply)


def test_it_asks_an_older_saturnd_again_with_list(tmp_path: Path) -> None:
    pipes = tmp_path / "pipes"
    pipes.mkdir(mode=0o700)
    older = _OlderDaemon(pipes / "saturnd.sock")
    older.start()
    done = subprocess.run(
        [CASSINI, "-p", str(pipes), "-l"], capture_output=True, timeout=30, check=False
    )
    older.join(10)
    assert (done.stdout, done.stderr, done.returncode) == (b"4: 0 * * old\n", b"", 0)
    assert older.requests == [b"lx", b"LS"]
