"""Unit tests of cassini.cli: argument parsing, usage errors and output, without I/O."""

from __future__ import annotations

import getopt
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cassini.__main__ import default_pipes_dir
from cassini.cli import (
    LONG_OPTIONS,
    OPTIONS,
    PROTOCOL_OPTIONS,
    USAGE,
    ExportSystemd,
    Help,
    Import,
    Invocation,
    UsageError,
    fifo_request,
    parse_args,
    parse_task_id,
)
from cassini.creating import beyond_course
from cassini.replies import Outcome, escape, render, respond, task_line
from saturnd.protocol import (
    CreateExRequest,
    CreateReply,
    CreateRequest,
    ErrorReply,
    ListExReply,
    ListExRequest,
    ListReply,
    ListRequest,
    OkReply,
    OutputReply,
    RemoveRequest,
    Request,
    Run,
    StderrRequest,
    StdoutRequest,
    TaskEntry,
    TerminateRequest,
    TimesExitcodesReply,
    TimesExitcodesRequest,
)
from saturnd.task import Extras, Task
from saturnd.timing import Timing
from tests.daemon_harness import Daemon

ALL = Timing()  # * * *

# --- parsing ----------------------------------------------------------------------

VALID = [
    # (args, request, pipes_dir)
    ([], ListExRequest(), None),
    (["-l"], ListExRequest(), None),
    (["-l", "-l"], ListExRequest(), None),
    (["-p", "/x"], ListExRequest(), "/x"),
    (["-l", "-p", "/x"], ListExRequest(), "/x"),
    (["-q"], TerminateRequest(), None),
    (["-r", "0"], RemoveRequest(0), None),
    (["-r0"], RemoveRequest(0), None),
    (["-x", "12"], TimesExitcodesRequest(12), None),
    (["-o", "007"], StdoutRequest(7), None),
    (["-e", "18446744073709551615"], StderrRequest(2**64 - 1), None),
    (["-p", "d", "-r", "3", "-r", "3"], RemoveRequest(3), "d"),
    (["-c", "echo", "hi"], CreateRequest(ALL, (b"echo", b"hi")), None),
    (["-c", "ls", "-l", "/tmp"], CreateRequest(ALL, (b"ls", b"-l", b"/tmp")), None),
    (["-c", "echo", "-h"], CreateRequest(ALL, (b"echo", b"-h")), None),
    (["-c", "--", "-x"], CreateRequest(ALL, (b"-x",)), None),
    (["-c", "x", ""], CreateRequest(ALL, (b"x", b"")), None),
    (
        ["-c", "-m", "0", "-H", "9,14", "-d", "3", "echo", "test-1"],
        CreateRequest(Timing(1, (1 << 9) | (1 << 14), 1 << 3), (b"echo", b"test-1")),
        None,
    ),
    (
        ["-m", "0-2,5,10", "-p", "/p", "-c", "toto.sh"],
        CreateRequest(Timing(0b10000100111), (b"toto.sh",)),
        "/p",
    ),
    (
        ["-c", "-d", "2-4,6", "-m", "4-10,45", "x"],
        CreateRequest(Timing(0x00002000000007F0, daysofweek=0x5C), (b"x",)),
        None,
    ),
    # Day names, short or full, in any case (0x3E: Monday to Friday).
    (["-c", "-d", "monday-friday", "x"], CreateRequest(Timing(daysofweek=0x3E), (b"x",)), None),
    (["-c", "-d", "Mon-FRIDAY", "x"], CreateRequest(Timing(daysofweek=0x3E), (b"x",)), None),
    (["-c", "-d", "Tuesday", "x"], CreateRequest(Timing(daysofweek=1 << 2), (b"x",)), None),
    (
        ["-c", os.fsdecode(b"caf\xc3\xa9"), os.fsdecode(b"\xff")],
        CreateRequest(ALL, (b"caf\xc3\xa9", b"\xff")),
        None,
    ),
]


@pytest.mark.parametrize(("args", "request_", "pipes_dir"), VALID, ids=lambda v: repr(v))
def test_it_parses_valid_arguments(
    args: list[str], request_: Request, pipes_dir: str | None
) -> None:
    assert parse_args(args) == Invocation(request_, pipes_dir)


@pytest.mark.parametrize(
    "args",
    [
        ["-h"],
        ["-l", "-h"],
        ["-h", "-r", "x"],
        ["-r", "1", "-l", "-h"],
        ["--help"],
        ["--he"],
        ["-c", "-m", "99", "--help", "x"],
    ],
)
def test_it_gives_help_for_h(args: list[str]) -> None:
    assert parse_args(args) == Help()


INVALID = [
    # (args, a piece of the message)
    (["-Z"], "option -Z not recognized"),
    (["--list"], "option --list not recognized"),
    (["-r"], "option -r requires argument"),
    (["-c", "-m"], "option -m requires argument"),
    (["-r", "x"], "invalid task id 'x'"),
    (["-r", "-1"], "invalid task id '-1'"),
    (["-r", "+1"], "invalid task id '+1'"),
    (["-r", " 1"], "invalid task id ' 1'"),
    (["-r", "1\n"], "invalid task id"),
    (["-r", ""], "invalid task id ''"),
    (["-r", "0x1f"], "invalid task id '0x1f'"),
    (["-r", "1_000"], "invalid task id '1_000'"),
    (["-r", "\u0661"], "invalid task id"),  # ARABIC-INDIC DIGIT ONE: int() would take it
    (["-x", "18446744073709551616"], "larger than 18446744073709551615"),
    (["-x", "9" * 5000], "larger than"),
    (["-l", "-r", "1"], "conflicting options: -l and -r 1"),
    (["-r", "1", "-r", "2"], "conflicting options: -r 1 and -r 2"),
    (["-o", "1", "-e", "1"], "conflicting options"),
    (["-q", "-c", "x"], "conflicting options"),
    (["-c"], "-c needs a command"),
    (["-c", "-m", "1"], "-c needs a command"),
    (["-c", ""], "command's name is empty"),
    (["echo"], "unexpected argument 'echo'"),
    (["-l", "x"], "unexpected argument 'x'"),
    (["-r", "1", "x"], "unexpected argument 'x'"),
    # An operation that takes an id takes one: the extra word is no command for -c.
    (["-r", "49", "0"], "unexpected argument '0' (-r takes one task id)"),
    (["-x", "1", "2"], "unexpected argument '2' (-x takes one task id)"),
    (["-o", "1", "2"], "unexpected argument '2' (-o takes one task id)"),
    (["-e", "1", "2"], "unexpected argument '2' (-e takes one task id)"),
    (["-n", "1", "2"], "unexpected argument '2' (-n takes one task id)"),
    (["--import", "a", "b"], "unexpected argument 'b' (--import takes one file)"),
    (["-l", "ls"], "unexpected argument 'ls' (a command needs -c)"),
    (["--help=1"], "option --help must not have an argument"),
    (["-m", "1"], "-m is only valid with -c"),
    (["-l", "-H", "1"], "-H is only valid with -c"),
    (["-x", "1", "-d", "1"], "-d is only valid with -c"),
    (["-c", "-m", "60", "x"], "invalid minutes field '60'"),
    (["-c", "-H", "24", "x"], "invalid hours field '24'"),
    (["-c", "-d", "8", "x"], "invalid day-of-week field '8'"),
    (["-c", "-d", "mond", "x"], "invalid day-of-week field 'mond'"),
    (["-c", "-m", "", "x"], "invalid minutes field ''"),
    (["-c", "-m", "3-1", "x"], "goes backwards"),
    (["-c", "-m", "1,,2", "x"], "empty item"),
    (["-c", "-m", "1", "-m", "2", "x"], "option -m given more than once"),
    (["-p", "a", "-p", "b"], "option -p given more than once"),
]


@pytest.mark.parametrize(("args", "message"), INVALID, ids=lambda v: repr(v))
def test_it_rejects_invalid_arguments(args: list[str], message: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_args(args)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_it_rejects_an_argument_the_daemon_would_drop() -> None:
    with pytest.raises(UsageError, match="longer than"):
        parse_args(["-c", "x", "y" * ((1 << 20) + 1)])


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("00", 0), ("42", 42), ("0018446744073709551615", 2**64 - 1)],
)
def test_it_parses_task_ids(text: str, value: int) -> None:
    assert parse_task_id(text) == value


def test_it_documents_every_option_in_the_usage() -> None:
    for option in "hlcqmHdprxoe":
        assert f"-{option}" in USAGE
    assert "--help" in USAGE
    assert USAGE.endswith("\n")


# --- the fields beyond the course's ------------------------------------------------------


def _ex(timing: Timing, *argv: bytes, env: tuple[tuple[bytes, bytes], ...] = ()) -> Request:
    return CreateExRequest(Task(timing, argv, Extras(env)))


FIRST = 1 << 1  # day of month 1
VALID_EX = [
    # (args, request): a task the course can say stays a course CREATE.
    (["-c", "--dom", "*", "--month", "*", "x"], CreateRequest(ALL, (b"x",))),
    (["-c", "--cron", "* * * * *", "x"], CreateRequest(ALL, (b"x",))),
    (["-c", "--cron", "@hourly", "x"], CreateRequest(Timing(1), (b"x",))),
    (
        ["-c", "--cron", "0 9 * * mon-fri", "x"],
        CreateRequest(Timing.parse("0", "9", "1-5"), (b"x",)),
    ),
    (["-c", "--dom", "1", "x"], _ex(Timing(daysofmonth=FIRST), b"x")),
    (["-c", "--do=1", "x"], _ex(Timing(daysofmonth=FIRST), b"x")),  # a prefix
    (["-c", "--month", "jan-mar", "x"], _ex(Timing(months=0b1110), b"x")),
    (["-c", "--month", "February,dec", "x"], _ex(Timing(months=(1 << 2) | (1 << 12)), b"x")),
    (
        ["-c", "-m", "0", "-H", "3", "--dom", "1", "x", "--dom", "2"],
        _ex(Timing(1, 1 << 3, daysofmonth=FIRST), b"x", b"--dom", b"2"),
    ),
    (["-c", "--cron", "0 3 1 * *", "certbot"], _ex(Timing.cron("0 3 1 * *"), b"certbot")),
    # cron's OR rule, read from the text as cron reads it.
    (["-c", "--cron", "0 20 1-7 * 5", "x"], _ex(Timing.cron("0 20 1-7 * 5"), b"x")),
    (
        ["-c", "-m", "0", "-H", "20", "--dom", "1-7", "-d", "fri", "x"],
        _ex(Timing.cron("0 20 1-7 * 5"), b"x"),
    ),
    (["-c", "--cron", "@monthly", "x"], _ex(Timing.cron("0 0 1 * *"), b"x")),
    (["-c", "--cron", "@reboot", "x"], _ex(Timing(reboot=True), b"x")),
    (["-c", "--cron", "@REBOOT", "x"], _ex(Timing(reboot=True), b"x")),
    (["-c", "--tz", "Europe/Paris", "x"], _ex(Timing(zone="Europe/Paris"), b"x")),
    (["-c", "--tz", "UTC", "--cron", "@daily", "x"], _ex(Timing.cron("@daily", "UTC"), b"x")),
    (["-c", "--env", "A=1", "x"], _ex(ALL, b"x", env=((b"A", b"1"),))),
    (
        ["-c", "--env", "A=", "--env", "B=x=y", "--env", "A=2", "x"],
        _ex(ALL, b"x", env=((b"A", b""), (b"B", b"x=y"), (b"A", b"2"))),
    ),
]


@pytest.mark.parametrize(("args", "request_"), VALID_EX, ids=lambda v: repr(v))
def test_it_parses_the_new_fields(args: list[str], request_: Request) -> None:
    assert parse_args(args) == Invocation(request_)


INVALID_EX = [
    (["-c", "--dom", "0", "x"], "invalid day-of-month field '0'"),
    (["-c", "--dom", "32", "x"], "invalid day-of-month field '32'"),
    (["-c", "--month", "13", "x"], "invalid month field '13'"),
    (["-c", "--month", "janu", "x"], "invalid month field 'janu'"),
    (["-c", "--cron", "0 0 * *", "x"], "4 fields, expected 5 or an @name"),
    (["-c", "--cron", "@sometimes", "x"], "unknown name '@sometimes'"),
    (["-c", "--cron", "@daily", "-m", "0", "x"], "--cron cannot be combined with -m"),
    (["-c", "--dom", "1", "--cron", "@daily", "x"], "--cron cannot be combined with --dom"),
    (["-c", "--cron", "@daily", "--cron", "@daily", "x"], "option --cron given more than once"),
    (["-c", "--dom", "1", "--dom", "2", "x"], "option --dom given more than once"),
    (["-c", "--tz", "Mars/Olympus", "x"], "unknown time zone 'Mars/Olympus'"),
    (["-c", "--tz", "Europe", "x"], "unknown time zone 'Europe'"),  # a directory
    (["-c", "--tz", "../../etc/passwd", "x"], "unknown time zone"),
    (["-c", "--tz", "/etc/localtime", "x"], "unknown time zone"),
    (["-c", "--tz", "", "x"], "--tz needs a time zone name"),
    (["-c", "--env", "A", "x"], "invalid --env 'A': expected NAME=VALUE"),
    (["-c", "--env", "=1", "x"], "invalid --env '=1': expected NAME=VALUE"),
    (["-c", "--env"], "option --env requires argument"),
    (["--e", "A=1"], "option --e not a unique prefix"),
    (["-l", "--dom", "1"], "option --dom is only valid with -c"),
    (["-x", "1", "--tz", "UTC"], "option --tz is only valid with -c"),
    (["--env", "A=1"], "option --env is only valid with -c"),
    (["-n", "1", "--cron", "@daily"], "option --cron is only valid with -c"),
    (["-c", "--env", "A=" + "v" * ((1 << 20) + 1), "x"], "longer than"),
]


@pytest.mark.parametrize(("args", "message"), INVALID_EX, ids=lambda v: repr(v)[:80])
def test_it_rejects_bad_new_fields(args: list[str], message: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_args(args)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_it_documents_the_new_options_in_the_usage() -> None:
    for option in ("--dom", "--month", "--cron", "--tz", "--env"):
        assert f"{option} " in USAGE


def test_it_says_what_only_the_socket_can_carry() -> None:
    task = Task(Timing.cron("0 0 1 1 *", "UTC"), (b"x",), Extras(((b"A", b"1"),), b"in", b""))
    assert beyond_course(task) == [
        "a day of month",
        "a month",
        "a time zone",
        "environment variables",
        "standard input",
        "MAILTO",
    ]
    assert beyond_course(Task(Timing(reboot=True), (b"x",))) == ["@reboot"]
    assert beyond_course(Task(ALL, (b"x",))) == []


LINES = [
    # (timing, argv, the line): the course's line where it says everything.
    (ALL, (b"echo", b"hi"), b"3: * * * echo hi\n"),
    (Timing.cron("0 3 1 * *"), (b"certbot", b"renew"), b"3: 0 3 * dom=1 certbot renew\n"),
    (Timing.cron("0 20 1-7 * 5"), (b"x",), b"3: 0 20 5 or-dom=1-7 x\n"),
    (
        Timing.cron("0 0 */2 * 1"),
        (b"x",),
        b"3: 0 0 1 dom=" + b"1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31 x\n",
    ),
    (Timing.cron("0 0 29 2 *"), (b"x",), b"3: 0 0 * dom=29 mon=2 x\n"),
    (Timing.cron("@yearly"), (b"x",), b"3: 0 0 * dom=1 mon=1 x\n"),
    (Timing.cron("*/30 * * jun-aug *"), (b"x",), b"3: 0,30 * * mon=6-8 x\n"),
    (Timing.cron("0 9 * * *", "Europe/Paris"), (b"x",), b"3: 0 9 * tz=Europe/Paris x\n"),
    (Timing(reboot=True), (b"x",), b"3: - - - @reboot x\n"),
    (Timing(reboot=True, zone="UTC"), (b"x",), b"3: - - - @reboot tz=UTC x\n"),
    # No argument can fake a line, nor reach the terminal as a control sequence.
    (ALL, (b"echo", b"a\n4: * * * rm -rf ~"), b"3: * * * echo a\\n4: * * * rm -rf ~\n"),
    (ALL, (b"printf", b"\t\r\x1b[31m\x7f\x00"), b"3: * * * printf \\t\\r\\x1b[31m\\x7f\\x00\n"),
    # Backslashes and non-ASCII bytes stay as they are (the course's line, byte for byte).
    (ALL, (b"echo", b"a\\nb", b"caf\xc3\xa9", b"\xff"), b"3: * * * echo a\\nb caf\xc3\xa9 \xff\n"),
]


@pytest.mark.parametrize(("timing", "argv", "line"), LINES, ids=lambda v: repr(v)[:60])
def test_it_lists_only_what_the_course_cannot_say(
    timing: Timing, argv: tuple[bytes, ...], line: bytes
) -> None:
    assert task_line(TaskEntry(3, timing, argv)) == line
    reply = ListExReply((TaskEntry(3, timing, argv),))
    assert render(ListExRequest(), reply, time.gmtime) == Outcome(line)


def test_it_escapes_every_control_byte_and_nothing_else() -> None:
    data = bytes(range(256))
    escaped = escape(data)
    assert b"\n" not in escaped and b"\r" not in escaped and b"\x1b" not in escaped
    assert escaped.count(b"\\x") == 32 - 3 + 1  # all C0 but \t \n \r, and DEL
    assert escaped.endswith(bytes(range(0x80, 256)))
    assert escape(b"plain \\ text") == b"plain \\ text"


def test_it_sends_list_over_the_fifos_for_list_ex() -> None:
    assert fifo_request(ListExRequest()) == ListRequest()
    assert fifo_request(TerminateRequest()) is None
    assert fifo_request(CreateExRequest(Task(ALL, (b"x",)))) is None


def _cassini(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m cassini ARGS` with pipes where no daemon listens (unless ARGS say -p)."""
    return subprocess.run(
        [sys.executable, "-m", "cassini", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("option", ["-h", "--help"])
def test_it_prints_the_usage_for_help(option: str) -> None:
    done = _cassini("-p", "/nonexistent/pipes", option)
    assert (done.stdout, done.stderr, done.returncode) == (USAGE, "", 0)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["-Z"], "option -Z not recognized"),
        (["-r", "49", "0"], "unexpected argument '0' (-r takes one task id)"),
        (["-c", "-d", "8", "x"], "invalid day-of-week field '8': 8 is out of range 0-6"),
    ],
)
def test_it_prints_the_reason_and_where_the_usage_is(args: list[str], reason: str) -> None:
    done = _cassini("-p", "/nonexistent/pipes", *args)
    assert done.stderr == f"cassini: {reason}\nTry 'cassini -h' for more information.\n"
    assert (done.stdout, done.returncode) == ("", 1)


# --- the pipes directory: -p, else $SATURND_PIPES_DIR, else the default -----------------


def test_it_uses_the_pipes_directory_of_the_environment(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("echo", "hi")
    env = dict(daemon.env, SATURND_PIPES_DIR=str(daemon.pipes))
    done = _cassini("-l", env=env)
    assert (done.stdout, done.stderr, done.returncode) == ("0: * * * echo hi\n", "", 0)


def test_it_prefers_p_to_the_environment(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("echo", "hi")
    env = dict(daemon.env, SATURND_PIPES_DIR=str(tmp_path / "nowhere"))
    done = _cassini("-p", str(daemon.pipes), "-l", env=env)
    assert (done.stdout, done.returncode) == ("0: * * * echo hi\n", 0)
    # And without -p, the variable's directory, where no daemon is: it says so.
    done = _cassini("-l", env=env)
    assert done.returncode == 1 and str(tmp_path / "nowhere") in done.stderr


@pytest.mark.parametrize("value", [None, ""])
def test_it_falls_back_to_the_default_pipes_directory(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SATURND_PIPES_DIR", raising=False)
    if value is not None:
        monkeypatch.setenv("SATURND_PIPES_DIR", value)
    name = pwd.getpwuid(os.getuid()).pw_name
    assert default_pipes_dir() == f"/tmp/{name}/saturnd/pipes"


# --- output ---------------------------------------------------------------------------

RENDERED = [
    # (request, reply, outcome); times are shown in UTC (time.gmtime)
    (ListRequest(), ListReply(()), Outcome()),
    (
        ListRequest(),
        ListReply(
            (
                TaskEntry(0, ALL, (b"echo", b"coucou")),
                TaskEntry(1, Timing(0b10000100111), (b"toto.sh",)),
                TaskEntry(7, Timing((1 << 4) | (1 << 10), daysofweek=0b1010), (b"a",)),
                TaskEntry(8, Timing(0xFE7A, 0xAA), (b"b", b"c d")),
                TaskEntry(9, Timing(0b11, 1 << 9), (b"\xff\x00",)),
                TaskEntry(2**64 - 1, Timing(1 << 59, 1 << 23, 1), (b"z",)),
            )
        ),
        Outcome(
            b"0: * * * echo coucou\n"
            b"1: 0-2,5,10 * * toto.sh\n"
            b"7: 4,10 * 1,3 a\n"
            b"8: 1,3-6,9-15 1,3,5,7 * b c d\n"
            b"9: 0-1 9 * \xff\\x00\n"
            b"18446744073709551615: 59 23 0 z\n"
        ),
    ),
    (CreateRequest(ALL, (b"x",)), CreateReply(26), Outcome(b"26\n")),
    (CreateRequest(ALL, (b"x",)), CreateReply(2**64 - 1), Outcome(b"18446744073709551615\n")),
    (RemoveRequest(3), OkReply(), Outcome()),
    (RemoveRequest(3), ErrorReply(b"NF"), Outcome(stderr="cassini: no task with id 3\n", status=1)),
    (TimesExitcodesRequest(1), TimesExitcodesReply(()), Outcome()),
    (
        TimesExitcodesRequest(1),
        TimesExitcodesReply((Run(1793124000, 0), Run(1793124060, 255), Run(0, 0xFFFF), Run(-1, 1))),
        Outcome(
            b"2026-10-27 18:00:00 0\n"
            b"2026-10-27 18:01:00 255\n"
            b"1970-01-01 00:00:00 65535\n"
            b"1969-12-31 23:59:59 1\n"
        ),
    ),
    (
        TimesExitcodesRequest(1),
        TimesExitcodesReply((Run(2**63 - 1, 0),)),
        Outcome(
            stderr=f"cassini: malformed reply from daemon: run time {2**63 - 1} is out of range\n",
            status=1,
        ),
    ),
    (
        TimesExitcodesRequest(5),
        ErrorReply(b"NF"),
        Outcome(stderr="cassini: no task with id 5\n", status=1),
    ),
    (StdoutRequest(2), OutputReply(b"a\x00b"), Outcome(b"a\x00b")),
    (StdoutRequest(2), OutputReply(b""), Outcome()),
    (StdoutRequest(2), ErrorReply(b"NF"), Outcome(stderr="cassini: no task with id 2\n", status=1)),
    (
        StdoutRequest(2),
        ErrorReply(b"NR"),
        Outcome(stderr="cassini: task 2 has not run yet\n", status=1),
    ),
    (StderrRequest(4), OutputReply(b"oops\n"), Outcome(b"oops\n")),
    (StderrRequest(4), ErrorReply(b"NF"), Outcome(stderr="cassini: no task with id 4\n", status=1)),
    (
        StderrRequest(4),
        ErrorReply(b"NR"),
        Outcome(stderr="cassini: task 4 has not run yet\n", status=1),
    ),
    (TerminateRequest(), OkReply(), Outcome()),
]


@pytest.mark.parametrize(("request_", "reply", "outcome"), RENDERED, ids=lambda v: repr(v)[:60])
def test_it_renders_replies(request_: Request, reply: object, outcome: Outcome) -> None:
    assert render(request_, reply, time.gmtime) == outcome  # type: ignore[arg-type]


def test_it_renders_times_with_the_given_local_time() -> None:
    # Whatever the clock says, what is shown is what `localtime` returns.
    def paris_in_winter(seconds: int) -> time.struct_time:
        return time.gmtime(seconds + 3600)

    reply = TimesExitcodesReply((Run(1793120400, 3),))
    outcome = render(TimesExitcodesRequest(0), reply, paris_in_winter)
    assert outcome == Outcome(b"2026-10-27 18:00:00 3\n")


# --- the newer options: -n -N -v --json --export --import ------------------------------

NEWER = [
    # (args, the invocation)
    (["-v"], Invocation(ListExRequest(), mode="table")),
    (["-l", "-v"], Invocation(ListExRequest(), mode="table")),
    (["-lv", "-v"], Invocation(ListExRequest(), mode="verbose")),
    (["-lvvv"], Invocation(ListExRequest(), mode="verbose")),
    (["--json"], Invocation(ListExRequest(), json=True)),
    (["-l", "--json", "-p", "/p"], Invocation(ListExRequest(), "/p", json=True)),
    (["-l", "-v", "--js"], Invocation(ListExRequest(), mode="table", json=True)),
    (["-x", "3", "--json"], Invocation(TimesExitcodesRequest(3), json=True)),
    (["-n", "4"], Invocation(ListExRequest(), mode="next", task_id=4, count=5)),
    (["-n4", "-N", "12"], Invocation(ListExRequest(), mode="next", task_id=4, count=12)),
    (["-N", "1000", "-n", "0"], Invocation(ListExRequest(), mode="next", task_id=0, count=1000)),
    (
        ["-n", "7", "-N", "007", "--json"],
        Invocation(ListExRequest(), mode="next", task_id=7, count=7, json=True),
    ),
    (["--export"], Invocation(ListExRequest(), mode="export")),
    (["--export", "-p", "d"], Invocation(ListExRequest(), "d", mode="export")),
    # --export-k: a prefix of one long option (--ex, --exp, --export- are ambiguous).
    (
        ["--export-k", "--ima", "reg/img:1"],
        Invocation(ListExRequest(), mode="export-k8s", image="reg/img:1"),
    ),
    (["--export-s", "d", "-p", "p"], ExportSystemd("d", "p")),
    (["--jso"], Invocation(ListExRequest(), json=True)),  # a prefix of one long option
    (["--import", "f.txt"], Import("f.txt")),
    (["--import=-", "-p", "d"], Import("-", "d")),
    (["-p", "d", "--import", "--json"], Import("--json", "d")),
    # After the command of -c, everything is the command's.
    (["-c", "echo", "--json"], Invocation(CreateRequest(ALL, (b"echo", b"--json")))),
    (["-c", "x", "-n", "1", "-v"], Invocation(CreateRequest(ALL, (b"x", b"-n", b"1", b"-v")))),
    (["-c", "--", "--export"], Invocation(CreateRequest(ALL, (b"--export",)))),
]


@pytest.mark.parametrize(("args", "expected"), NEWER, ids=lambda v: repr(v))
def test_it_parses_the_newer_options(args: list[str], expected: object) -> None:
    assert parse_args(args) == expected


NEWER_INVALID = [
    (["-N", "3"], "option -N is only valid with -n"),
    (["-l", "-N", "3"], "option -N is only valid with -n"),
    (["-r", "1", "-v"], "option -v is only valid with -l or -x"),
    (["-n", "1", "-v"], "option -v is only valid with -l or -x"),
    (["-r", "1", "--json"], "option --json is only valid with -l, -x or -n"),
    (["-o", "1", "--json"], "option --json is only valid with -l, -x or -n"),
    (["--export", "--json"], "option --json is only valid with -l, -x or -n"),
    (["--json", "-c", "x"], "option --json is only valid with -l, -x or -n"),
    (["-q", "--json"], "option --json is only valid with -l, -x or -n"),
    (["-n"], "option -n requires argument"),
    (["-n", "x"], "invalid task id 'x'"),
    (["-n", "1", "-N", "0"], "invalid count '0': expected a number from 1 to 1000"),
    (["-n", "1", "-N", "1001"], "invalid count '1001'"),
    (["-n", "1", "-N", "-1"], "invalid count '-1'"),
    (["-n", "1", "-N", "9" * 5000], "invalid count"),
    (["-n", "1", "-N", "2", "-N", "3"], "option -N given more than once"),
    (["-n", "1", "-x", "1"], "conflicting options: -n 1 and -x 1"),
    (["-l", "--export"], "conflicting options: -l and --export"),
    (["--import", "a", "--import", "b"], "conflicting options: --import a and --import b"),
    (["--export", "--import", "a"], "conflicting options"),
    (["--import", ""], "--import needs a file name"),
    (["--import"], "option --import requires argument"),
    (["--json=1"], "option --json must not have an argument"),
    (["--export", "x"], "unexpected argument 'x'"),
    (["--import", "f", "x"], "unexpected argument 'x'"),
    (["-n", "1", "x"], "unexpected argument 'x'"),
    (["--x"], "option --x not recognized"),
    (["--list"], "option --list not recognized"),
    (["--export", "-m", "1"], "option -m is only valid with -c"),
    (["--ex"], "option --ex not a unique prefix"),  # three --export options
    (["--export-k8s"], "--export-k8s needs --image IMAGE"),
    (["--export-k8s", "--image="], "--export-k8s needs --image IMAGE"),
    (["--export", "--image", "i"], "option --image is only valid with --export-k8s"),
    (["--export-k8s", "--image", "i", "--image", "j"], "option --image given more than once"),
    (["--export-k8s", "--image", "i", "x"], "unexpected argument 'x'"),
]


@pytest.mark.parametrize(("args", "message"), NEWER_INVALID, ids=lambda v: repr(v)[:60])
def test_it_rejects_invalid_uses_of_the_newer_options(args: list[str], message: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_args(args)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_it_documents_every_newer_option_in_the_usage() -> None:
    for option in ("-n TASKID", "-N COUNT", "-v", "--json", "--export", "--import FILE"):
        assert option in USAGE


# What PROTOCOL.md's option string accepted must parse exactly as it did: the same
# options with the same arguments, and the same command for -c.
_WORDS = st.sampled_from(
    [
        "-l", "-c", "-q", "-h", "-m", "-H", "-d", "-p", "-r", "-x", "-o", "-e",
        "-lc", "-cl", "-m5", "-r1", "-pdir", "-lq", "-ql",
        "-n", "-N", "-v", "-lv", "-n3", "--json", "--export", "--import", "--import=f",
        "--", "-", "--x", "echo", "ls", "1", "0-5", "*", "", "-json", "--js",
    ]
)  # fmt: skip


@given(st.lists(_WORDS, max_size=8))
@settings(max_examples=400, deadline=None)
def test_it_parses_every_original_command_line_as_before(args: list[str]) -> None:
    try:
        before = getopt.getopt(args, PROTOCOL_OPTIONS)
    except getopt.GetoptError:
        return  # not a valid command line before: the new options may give it a meaning
    assert getopt.getopt(args, OPTIONS, list(LONG_OPTIONS)) == before


def test_it_keeps_the_original_option_string() -> None:
    assert PROTOCOL_OPTIONS == "hlcqm:H:d:p:r:x:o:e:"
    assert OPTIONS.startswith(PROTOCOL_OPTIONS)


@pytest.mark.parametrize(("args", "request_", "pipes_dir"), VALID, ids=lambda v: repr(v))
def test_it_gives_the_original_invocations_their_original_output(
    args: list[str], request_: Request, pipes_dir: str | None
) -> None:
    parsed = parse_args(args)
    assert isinstance(parsed, Invocation)
    assert (parsed.mode, parsed.json) == ("plain", False)


@pytest.mark.parametrize(("request_", "reply", "outcome"), RENDERED, ids=lambda v: repr(v)[:60])
def test_it_responds_to_plain_invocations_as_render_does(
    request_: Request, reply: object, outcome: Outcome
) -> None:
    invocation = Invocation(request_)
    assert respond(invocation, reply, time.gmtime, 0) == outcome  # type: ignore[arg-type]


# --- start-up: the plain options load nothing new ---------------------------------------

NEW_MODULES = {"cassini.output", "cassini.crontab", "json", "saturnd.schedule", "cron_descriptor"}
NEW_MODULES |= {"cassini.history", "cassini.table", "cassini.duration", "cassini.policyline"}


def _imported(*args: str) -> set[str]:
    """Modules that `python -X importtime -m cassini ARGS` imports."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cassini", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "args",
    [
        ["-h"],
        ["-l"],
        ["-x", "1"],
        ["-r", "1"],
        ["-c", "-m", "1", "true"],
        ["-c", "--no-overlap", "true"],
        ["--kill", "1"],
        ["-o", "1", "--start", "5"],
        ["-N", "3"],  # a usage error
    ],
)
def test_it_loads_nothing_new_for_the_plain_options(args: list[str]) -> None:
    modules = _imported("-p", "/nonexistent/pipes", *args)
    assert "cassini.cli" in modules
    assert modules & NEW_MODULES == set()


# --- the manual page ------------------------------------------------------------------

MAN_PAGE = Path(__file__).resolve().parent.parent / "man" / "cassini.1"


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_the_manual_page_renders_without_warnings() -> None:
    done = subprocess.run(
        ["man", "--warnings", "-l", str(MAN_PAGE)],
        capture_output=True,
        env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"),
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert b"--import" in done.stdout


def test_the_manual_page_documents_every_option() -> None:
    page = MAN_PAGE.read_text()
    for letter in "hlcqmHdprxoenNv":
        assert f".B \\-{letter}" in page or f".BI \\-{letter} " in page, letter
    for name in ("export", "import", "json"):
        assert f"\\-\\-{name}" in page, name
