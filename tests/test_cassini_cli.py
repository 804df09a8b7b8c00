"""Unit tests of cassini.cli: argument parsing, usage errors and output, without I/O."""

from __future__ import annotations

import os
import time

import pytest

from cassini.cli import (
    USAGE,
    Help,
    Invocation,
    Outcome,
    UsageError,
    parse_args,
    parse_task_id,
    render,
)
from saturnd.protocol import (
    CreateReply,
    CreateRequest,
    ErrorReply,
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
from saturnd.timing import Timing

ALL = Timing()  # * * *

# --- parsing ----------------------------------------------------------------------

VALID = [
    # (args, request, pipes_dir)
    ([], ListRequest(), None),
    (["-l"], ListRequest(), None),
    (["-l", "-l"], ListRequest(), None),
    (["-p", "/x"], ListRequest(), "/x"),
    (["-l", "-p", "/x"], ListRequest(), "/x"),
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


@pytest.mark.parametrize("args", [["-h"], ["-l", "-h"], ["-h", "-r", "x"], ["-r", "1", "-l", "-h"]])
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
    (["-m", "1"], "-m is only valid with -c"),
    (["-l", "-H", "1"], "-H is only valid with -c"),
    (["-x", "1", "-d", "1"], "-d is only valid with -c"),
    (["-c", "-m", "60", "x"], "invalid minutes field '60'"),
    (["-c", "-H", "24", "x"], "invalid hours field '24'"),
    (["-c", "-d", "8", "x"], "invalid day-of-week field '8'"),
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
    assert USAGE.endswith("\n")


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
            b"9: 0-1 9 * \xff\x00\n"
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
