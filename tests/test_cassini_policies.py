"""cassini for issue 14: run policies on -c, acting on a task, the history, the table.

Pure tests of parsing and rendering, then real cassini processes against a real daemon
(creating tasks with policies) and against a stand-in socket daemon that answers the
extensions (RUN, PAUSE, RESUME, KILL, HISTORY, OUTPUT-EX) with canned replies.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cassini import crontab, cronwrite, importing
from cassini.cli import Invocation, UsageError, parse_args
from cassini.replies import CUT_MESSAGE, respond
from cassini.table import RED, RESET
from saturnd.protocol import (
    CreateExRequest,
    ErrorReply,
    HistoryReply,
    HistoryRequest,
    KillReply,
    KillRequest,
    ListExReply,
    ListExRequest,
    OkReply,
    OutputExReply,
    OutputExRequest,
    OutputReply,
    PauseRequest,
    ResumeRequest,
    RunNowRequest,
    StderrRequest,
    TaskEntry,
    encode,
)
from saturnd.runrecord import (
    BY_HAND,
    CAUGHT_UP,
    CUT_STDOUT,
    EXITED,
    SKIPPED,
    TIMED_OUT,
    RunRecord,
)
from saturnd.task import MAX_DURATION, Extras, Task
from saturnd.timing import Timing
from tests.conftest import NOW as DAEMON_NOW
from tests.daemon_harness import CASSINI, Daemon, wait_for

MakeDaemon = Callable[..., Daemon]
TRY = "Try 'cassini -h' for more information.\n"
NOW = 1_800_000_000  # 2027-01-15 08:00:00 UTC


def utc(seconds: float) -> time.struct_time:
    return time.gmtime(seconds)


# --- -c's policies --------------------------------------------------------------------


def _extras(*args: str) -> Extras:
    parsed = parse_args(["-c", *args, "cmd"])
    assert isinstance(parsed, Invocation) and isinstance(parsed.request, CreateExRequest)
    return parsed.request.task.extras


def test_it_puts_every_policy_into_the_task() -> None:
    extras = _extras(
        "--timeout", "1h30m", "--jitter", "30s", "--no-overlap", "--catch-up",
        "--on-failure", "mail -s failed me",
    )  # fmt: skip
    assert extras == Extras(
        timeout=5400, jitter=30, no_overlap=True, catch_up=True, on_failure=b"mail -s failed me"
    )
    assert _extras("--timeout", "90") == Extras(timeout=90)  # a bare number is seconds


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--timeout", "0"], "--timeout 0 would stop every run at once"),
        (["--timeout", "5x"], "unknown unit 'x' (d, h, m, s) (option --timeout)"),
        (["--jitter", "30m1h"], "largest first (1h30m) (option --jitter)"),
        (["--timeout", "5000000000"], "longer than 4294967295 seconds (option --timeout)"),
        (["--on-failure", " "], "--on-failure needs a command"),
        (["--timeout", "1m", "--timeout", "2m"], "option --timeout given more than once"),
    ],
)
def test_it_refuses_bad_policies_in_one_line(args: list[str], reason: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_args(["-c", *args, "cmd"])
    assert reason in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("option", ["--no-overlap", "--catch-up", "--timeout=5m"])
def test_it_accepts_policies_only_with_c(option: str) -> None:
    with pytest.raises(UsageError, match=f"option {option.split('=')[0]} is only valid with -c"):
        parse_args(["-l", option])


def test_it_keeps_a_task_without_policies_a_course_create() -> None:
    parsed = parse_args(["-c", "--jitter", "0", "cmd"])  # jitter 0 is none
    assert isinstance(parsed, Invocation) and type(parsed.request).__name__ == "CreateRequest"


# --- acting on a task -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "request_"),
    [
        (["--run", "3"], RunNowRequest(3)),
        (["--pause", "3"], PauseRequest(3)),
        (["--resume=3"], ResumeRequest(3)),
        (["--kill", "3"], KillRequest(3)),
        (["-x", "3", "-v"], HistoryRequest(3)),
        (["-o", "3", "--start", "1800000000"], OutputExRequest(3, 1, 1800000000)),
        (["-e", "3", "--start", "1800000000"], OutputExRequest(3, 2, 1800000000)),
    ],
)
def test_it_parses_the_acting_options(args: list[str], request_: object) -> None:
    parsed = parse_args(args)
    assert isinstance(parsed, Invocation) and parsed.request == request_


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--run", "x"], "invalid task id 'x'"),
        (["--kill", "1", "2"], "--kill takes one task id"),
        (["--run", "1", "--pause", "1"], "conflicting options"),
        (["-o", "1", "--start", "yesterday"], "invalid --start 'yesterday'"),
        (["-o", "1", "--start", "0"], "out of range"),
        (["-x", "1", "--start", "5"], "option --start is only valid with -o or -e"),
    ],
)
def test_it_refuses_bad_acting_options(args: list[str], reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        parse_args(args)


def test_it_reads_start_as_x_shows_it() -> None:
    parsed = parse_args(["-o", "3", "--start", "2027-01-15 08:00:00"])
    assert isinstance(parsed, Invocation) and isinstance(parsed.request, OutputExRequest)
    assert parsed.request.start == int(time.mktime((2027, 1, 15, 8, 0, 0, 0, 0, -1)))


def _respond(args: list[str], reply: object, **kwargs: object) -> tuple[bytes, str, int]:
    parsed = parse_args(args)
    assert isinstance(parsed, Invocation)
    outcome = respond(parsed, reply, utc, NOW, **kwargs)  # type: ignore[arg-type]
    return outcome.stdout, outcome.stderr, outcome.status


def test_it_answers_acting_in_one_line() -> None:
    assert _respond(["--run", "3"], OkReply()) == (b"", "", 0)
    assert _respond(["--pause", "3"], OkReply()) == (b"", "", 0)
    assert _respond(["--kill", "3"], KillReply(2)) == (b"stopping 2 runs of task 3\n", "", 0)
    assert _respond(["--kill", "3"], KillReply(1)) == (b"stopping 1 run of task 3\n", "", 0)
    assert _respond(["--kill", "3"], KillReply(0)) == (b"task 3 has no run in progress\n", "", 0)
    for option in ("--run", "--pause", "--resume", "--kill"):
        assert _respond([option, "9"], ErrorReply(b"NF")) == (
            b"",
            "cassini: no task with id 9\n",
            1,
        )


def test_it_says_a_cut_output_on_stderr() -> None:
    args = ["-o", "3", "--start", str(NOW)]
    assert _respond(args, OutputExReply(True, b"big")) == (b"big", CUT_MESSAGE, 0)
    assert _respond(args, OutputExReply(False, b"all")) == (b"all", "", 0)
    never = "cassini: task 3 keeps no output of a run started at 1800000000 (2027-01-15 08:00:00)\n"
    assert _respond(args, ErrorReply(b"NR")) == (b"", never, 1)


# --- the history ------------------------------------------------------------------------

RUNS = (
    RunRecord(NOW - 7200, NOW - 7200 + 90, 0, EXITED, 0, 100),
    RunRecord(NOW - 3600, NOW - 3600 + 300, 0xFFFF, TIMED_OUT, CUT_STDOUT, 101),
    RunRecord(NOW - 60, NOW - 60, 0xFFFF, SKIPPED),
    RunRecord(NOW - 30, NOW - 25, 2, EXITED, BY_HAND | CAUGHT_UP, 102),
    RunRecord(NOW - 10, 0, 0xFFFF, EXITED, 0, 103),  # in progress
)


def test_it_shows_the_history_as_a_table() -> None:
    stdout, stderr, status = _respond(["-x", "3", "-v"], HistoryReply(RUNS))
    assert (stderr, status) == ("", 0)
    assert stdout.decode().splitlines() == [
        "START                EXIT  DURATION  OUTCOME    MARKS",
        "2027-01-15 06:00:00  0     1m30s     exited",
        "2027-01-15 07:00:00  -     5m        timed out  stdout cut",
        "2027-01-15 07:59:00  -     0s        skipped",
        "2027-01-15 07:59:30  2     5s        exited     by hand, catch-up",
        "2027-01-15 07:59:50  -     running   running",
    ]
    assert _respond(["-x", "3", "-v"], HistoryReply(())) == (b"", "", 0)
    assert _respond(["-x", "3", "-v"], ErrorReply(b"NF")) == (
        b"",
        "cassini: no task with id 3\n",
        1,
    )


def test_it_gives_the_whole_history_in_json() -> None:
    stdout, _, _ = _respond(["-x", "3", "-v", "--json"], HistoryReply(RUNS))
    runs = json.loads(stdout)
    assert runs[1] == {
        "start": {"time": NOW - 3600, "local": "2027-01-15 07:00:00"},
        "end": {"time": NOW - 3300, "local": "2027-01-15 07:05:00"},
        "duration": 300, "exitcode": 0xFFFF, "outcome": "timed out", "result": "timed out",
        "failed": True, "by_hand": False, "catch_up": False, "stdout_cut": True,
        "stderr_cut": False, "pid": 101,
    }  # fmt: skip
    assert (runs[3]["by_hand"], runs[3]["catch_up"], runs[3]["result"]) == (True, True, "2")
    assert (runs[4]["outcome"], runs[4]["end"], runs[4]["failed"]) == ("running", None, False)
    assert (runs[2]["failed"], runs[0]["failed"]) == (False, False)


# --- the status table -------------------------------------------------------------------

TASKS = (
    TaskEntry(0, Timing.parse("0", "*", "*"), (b"backup", b"--all")),
    TaskEntry(1, Timing.parse("*/5", "*", "*"), (b"poll",), Extras(paused=True)),
    TaskEntry(2, Timing.cron("@reboot"), (b"boot\n",)),
    TaskEntry(3, Timing.parse("30", "9", "*"), (b"report",)),
)
HISTORIES = {
    0: (RunRecord(NOW - 3600, NOW - 3590, 1, EXITED),),
    1: (RunRecord(NOW - 300, NOW - 299, 0, EXITED),),
    2: None,
    3: (RunRecord(NOW - 86400 + 5400, NOW - 80000, 0, EXITED), RunRecord(NOW - 5, 0, 0, 0)),
}


def test_it_shows_the_tasks_at_a_glance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    stdout, stderr, status = _respond(["-l", "-v"], ListExReply(TASKS), histories=HISTORIES)
    assert (stderr, status) == ("", 0)
    assert stdout.decode().splitlines() == [
        "ID  NEXT                 LEFT   LAST                 RESULT   TASK",
        "0   2027-01-15 09:00:00  1h     2027-01-15 07:00:00  1        0 * * backup --all",
        "1   paused               -      2027-01-15 07:55:00  0        */5 * * poll".replace(
            "*/5", "0,5,10,15,20,25,30,35,40,45,50,55"
        ),
        "2   @reboot              -      -                    -        - - - @reboot boot\\n",
        "3   2027-01-15 09:30:00  1h30m  2027-01-15 07:59:55  running  30 9 * report",
    ]
    assert RED not in stdout.decode()


def test_it_paints_only_failures_red() -> None:
    stdout, _, _ = _respond(["-l", "-v"], ListExReply(TASKS), histories=HISTORIES, color=True)
    lines = stdout.decode().splitlines()
    assert f"{RED}1{RESET}        0 * * backup" in lines[1]
    assert RED not in "".join(lines[2:])


def test_it_carries_the_table_in_json() -> None:
    stdout, _, _ = _respond(["-l", "-v", "--json"], ListExReply(TASKS), histories=HISTORIES)
    tasks = json.loads(stdout)
    assert [t["paused"] for t in tasks] == [False, True, False, False]
    assert [t["running"] for t in tasks] == [False, False, False, True]
    assert [t["result"] for t in tasks] == ["1", "0", None, "running"]
    assert [t["failed"] for t in tasks] == [True, False, False, False]
    assert tasks[1]["next"] is None and tasks[0]["next"]["time"] == NOW + 3600
    assert tasks[0]["last"]["exitcode"] == 1 and tasks[2]["last"] is None


# --- end to end -------------------------------------------------------------------------


def test_it_creates_a_task_with_policies_end_to_end(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    task_id = daemon.create(
        "--timeout", "5m", "--jitter", "1h30m", "--no-overlap", "--catch-up",
        "--on-failure", "echo failed >&2", "sleep", "600",
    )  # fmt: skip
    (task,) = json.loads(daemon.cassini("-l", "--json").stdout)
    assert (task["id"], task["timeout"], task["jitter"]) == (task_id, 300, 5400)
    assert (task["no_overlap"], task["catch_up"], task["paused"]) == (True, True, False)
    assert task["on_failure"] == "echo failed >&2"


class _StandIn(threading.Thread):
    """A socket daemon answering each request it knows with its canned reply (the
    extensions, until the real daemon serves them)."""

    def __init__(self, path: Path, replies: dict[bytes, bytes]) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.server.settimeout(0.2)
        self.replies = replies
        self.requests: list[bytes] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            with connection:
                request = connection.recv(4096)
                self.requests.append(request)
                if request in self.replies:
                    connection.sendall(self.replies[request])

    def __enter__(self) -> _StandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(5)
        self.server.close()


def _stand_in(tmp_path: Path, pairs: list[tuple[object, object]]) -> tuple[Path, _StandIn]:
    pipes = tmp_path / "pipes"
    pipes.mkdir(mode=0o700)
    replies = {encode(request): encode(reply) for request, reply in pairs}  # type: ignore[arg-type]
    return pipes, _StandIn(pipes / "saturnd.sock", replies)


def _cassini(pipes: Path, *args: str, env: dict[str, str] | None = None) -> tuple[bytes, str, int]:
    done = subprocess.run(
        [CASSINI, "-p", str(pipes), *args],
        capture_output=True,
        timeout=30,
        check=False,
        env=dict(os.environ, TZ="UTC", **(env or {})),
    )
    return done.stdout, done.stderr.decode(), done.returncode


def test_it_acts_on_a_task_end_to_end(tmp_path: Path) -> None:
    pairs: list[tuple[object, object]] = [
        (RunNowRequest(1), OkReply()),
        (PauseRequest(1), OkReply()),
        (ResumeRequest(1), OkReply()),
        (KillRequest(1), KillReply(2)),
        (RunNowRequest(2), ErrorReply(b"NF")),
        (OutputExRequest(1, 1, NOW), OutputExReply(True, b"cut here")),
        (HistoryRequest(1), HistoryReply(RUNS[:2])),
    ]
    pipes, stand_in = _stand_in(tmp_path, pairs)
    with stand_in:
        assert _cassini(pipes, "--run", "1") == (b"", "", 0)
        assert _cassini(pipes, "--pause", "1") == (b"", "", 0)
        assert _cassini(pipes, "--resume", "1") == (b"", "", 0)
        assert _cassini(pipes, "--kill", "1") == (b"stopping 2 runs of task 1\n", "", 0)
        assert _cassini(pipes, "--run", "2") == (b"", "cassini: no task with id 2\n", 1)
        assert _cassini(pipes, "-o", "1", "--start", str(NOW)) == (b"cut here", CUT_MESSAGE, 0)
        stdout, stderr, status = _cassini(pipes, "-x", "1", "-v")
        assert (stderr, status) == ("", 0)
        assert stdout.splitlines()[2].startswith(b"2027-01-15 07:00:00  -     5m  ")


def test_it_asks_each_task_history_for_the_table_end_to_end(tmp_path: Path) -> None:
    pairs: list[tuple[object, object]] = [(ListExRequest(), ListExReply(TASKS))]
    pairs += [(HistoryRequest(i), HistoryReply(runs or ())) for i, runs in HISTORIES.items()]
    pipes, stand_in = _stand_in(tmp_path, pairs)
    with stand_in:
        stdout, stderr, status = _cassini(pipes, "-l", "-v")
        assert (stderr, status) == ("", 0)
        assert RED.encode() not in stdout  # not a terminal
        assert b"running  30 9 * report" in stdout
        assert _colored(pipes, {}) is True
        assert _colored(pipes, {"NO_COLOR": "1"}) is False
    assert stand_in.requests[:5] == [b"lx", *(encode(HistoryRequest(i)) for i in range(4))]


def _colored(pipes: Path, env: dict[str, str]) -> bool:
    """Whether `cassini -l -v` on a terminal paints anything red."""
    main, secondary = pty.openpty()
    done = subprocess.run(
        [CASSINI, "-p", str(pipes), "-l", "-v"],
        stdout=secondary,
        stderr=subprocess.PIPE,
        timeout=30,
        check=False,
        env={k: v for k, v in dict(os.environ, TZ="UTC", **env).items() if k != "NO_COLOR"} | env,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert done.returncode == 0, done.stderr
    return RED.encode() in b"".join(chunks)


# --- export and import of the policies --------------------------------------------------


def _entry(task_id: int, line: str, argv: tuple[bytes, ...], **extras: object) -> TaskEntry:
    return TaskEntry(task_id, Timing.cron(line), argv, Extras(**extras))  # type: ignore[arg-type]


def _tasks_of(text: bytes) -> list[object]:
    entries, problems, _ = crontab.parse(text)
    assert problems == []
    return [entry.task for entry in entries]


def test_it_exports_policies_and_pauses_as_comments_cron_ignores() -> None:
    tasks = [
        _entry(0, "0 3 * * *", (b"backup",), timeout=300, no_overlap=True, on_failure=b"a 'b'"),
        _entry(1, "@daily", (b"report",), jitter=5400, catch_up=True, paused=True),
        _entry(2, "*/5 * * * *", (b"poll",), paused=True),
        _entry(3, "@hourly", (b"plain",)),
    ]
    text, problems = cronwrite.export(tasks)
    assert problems == []
    assert text.decode().splitlines()[1:] == [
        "#saturnd: --timeout 5m --no-overlap --on-failure 'a '\"'\"'b'\"'\"''",
        "0 3 * * * backup",
        "#saturnd: --jitter 1h30m --catch-up",
        "#saturnd-paused: 0 0 * * * report",
        "#saturnd-paused: */5 * * * * poll",
        "0 * * * * plain",
    ]
    assert _tasks_of(text) == [task.task for task in tasks]
    # cron's own reading: every line of ours is a comment but the two live tasks'.
    live = [line for line in text.decode().splitlines() if not line.startswith("#")]
    assert live == ["0 3 * * * backup", "0 * * * * plain"]


@given(
    st.integers(0, MAX_DURATION),
    st.integers(0, MAX_DURATION),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
)
@settings(max_examples=200, deadline=None)
def test_it_round_trips_any_policies(
    timeout: int, jitter: int, no_overlap: bool, catch_up: bool, paused: bool, command: str
) -> None:
    extras = Extras(
        timeout=timeout, jitter=jitter, no_overlap=no_overlap, catch_up=catch_up,
        on_failure=command.encode(), paused=paused,
    )  # fmt: skip
    task = TaskEntry(5, Timing.cron("0 3 * * *"), (b"x",), extras)
    text, problems = cronwrite.export([task])
    assert problems == []
    assert _tasks_of(text) == [task.task]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"#saturnd: --timeout\n@daily x\n", (1, "#saturnd: option --timeout requires argument")),
        (b"#saturnd: --no-overlap\n", (1, "#saturnd: has no task line after it")),
        (b"#saturnd: --catch-up\n#saturnd: --no-overlap\n@daily x\n", (2, "line 1's")),
        (b"#saturnd: --on-failure 'x\n@daily x\n", (1, "#saturnd: No closing quotation")),
        (b"#saturnd: \n@daily x\n", (1, "#saturnd: names no policy")),
        (b"#saturnd: --run 3\n@daily x\n", (1, "option --run not recognized")),
        (b"#saturnd-paused: A=1\n", (1, "is for a task line, not a setting")),
        (b"#saturnd-paused: 0 3 * *\n", (1, "expected five time fields")),
    ],
)
def test_it_refuses_bad_saturnd_lines_by_number(data: bytes, problem: tuple[int, str]) -> None:
    entries, problems, _ = crontab.parse(data)
    assert entries == []
    assert [(p.line, p.reason) for p in problems if problem[1] in p.reason] != [], problems
    assert problems[0].line == problem[0]


def test_it_keeps_ordinary_comments_ordinary() -> None:
    tasks = _tasks_of(b"# saturnd: --no-overlap\n#saturnd-pausedx\n@daily x\n")
    assert tasks == [Task(Timing.cron("@daily"), (b"x",))]


def test_it_keeps_a_task_whose_paused_state_alone_differs_on_replace() -> None:
    paused = _entry(4, "@daily", (b"x",), paused=True, timeout=60)
    running = _entry(5, "@hourly", (b"y",))
    file_entries = [
        crontab.Entry(1, Task(Timing.cron("@daily"), (b"x",), Extras(timeout=60))),
        crontab.Entry(2, Task(Timing.cron("@hourly"), (b"y",), Extras(paused=True))),
    ]
    result = importing.plan([paused, running], file_entries, replace=True)
    assert [(entry.line, task.task_id) for entry, task in result.keep] == [(1, 4), (2, 5)]
    assert (result.create, result.remove) == ([], [])
    # Another policy is another task.
    other = [crontab.Entry(1, Task(Timing.cron("@daily"), (b"x",), Extras(timeout=61)))]
    result = importing.plan([paused], other, replace=True)
    assert (len(result.create), [t.task_id for t in result.remove]) == (1, [4])


def test_it_exports_and_imports_policies_end_to_end(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    data = (
        b"#saturnd: --timeout 5m --jitter 30s --no-overlap --catch-up --on-failure 'echo $X'\n"
        b"0 3 * * * backup\n"
        b"#saturnd-paused: 0 0 * * * report\n"
        b"* * * * * plain\n"
    )
    path = tmp_path / "crontab"
    path.write_bytes(data)
    done = daemon.cassini("--import", str(path), check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"0\n1\n2\n", b"")
    tasks = json.loads(daemon.cassini("-l", "--json").stdout)
    assert [(t["timeout"], t["jitter"], t["no_overlap"], t["catch_up"]) for t in tasks] == [
        (300, 30, True, True),
        (0, 0, False, False),
        (0, 0, False, False),
    ]
    assert [t["on_failure"] for t in tasks] == ["echo $X", None, None]
    assert [t["paused"] for t in tasks] == [False, True, False]
    exported = daemon.cassini("--export").stdout
    assert exported.split(b"\n", 1)[1] == data
    path.write_bytes(exported)
    done = daemon.cassini("--import", str(path), "--replace", check=False)
    assert done.stderr == b"cassini: no changes: 0 created, 3 kept, 0 removed\n"


def test_it_says_a_cut_last_output_and_falls_back_to_the_course(tmp_path: Path) -> None:
    pairs: list[tuple[object, object]] = [
        (OutputExRequest(1, 1), OutputExReply(True, b"first MiB")),
        (OutputExRequest(1, 2), OutputExReply(False, b"all of it")),
        (OutputExRequest(2, 1), ErrorReply(b"NR")),
    ]
    pipes, stand_in = _stand_in(tmp_path, pairs)
    with stand_in:
        assert _cassini(pipes, "-o", "1") == (b"first MiB", CUT_MESSAGE, 0)
        assert _cassini(pipes, "-e", "1") == (b"all of it", "", 0)
        assert _cassini(pipes, "-o", "2") == (b"", "cassini: task 2 has not run yet\n", 1)
    assert stand_in.requests == [encode(request) for request, _ in pairs]


def test_it_asks_a_saturnd_without_output_ex_the_course_way(tmp_path: Path) -> None:
    # OUTPUT-EX unknown: the stand-in closes without a reply, as an older saturnd does.
    pairs: list[tuple[object, object]] = [(StderrRequest(1), OutputReply(b"err\n"))]
    pipes, stand_in = _stand_in(tmp_path, pairs)
    with stand_in:
        assert _cassini(pipes, "-e", "1") == (b"err\n", "", 0)
    assert stand_in.requests == [encode(OutputExRequest(1, 2)), b"SE" + (1).to_bytes(8, "big")]


def history_of(daemon: Daemon, task_id: int) -> list[dict[str, object]]:
    """`cassini -x ID -v --json` without the runs in progress: the ended runs (their
    record follows times-exitcodes', so tests wait on this, not on `-x`)."""
    runs: list[dict[str, object]] = json.loads(
        daemon.cassini("-x", str(task_id), "-v", "--json").stdout
    )
    return [run for run in runs if run["outcome"] != "running"]


def test_it_acts_on_a_task_of_the_real_daemon(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    a = daemon.create("sh", "-c", "echo out; exit 3")
    b = daemon.create("--timeout", "1s", "sleep", "30")
    c = daemon.create("-m", "59", "sleep", "60")
    daemon.step_to(DAEMON_NOW + 60)
    wait_for(
        lambda: history_of(daemon, a) and history_of(daemon, b),
        timeout=15,
        what="a run, a timeout",
    )
    history = daemon.cassini("-x", str(b), "-v").stdout.decode().splitlines()
    assert history[1].split()[2:5] == ["-", "1s", "timed"], history

    assert daemon.cassini("--pause", str(a)).stdout == b""
    table = daemon.cassini("-l", "-v").stdout.decode().splitlines()
    assert table[1].split()[:2] == [str(a), "paused"] and " 3 " in table[1]
    assert "timed out" in table[2]
    assert [t["paused"] for t in json.loads(daemon.cassini("-l", "--json").stdout)] == [
        True,
        False,
        False,
    ]

    assert daemon.cassini("--run", str(c)).stdout == b""
    wait_for(
        lambda: b"stopping 1 run" in daemon.cassini("--kill", str(c)).stdout,
        timeout=15,
        what="the run by hand to be killed",
    )
    wait_for(lambda: history_of(daemon, c), timeout=15, what="the killed run's record")
    (run,) = history_of(daemon, c)
    assert (run["outcome"], run["by_hand"], run["failed"]) == ("killed", True, True)

    (first,) = json.loads(daemon.cassini("-x", str(a), "-v", "--json").stdout)
    kept = daemon.cassini("-o", str(a), "--start", str(first["start"]["time"]))
    assert (kept.stdout, kept.stderr) == (b"out\n", b"")
    assert daemon.cassini("--resume", str(a)).stdout == b""
    assert not json.loads(daemon.cassini("-l", "--json").stdout)[0]["paused"]
    done = daemon.cassini("--run", "99", check=False)
    assert (done.returncode, done.stderr) == (1, b"cassini: no task with id 99\n")
    # Over the FIFOs (a daemon of the course) the table has no history to show.
    fifo = subprocess.run(
        [CASSINI, "-p", str(daemon.pipes), "-l", "-v"],
        capture_output=True,
        env=dict(daemon.env, CASSINI_TRANSPORT="fifo"),
        timeout=30,
        check=False,
    )
    assert (fifo.returncode, fifo.stderr) == (0, b"")
    rows = [line.split() for line in fifo.stdout.decode().splitlines()[1:]]
    assert [row[4:6] for row in rows] == [["-", "-"]] * 3  # LAST and RESULT
