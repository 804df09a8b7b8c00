"""Unit and property tests of saturnd.protocol: encoding and the incremental decoders.

The byte tables below are written by hand from PROTOCOL.md, never produced by `encode`,
and are checked both ways and fed to the decoders one byte at a time.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saturnd import decoding, protocol
from saturnd.decoding import ReplyDecoder, RequestDecoder, decode_reply, decode_request
from saturnd.protocol import (
    MAX_ARGC,
    MAX_REPLY_STRING,
    MAX_REQUEST,
    MAX_STRING,
    NEED_DATA,
    CreateExRequest,
    CreateReply,
    CreateRequest,
    ErrorReply,
    HistoryReply,
    HistoryRequest,
    KillReply,
    KillRequest,
    ListExReply,
    ListExRequest,
    ListReply,
    ListRequest,
    OkReply,
    OutputExReply,
    OutputExRequest,
    OutputReply,
    PauseRequest,
    ProtocolError,
    RemoveRequest,
    ReplaceReply,
    ReplaceRequest,
    Reply,
    Request,
    ResumeRequest,
    Run,
    RunNowRequest,
    StderrRequest,
    StdoutRequest,
    TaskEntry,
    TerminateRequest,
    TimesExitcodesReply,
    TimesExitcodesRequest,
    VersionReply,
    VersionRequest,
    encode,
)
from saturnd.runrecord import BY_HAND, CUT_STDERR, CUT_STDOUT, KILLED, SKIPPED, RunRecord
from saturnd.task import NO_EXTRAS, Extras, Task
from saturnd.timing import FULL_DAYSOFWEEK, FULL_HOURS, FULL_MINUTES, Timing

QUICK = settings(max_examples=200, deadline=None)


def h(text: str) -> bytes:
    """Bytes from spaced hex, as PROTOCOL.md writes them."""
    return bytes.fromhex(text)


EVERY_MINUTE = Timing(FULL_MINUTES, FULL_HOURS, FULL_DAYSOFWEEK)
EVERY_MINUTE_HEX = "0f ff ff ff ff ff ff ff  00 ff ff ff  7f"
WEDNESDAY_9_14 = Timing(0x1, 0x4200, 0x08)  # the worked example: 0 9,14 3
WEDNESDAY_9_14_HEX = "00 00 00 00 00 00 00 01  00 00 42 00  08"
DOC_EXAMPLE = Timing(0x00002000000007F0, 0, 0x5C)  # 4-10,45, no hour, 2-4,6
DOC_EXAMPLE_HEX = "00 00 20 00 00 00 07 f0  00 00 00 00  5c"
ECHO_TEST_1 = (b"echo", b"test-1")
ECHO_TEST_1_HEX = "00 00 00 02  00 00 00 04 65 63 68 6f  00 00 00 06 74 65 73 74 2d 31"

# docs/protocol.md's CREATE-EX example: `echo test-1` at 9:00 on the 1st, in UTC, A=1,
# "in" on its standard input, MAILTO="" (no mail); EXTRAS start with POLICY: no timeout,
# no jitter, no flag, no on-failure command.
MONTHLY = Task(
    Timing.cron("0 9 1 * *", zone="UTC"), ECHO_TEST_1, Extras(((b"A", b"1"),), b"in", b"")
)
MONTHLY_HEX = (
    "00 00 00 00 00 00 00 01  00 00 02 00  7f  00 00 00 02  1f fe  00  00 00 00 03 55 54 43"
    f"  {ECHO_TEST_1_HEX}"
    "  00 00 00 00  00 00 00 00  00  00 00 00 00"
    "  00 00 00 01  00 00 00 01 41  00 00 00 01 31  00 00 00 02 69 6e  01 00 00 00 00"
)
# @reboot (every set empty, flag 2), the daemon's zone, no extras at all.
AT_REBOOT = Task(Timing.cron("@reboot"), (b"ls",), NO_EXTRAS)
AT_REBOOT_HEX = (
    "00 00 00 00 00 00 00 00  00 00 00 00  00  00 00 00 00  00 00  02  00 00 00 00"
    "  00 00 00 01  00 00 00 02 6c 73"
    "  00 00 00 00  00 00 00 00  00  00 00 00 00  00 00 00 00  00 00 00 00  00"
)
# Mondays or the 13th (cron's OR rule, flag 1), in every month but December.
OR_DAYS = Task(Timing.cron("0 0 13 1-11 1"), (b"x",))
OR_DAYS_HEX = (
    "00 00 00 00 00 00 00 01  00 00 00 01  02  00 00 20 00  0f fe  01  00 00 00 00"
    "  00 00 00 01  00 00 00 01 78"
    "  00 00 00 00  00 00 00 00  00  00 00 00 00  00 00 00 00  00 00 00 00  00"
)
# Every policy: timeout 1h30m (5400 s), jitter 5m (300 s), PFLAGS no-overlap 1 |
# catch-up 2 | paused 4, on failure `mail me`; then no variable, no stdin, no MAILTO.
POLICIES = Task(
    Timing.cron("*/15 * * * *"),
    (b"x",),
    Extras(timeout=5400, jitter=300, no_overlap=True, catch_up=True, on_failure=b"mail me",
           paused=True),
)  # fmt: skip
POLICIES_HEX = (
    "00 00 20 00 40 00 80 01  00 ff ff ff  7f  ff ff ff fe  1f fe  00  00 00 00 00"
    "  00 00 00 01  00 00 00 01 78"
    "  00 00 15 18  00 00 01 2c  07  00 00 00 07 6d 61 69 6c 20 6d 65"
    "  00 00 00 00  00 00 00 00  00"
)
# A no-overlap task that is neither paused nor caught up: PFLAGS 01 alone.
NO_OVERLAP = Task(Timing(), (b"x",), Extras(no_overlap=True))
NO_OVERLAP_HEX = (
    f"{EVERY_MINUTE_HEX}  ff ff ff fe  1f fe  00  00 00 00 00  00 00 00 01  00 00 00 01 78"
    "  00 00 00 00  00 00 00 00  01  00 00 00 00  00 00 00 00  00 00 00 00  00"
)

REQUESTS: list[tuple[Request, str]] = [
    (ListRequest(), "4c 53"),
    (TerminateRequest(), "54 4d"),
    (
        CreateRequest(WEDNESDAY_9_14, ECHO_TEST_1),  # PROTOCOL.md's worked example
        f"43 52  {WEDNESDAY_9_14_HEX}  {ECHO_TEST_1_HEX}",
    ),
    (
        CreateRequest(EVERY_MINUTE, (b"ls",)),
        f"43 52  {EVERY_MINUTE_HEX}  00 00 00 01  00 00 00 02 6c 73",
    ),
    (
        CreateRequest(DOC_EXAMPLE, (b"a", b"", b"b\x00c")),
        f"43 52  {DOC_EXAMPLE_HEX}  00 00 00 03  00 00 00 01 61  00 00 00 00  00 00 00 03 62 00 63",
    ),
    (RemoveRequest(5), "52 4d  00 00 00 00 00 00 00 05"),
    (RemoveRequest(0), "52 4d  00 00 00 00 00 00 00 00"),
    (TimesExitcodesRequest(0x0102030405060708), "54 58  01 02 03 04 05 06 07 08"),
    (StdoutRequest(2**64 - 1), "53 4f  ff ff ff ff ff ff ff ff"),
    (StderrRequest(26), "53 45  00 00 00 00 00 00 00 1a"),
    # Extensions (docs/protocol.md), socket only.
    (VersionRequest(b"cassini 1"), "76 72  00 00 00 09 63 61 73 73 69 6e 69 20 31"),
    (VersionRequest(b""), "76 72  00 00 00 00"),
    (CreateExRequest(MONTHLY), f"63 78  {MONTHLY_HEX}"),
    (CreateExRequest(AT_REBOOT), f"63 78  {AT_REBOOT_HEX}"),
    (ListExRequest(), "6c 78"),
    (
        ReplaceRequest((3, 2**64 - 1), (OR_DAYS, AT_REBOOT)),
        "72 70  00 00 00 02  00 00 00 00 00 00 00 03  ff ff ff ff ff ff ff ff"
        f"  00 00 00 02  {OR_DAYS_HEX}  {AT_REBOOT_HEX}",
    ),
    (ReplaceRequest((), ()), "72 70  00 00 00 00  00 00 00 00"),
    (CreateExRequest(POLICIES), f"63 78  {POLICIES_HEX}"),
    (CreateExRequest(NO_OVERLAP), f"63 78  {NO_OVERLAP_HEX}"),
    (RunNowRequest(7), "72 75  00 00 00 00 00 00 00 07"),
    (PauseRequest(2**64 - 1), "70 61  ff ff ff ff ff ff ff ff"),
    (ResumeRequest(0), "72 73  00 00 00 00 00 00 00 00"),
    (KillRequest(0x0102030405060708), "6b 69  01 02 03 04 05 06 07 08"),
    (HistoryRequest(26), "68 78  00 00 00 00 00 00 00 1a"),
    # OUTPUT-EX: TASKID, STREAM uint8 (1 stdout, 2 stderr), START int64 (0: the last run).
    (OutputExRequest(3, 1), "6f 78  00 00 00 00 00 00 00 03  01  00 00 00 00 00 00 00 00"),
    (
        OutputExRequest(3, 2, 1_700_000_000),
        "6f 78  00 00 00 00 00 00 00 03  02  00 00 00 00 65 53 f1 00",
    ),
]

REPLIES: list[tuple[bytes, Reply, str]] = [
    (b"LS", ListReply(()), "4f 4b  00 00 00 00"),
    (
        b"LS",
        ListReply(
            (
                TaskEntry(0, WEDNESDAY_9_14, ECHO_TEST_1),
                TaskEntry(3, EVERY_MINUTE, (b"ls", b"-l")),
            )
        ),
        "4f 4b  00 00 00 02"
        f"  00 00 00 00 00 00 00 00  {WEDNESDAY_9_14_HEX}  {ECHO_TEST_1_HEX}"
        f"  00 00 00 00 00 00 00 03  {EVERY_MINUTE_HEX}"
        "  00 00 00 02  00 00 00 02 6c 73  00 00 00 02 2d 6c",
    ),
    (b"CR", CreateReply(26), "4f 4b  00 00 00 00 00 00 00 1a"),  # the worked example
    (b"CR", CreateReply(2**64 - 1), "4f 4b  ff ff ff ff ff ff ff ff"),
    (b"RM", OkReply(), "4f 4b"),
    (b"RM", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"TX", TimesExitcodesReply(()), "4f 4b  00 00 00 00"),
    (
        b"TX",
        TimesExitcodesReply(
            (Run(1_700_000_000, 0), Run(-1, 0xFFFF), Run(-(2**63), 127), Run(2**63 - 1, 255))
        ),
        "4f 4b  00 00 00 04"
        "  00 00 00 00 65 53 f1 00  00 00"
        "  ff ff ff ff ff ff ff ff  ff ff"
        "  80 00 00 00 00 00 00 00  00 7f"
        "  7f ff ff ff ff ff ff ff  00 ff",
    ),
    (b"TX", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"SO", OutputReply(b"coucou\n"), "4f 4b  00 00 00 07 63 6f 75 63 6f 75 0a"),
    (b"SO", OutputReply(b""), "4f 4b  00 00 00 00"),
    (b"SO", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"SO", ErrorReply(b"NR"), "45 52 4e 52"),
    (b"SE", OutputReply(b"\x00\xff\x00"), "4f 4b  00 00 00 03 00 ff 00"),
    (b"SE", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"SE", ErrorReply(b"NR"), "45 52 4e 52"),
    (b"TM", OkReply(), "4f 4b"),
    # Extensions (docs/protocol.md), socket only: ER EM after any request.
    (
        b"vr",
        VersionReply(b"s 1", (b"LS", b"vr")),
        "4f 4b  00 00 00 03 73 20 31  00 00 00 02 4c 53 76 72",
    ),
    (b"vr", VersionReply(b"", ()), "4f 4b  00 00 00 00  00 00 00 00"),
    (b"CR", ErrorReply(b"EM", "disk full"), "45 52 45 4d  00 00 00 09 64 69 73 6b 20 66 75 6c 6c"),
    (b"LS", ErrorReply(b"EM", "é"), "45 52 45 4d  00 00 00 02 c3 a9"),
    (b"cx", CreateReply(27), "4f 4b  00 00 00 00 00 00 00 1b"),
    (b"lx", ListExReply(()), "4f 4b  00 00 00 00"),
    (
        b"lx",
        ListExReply(
            (
                TaskEntry(4, MONTHLY.timing, MONTHLY.argv, MONTHLY.extras),
                TaskEntry(9, AT_REBOOT.timing, AT_REBOOT.argv),
            )
        ),
        f"4f 4b  00 00 00 02  00 00 00 00 00 00 00 04  {MONTHLY_HEX}"
        f"  00 00 00 00 00 00 00 09  {AT_REBOOT_HEX}",
    ),
    (
        b"rp",
        ReplaceReply((10, 11)),
        "4f 4b  00 00 00 02  00 00 00 00 00 00 00 0a  00 00 00 00 00 00 00 0b",
    ),
    (b"rp", ReplaceReply(()), "4f 4b  00 00 00 00"),
    (
        b"rp",
        ErrorReply(b"EM", "no task with id 3"),
        "45 52 45 4d  00 00 00 11" + " 6e 6f 20 74 61 73 6b 20 77 69 74 68 20 69 64 20 33",
    ),
    (
        b"lx",
        ListExReply((TaskEntry(1, POLICIES.timing, POLICIES.argv, POLICIES.extras),)),
        f"4f 4b  00 00 00 01  00 00 00 00 00 00 00 01  {POLICIES_HEX}",
    ),
    (b"ru", OkReply(), "4f 4b"),
    (b"ru", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"pa", OkReply(), "4f 4b"),
    (b"pa", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"rs", OkReply(), "4f 4b"),
    (b"rs", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"ki", KillReply(0), "4f 4b  00 00 00 00"),
    (b"ki", KillReply(3), "4f 4b  00 00 00 03"),
    (b"ki", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"hx", HistoryReply(()), "4f 4b  00 00 00 00"),
    # run-record: START int64, END int64, EXITCODE uint16, OUTCOME uint8, FLAGS uint8,
    # PID int32.
    (
        b"hx",
        HistoryReply(
            (
                RunRecord(1_700_000_000, 1_700_000_090, 0, 0, CUT_STDOUT | BY_HAND, 4321),
                RunRecord(1_700_000_060, 1_700_000_060, 0xFFFF, SKIPPED),
                RunRecord(-1, 2**63 - 1, 0xFFFF, KILLED, CUT_STDERR, -1),
            )
        ),
        "4f 4b  00 00 00 03"
        "  00 00 00 00 65 53 f1 00  00 00 00 00 65 53 f1 5a  00 00  00  05  00 00 10 e1"
        "  00 00 00 00 65 53 f1 3c  00 00 00 00 65 53 f1 3c  ff ff  03  00  00 00 00 00"
        "  ff ff ff ff ff ff ff ff  7f ff ff ff ff ff ff ff  ff ff  02  02  ff ff ff ff",
    ),
    (b"hx", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"ox", OutputExReply(False, b"hi\n"), "4f 4b  00  00 00 00 03 68 69 0a"),
    (b"ox", OutputExReply(True, b""), "4f 4b  01  00 00 00 00"),
    (b"ox", ErrorReply(b"NF"), "45 52 4e 46"),
    (b"ox", ErrorReply(b"NR"), "45 52 4e 52"),
]


def feed_byte_by_byte(decoder: RequestDecoder | ReplyDecoder, data: bytes) -> object:
    """Feed every byte alone; every strict prefix must be NEED_DATA."""
    for index in range(len(data) - 1):
        decoder.feed(data[index : index + 1])
        assert decoder.next_message() is NEED_DATA, f"after {index + 1} of {len(data)} bytes"
    decoder.feed(data[-1:])
    return decoder.next_message()


@pytest.mark.parametrize(("request_", "hex_"), REQUESTS)
def test_it_encodes_and_decodes_the_request_table(request_: Request, hex_: str) -> None:
    data = h(hex_)
    assert encode(request_) == data
    assert decode_request(data) == request_
    decoder = RequestDecoder()
    assert feed_byte_by_byte(decoder, data) == request_
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == 0


@pytest.mark.parametrize(("opcode", "reply", "hex_"), REPLIES)
def test_it_encodes_and_decodes_the_reply_table(opcode: bytes, reply: Reply, hex_: str) -> None:
    data = h(hex_)
    assert encode(reply) == data
    assert decode_reply(opcode, data) == reply
    decoder = ReplyDecoder(opcode)
    assert feed_byte_by_byte(decoder, data) == reply
    assert decoder.buffered == 0


def test_it_covers_every_opcode_and_reply_kind_in_the_tables() -> None:
    opcodes = {h(hex_)[:2] for _, hex_ in REQUESTS}
    assert opcodes == {
        b"LS",
        b"CR",
        b"RM",
        b"TX",
        b"SO",
        b"SE",
        b"TM",
        b"vr",
        b"cx",
        b"lx",
        b"rp",
    } | {
        b"ru",
        b"pa",
        b"rs",
        b"ki",
        b"hx",
        b"ox",
    }
    kinds = {(opcode, type(reply), getattr(reply, "code", None)) for opcode, reply, _ in REPLIES}
    ok_types = {
        b"LS": ListReply,
        b"CR": CreateReply,
        b"RM": OkReply,
        b"TX": TimesExitcodesReply,
        b"SO": OutputReply,
        b"SE": OutputReply,
        b"TM": OkReply,
        b"vr": VersionReply,
        b"cx": CreateReply,
        b"lx": ListExReply,
        b"rp": ReplaceReply,
        b"ru": OkReply,
        b"pa": OkReply,
        b"rs": OkReply,
        b"ki": KillReply,
        b"hx": HistoryReply,
        b"ox": OutputExReply,
    }
    errors = [(b"RM", b"NF"), (b"TX", b"NF"), (b"SO", b"NF"), (b"SO", b"NR")]
    errors += [(b"SE", b"NF"), (b"SE", b"NR"), (b"CR", b"EM"), (b"LS", b"EM"), (b"rp", b"EM")]
    errors += [(op, b"NF") for op in (b"ru", b"pa", b"rs", b"ki", b"hx", b"ox")] + [(b"ox", b"NR")]
    expected: set[tuple[bytes, type, bytes | None]]
    expected = {(op, kind, None) for op, kind in ok_types.items()}
    expected |= {(op, ErrorReply, code) for op, code in errors}
    assert kinds == expected


# --- strategies of valid messages -----------------------------------------------

task_ids = st.integers(0, 2**64 - 1)
timings = st.builds(
    Timing,
    st.integers(0, FULL_MINUTES),
    st.integers(0, FULL_HOURS),
    st.integers(0, FULL_DAYSOFWEEK),
)
argvs = st.builds(
    lambda first, rest: (first, *rest),
    st.binary(min_size=1, max_size=12),
    st.lists(st.binary(max_size=12), max_size=4),
)
runs = st.builds(Run, st.integers(-(2**63), 2**63 - 1), st.integers(0, 0xFFFF))
whole_timings = st.builds(
    Timing,
    st.integers(0, FULL_MINUTES),
    st.integers(0, FULL_HOURS),
    st.integers(0, FULL_DAYSOFWEEK),
    st.integers(0, 0xFFFF_FFFF).map(lambda bits: bits & ~1),
    st.integers(0, 0x1FFF).map(lambda bits: bits & ~1),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["", "UTC", "Asia/Kolkata"]),
)
clean = st.binary(max_size=8).map(lambda value: value.replace(b"\0", b""))
extras = st.builds(
    Extras,
    st.lists(st.tuples(clean.map(lambda n: n.replace(b"=", b"") or b"N"), clean), max_size=2),
    st.binary(max_size=12),
    st.one_of(st.none(), clean),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.booleans(),
    clean,
    st.booleans(),
)
tasks = st.builds(Task, whole_timings, argvs, extras)

requests: st.SearchStrategy[Request] = st.one_of(
    st.just(ListRequest()),
    st.just(TerminateRequest()),
    st.builds(CreateRequest, timings, argvs),
    st.builds(RemoveRequest, task_ids),
    st.builds(TimesExitcodesRequest, task_ids),
    st.builds(StdoutRequest, task_ids),
    st.builds(StderrRequest, task_ids),
    st.builds(CreateExRequest, tasks),
    st.just(ListExRequest()),
    st.builds(
        ReplaceRequest,
        st.lists(task_ids, max_size=3).map(tuple),
        st.lists(tasks, max_size=2).map(tuple),
    ),
    st.builds(RunNowRequest, task_ids),
    st.builds(PauseRequest, task_ids),
    st.builds(ResumeRequest, task_ids),
    st.builds(KillRequest, task_ids),
    st.builds(HistoryRequest, task_ids),
    st.builds(OutputExRequest, task_ids, st.sampled_from([1, 2]), st.integers(-(2**63), 2**63 - 1)),
)
run_records = st.builds(
    RunRecord,
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(-(2**31), 2**31 - 1),
)

REPLY_STRATEGIES: dict[bytes, st.SearchStrategy[Reply]] = {
    b"LS": st.builds(
        ListReply,
        st.lists(st.builds(TaskEntry, task_ids, timings, argvs), max_size=3).map(tuple),
    ),
    b"CR": st.builds(CreateReply, task_ids),
    b"RM": st.sampled_from([OkReply(), ErrorReply(b"NF")]),
    b"TX": st.one_of(
        st.builds(TimesExitcodesReply, st.lists(runs, max_size=5).map(tuple)),
        st.just(ErrorReply(b"NF")),
    ),
    b"SO": st.one_of(
        st.builds(OutputReply, st.binary(max_size=40)),
        st.sampled_from([ErrorReply(b"NF"), ErrorReply(b"NR")]),
    ),
    b"SE": st.one_of(
        st.builds(OutputReply, st.binary(max_size=40)),
        st.sampled_from([ErrorReply(b"NF"), ErrorReply(b"NR")]),
    ),
    b"TM": st.just(OkReply()),
    b"cx": st.builds(CreateReply, task_ids),
    b"lx": st.builds(
        ListExReply,
        st.lists(
            st.builds(lambda i, t: TaskEntry(i, t.timing, t.argv, t.extras), task_ids, tasks),
            max_size=3,
        ).map(tuple),
    ),
    b"rp": st.builds(ReplaceReply, st.lists(task_ids, max_size=4).map(tuple)),
    b"ru": st.sampled_from([OkReply(), ErrorReply(b"NF")]),
    b"pa": st.sampled_from([OkReply(), ErrorReply(b"NF")]),
    b"rs": st.sampled_from([OkReply(), ErrorReply(b"NF")]),
    b"ki": st.one_of(st.builds(KillReply, st.integers(0, 2**32 - 1)), st.just(ErrorReply(b"NF"))),
    b"hx": st.one_of(
        st.builds(HistoryReply, st.lists(run_records, max_size=4).map(tuple)),
        st.just(ErrorReply(b"NF")),
    ),
    b"ox": st.one_of(
        st.builds(OutputExReply, st.booleans(), st.binary(max_size=40)),
        st.sampled_from([ErrorReply(b"NF"), ErrorReply(b"NR")]),
    ),
}
OPCODES = tuple(REPLY_STRATEGIES)
replies = st.sampled_from(OPCODES).flatmap(lambda op: st.tuples(st.just(op), REPLY_STRATEGIES[op]))

# What each decoder may return, besides NEED_DATA.
REQUEST_TYPES = (
    ListRequest,
    CreateRequest,
    RemoveRequest,
    TimesExitcodesRequest,
    StdoutRequest,
    StderrRequest,
    TerminateRequest,
    VersionRequest,
    CreateExRequest,
    ListExRequest,
    ReplaceRequest,
    RunNowRequest,
    PauseRequest,
    ResumeRequest,
    KillRequest,
    HistoryRequest,
    OutputExRequest,
)
REPLY_TYPES: dict[bytes, tuple[type, ...]] = {
    b"LS": (ListReply,),
    b"CR": (CreateReply,),
    b"RM": (OkReply, ErrorReply),
    b"TX": (TimesExitcodesReply, ErrorReply),
    b"SO": (OutputReply, ErrorReply),
    b"SE": (OutputReply, ErrorReply),
    b"TM": (OkReply,),
    b"cx": (CreateReply,),
    b"lx": (ListExReply,),
    b"rp": (ReplaceReply,),
    b"ru": (OkReply, ErrorReply),
    b"pa": (OkReply, ErrorReply),
    b"rs": (OkReply, ErrorReply),
    b"ki": (KillReply, ErrorReply),
    b"hx": (HistoryReply, ErrorReply),
    b"ox": (OutputExReply, ErrorReply),
}
ERROR_CODES = {
    b"LS": set(),
    b"CR": set(),
    b"RM": {b"NF"},
    b"TX": {b"NF"},
    b"SO": {b"NF", b"NR"},
    b"SE": {b"NF", b"NR"},
    b"TM": set(),
    b"cx": set(),
    b"lx": set(),
    b"rp": set(),
    b"ru": {b"NF"},
    b"pa": {b"NF"},
    b"rs": {b"NF"},
    b"ki": {b"NF"},
    b"hx": {b"NF"},
    b"ox": {b"NF", b"NR"},
}


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut into non-empty chunks at the given offsets (taken modulo its length)."""
    points = sorted({cut % len(data) for cut in cuts} - {0}) if data else []
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def decode_in_chunks(decoder: RequestDecoder | ReplyDecoder, chunks: list[bytes]) -> object:
    """Feed the chunks one by one; only the last may complete the message."""
    result: object = NEED_DATA
    for chunk in chunks:
        assert result is NEED_DATA
        decoder.feed(chunk)
        result = decoder.next_message()
    return result


@QUICK
@given(requests, st.lists(st.integers(0, 200), max_size=6))
def test_it_round_trips_every_request_whole_and_split(request_: Request, cuts: list[int]) -> None:
    data = encode(request_)
    assert decode_request(data) == request_
    assert decode_in_chunks(RequestDecoder(), split(data, cuts)) == request_


@QUICK
@given(replies, st.lists(st.integers(0, 200), max_size=6))
def test_it_round_trips_every_reply_whole_and_split(
    case: tuple[bytes, Reply], cuts: list[int]
) -> None:
    opcode, reply = case
    data = encode(reply)
    assert decode_reply(opcode, data) == reply
    assert decode_in_chunks(ReplyDecoder(opcode), split(data, cuts)) == reply


@QUICK
@given(requests)
def test_it_needs_data_for_every_strict_prefix_of_a_request(request_: Request) -> None:
    data = encode(request_)
    for end in range(len(data)):
        decoder = RequestDecoder()
        decoder.feed(data[:end])
        assert decoder.next_message() is NEED_DATA
        with pytest.raises(ProtocolError):
            decode_request(data[:end])


@QUICK
@given(replies)
def test_it_needs_data_for_every_strict_prefix_of_a_reply(case: tuple[bytes, Reply]) -> None:
    opcode, reply = case
    data = encode(reply)
    for end in range(len(data)):
        decoder = ReplyDecoder(opcode)
        decoder.feed(data[:end])
        assert decoder.next_message() is NEED_DATA
        with pytest.raises(ProtocolError):
            decode_reply(opcode, data[:end])


def check_request(message: object) -> None:
    assert isinstance(message, REQUEST_TYPES)
    if isinstance(message, CreateRequest):
        assert message.timing.is_valid()
        assert message.argv and message.argv[0]


def check_reply(opcode: bytes, message: object) -> None:
    assert isinstance(message, REPLY_TYPES[opcode])
    if isinstance(message, ErrorReply):
        assert message.code in ERROR_CODES[opcode]
    if isinstance(message, ListReply):
        for task in message.tasks:
            assert task.timing.is_valid()
            assert task.argv and task.argv[0]


def drive(
    decoder: RequestDecoder | ReplyDecoder, chunks: list[bytes], opcode: bytes | None
) -> None:
    """Feed chunks, taking every message out, until the end or a ProtocolError."""
    for chunk in chunks:
        decoder.feed(chunk)
        while True:
            try:
                message = decoder.next_message()
            except ProtocolError:
                return
            if message is NEED_DATA:
                break
            if opcode is None:
                check_request(message)
            else:
                check_reply(opcode, message)


opcode_prefixes = st.sampled_from([b"", b"LS", b"CR", b"RM", b"TX", b"SO", b"SE", b"TM"])
reply_prefixes = st.sampled_from([b"", b"OK", b"ER", b"ERNF", b"ERNR"])
noise = st.binary(max_size=120)
cut_lists = st.lists(st.integers(0, 200), max_size=8)


@QUICK
@given(opcode_prefixes, noise, cut_lists)
def test_it_decodes_random_request_bytes_or_raises_protocol_error(
    prefix: bytes, data: bytes, cuts: list[int]
) -> None:
    drive(RequestDecoder(), split(prefix + data, cuts), None)


@QUICK
@given(st.sampled_from(OPCODES), reply_prefixes, noise, cut_lists)
def test_it_decodes_random_reply_bytes_or_raises_protocol_error(
    opcode: bytes, prefix: bytes, data: bytes, cuts: list[int]
) -> None:
    drive(ReplyDecoder(opcode), split(prefix + data, cuts), opcode)


@QUICK
@given(requests, st.integers(0, 10_000), st.integers(0, 255), cut_lists)
def test_it_decodes_a_corrupted_request_or_raises_protocol_error(
    request_: Request, where: int, value: int, cuts: list[int]
) -> None:
    data = bytearray(encode(request_))
    data[where % len(data)] = value
    drive(RequestDecoder(), split(bytes(data), cuts), None)


@QUICK
@given(replies, st.integers(0, 10_000), st.integers(0, 255), cut_lists)
def test_it_decodes_a_corrupted_reply_or_raises_protocol_error(
    case: tuple[bytes, Reply], where: int, value: int, cuts: list[int]
) -> None:
    opcode, reply = case
    data = bytearray(encode(reply))
    data[where % len(data)] = value
    drive(ReplyDecoder(opcode), split(bytes(data), cuts), opcode)


# --- limits and malformed messages ----------------------------------------------


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


CREATE_HEAD = h(f"43 52 {WEDNESDAY_9_14_HEX}")  # opcode and timing, before ARGC
LIST_ENTRY_HEAD = h(f"4f 4b 00 00 00 01  00 00 00 00 00 00 00 07  {WEDNESDAY_9_14_HEX}")


def expect_error_on_last_byte(decoder: RequestDecoder | ReplyDecoder, data: bytes) -> None:
    """NEED_DATA up to the last byte of `data`, ProtocolError as soon as it arrives."""
    decoder.feed(data[:-1])
    assert decoder.next_message() is NEED_DATA
    decoder.feed(data[-1:])
    with pytest.raises(ProtocolError):
        decoder.next_message()


def decoder_and_head(context: str) -> tuple[RequestDecoder | ReplyDecoder, bytes]:
    if context == "request":
        return RequestDecoder(), CREATE_HEAD
    return ReplyDecoder(b"LS"), LIST_ENTRY_HEAD


@pytest.mark.parametrize("context", ["request", "list-reply"])
@pytest.mark.parametrize("argc", [0, MAX_ARGC + 1, 2**32 - 1])
def test_it_refuses_a_bad_argc_as_soon_as_it_arrives(context: str, argc: int) -> None:
    decoder, head = decoder_and_head(context)
    expect_error_on_last_byte(decoder, head + u32(argc))


@pytest.mark.parametrize("context", ["request", "list-reply"])
def test_it_waits_for_the_strings_of_the_largest_argc(context: str) -> None:
    decoder, head = decoder_and_head(context)
    decoder.feed(head + u32(MAX_ARGC))
    assert decoder.next_message() is NEED_DATA


@pytest.mark.parametrize("context", ["request", "list-reply"])
@pytest.mark.parametrize("length", [MAX_STRING + 1, 2**32 - 1])
def test_it_refuses_a_long_string_as_soon_as_its_length_arrives(context: str, length: int) -> None:
    decoder, head = decoder_and_head(context)
    expect_error_on_last_byte(decoder, head + u32(2) + h("00 00 00 01 61") + u32(length))


@pytest.mark.parametrize("length", [MAX_REPLY_STRING + 1, 2**32 - 1])
def test_it_refuses_a_long_output_as_soon_as_its_length_arrives(length: int) -> None:
    expect_error_on_last_byte(ReplyDecoder(b"SO"), h("4f 4b") + u32(length))


def test_it_waits_for_a_string_of_the_largest_length() -> None:
    decoder = RequestDecoder()
    decoder.feed(CREATE_HEAD + u32(1) + u32(MAX_STRING))
    assert decoder.next_message() is NEED_DATA
    decoder.feed(b"x" * MAX_STRING)
    assert decoder.next_message() == CreateRequest(WEDNESDAY_9_14, (b"x" * MAX_STRING,))


def create_of_total_size(total: int, strings: int) -> bytes:
    """A CREATE request of exactly `total` bytes whose strings share the room evenly."""
    room = total - len(CREATE_HEAD) - 4 - 4 * strings
    sizes = [room // strings] * strings
    sizes[-1] += room - sum(sizes)
    data = CREATE_HEAD + u32(strings) + b"".join(u32(n) + b"p" * n for n in sizes)
    assert len(data) == total
    return data


def test_it_accepts_a_request_of_exactly_max_request_bytes() -> None:
    decoder = RequestDecoder()
    decoder.feed(create_of_total_size(MAX_REQUEST, 4))
    message = decoder.next_message()
    assert isinstance(message, CreateRequest)
    assert sum(len(arg) for arg in message.argv) == MAX_REQUEST - len(CREATE_HEAD) - 4 - 16


def test_it_refuses_a_request_one_byte_over_max_request() -> None:
    data = create_of_total_size(MAX_REQUEST + 1, 4)
    decoder = RequestDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_it_refuses_five_strings_of_one_mib_before_they_all_arrive() -> None:
    one_mib = u32(1 << 20) + b"m" * (1 << 20)
    data = CREATE_HEAD + u32(5) + one_mib * 3 + u32(1 << 20)  # the 4th string's length
    decoder = RequestDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError):
        decoder.next_message()


@pytest.mark.parametrize(
    "data",
    [
        h(f"43 52 {WEDNESDAY_9_14_HEX}  00 00 00 01  00 00 00 00"),
        h(f"43 52 {WEDNESDAY_9_14_HEX}  00 00 00 02  00 00 00 00  00 00 00 01 61"),
    ],
)
def test_it_refuses_an_empty_program_name(data: bytes) -> None:
    decoder = RequestDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError):
        decoder.next_message()
    with pytest.raises(ProtocolError):
        decode_reply(b"LS", h("4f 4b 00 00 00 01  00 00 00 00 00 00 00 00") + data[2:])


BAD_TIMINGS = [
    "10 00 00 00 00 00 00 00  00 00 00 00  00",  # minute 60
    "80 00 00 00 00 00 00 00  00 00 00 00  00",  # minute 63
    "ff ff ff ff ff ff ff ff  00 00 00 00  00",
    "00 00 00 00 00 00 00 00  01 00 00 00  00",  # hour 24
    "00 00 00 00 00 00 00 00  80 00 00 00  00",  # hour 31
    "00 00 00 00 00 00 00 00  00 00 00 00  80",  # day 7
    "00 00 00 00 00 00 00 00  00 00 00 00  ff",
]


@pytest.mark.parametrize("timing_hex", BAD_TIMINGS)
def test_it_refuses_timing_bits_outside_the_fields_as_soon_as_they_arrive(timing_hex: str) -> None:
    expect_error_on_last_byte(RequestDecoder(), h(f"43 52 {timing_hex}"))
    list_head = h("4f 4b 00 00 00 01  00 00 00 00 00 00 00 00")
    expect_error_on_last_byte(ReplyDecoder(b"LS"), list_head + h(timing_hex))


@pytest.mark.parametrize("opcode", ["00 00", "ff ff", "6c 73", "4c 54", "4f 4b", "45 52"])
def test_it_refuses_an_unknown_opcode_after_two_bytes(opcode: str) -> None:
    expect_error_on_last_byte(RequestDecoder(), h(opcode))


@pytest.mark.parametrize("opcode", OPCODES)
@pytest.mark.parametrize("reptype", ["6f 6b", "00 00", "4e 46", "4c 53", "ff ff"])
def test_it_refuses_an_unknown_reply_type(opcode: bytes, reptype: str) -> None:
    expect_error_on_last_byte(ReplyDecoder(opcode), h(reptype))


@pytest.mark.parametrize(
    ("opcode", "code"),
    [
        (b"LS", "4e 46"),
        (b"CR", "4e 46"),
        (b"TM", "4e 46"),
        (b"LS", "4e 52"),
        (b"RM", "4e 52"),
        (b"TX", "4e 52"),
        (b"CR", "4e 52"),
        (b"SO", "4f 4b"),
        (b"SE", "00 00"),
        (b"RM", "6e 66"),
    ],
)
def test_it_refuses_an_error_code_that_request_cannot_get(opcode: bytes, code: str) -> None:
    expect_error_on_last_byte(ReplyDecoder(opcode), h(f"45 52 {code}"))


@pytest.mark.parametrize("stream", ["00", "03", "ff"])
def test_it_refuses_an_output_ex_stream_other_than_stdout_or_stderr(stream: str) -> None:
    expect_error_on_last_byte(
        RequestDecoder(), h(f"6f 78  00 00 00 00 00 00 00 03  {stream}  00 00 00 00 00 00 00 00")
    )


@pytest.mark.parametrize("cut", ["02", "ff"])
def test_it_refuses_an_output_ex_cut_flag_other_than_0_or_1(cut: str) -> None:
    expect_error_on_last_byte(ReplyDecoder(b"ox"), h(f"4f 4b {cut}"))


def test_it_refuses_unknown_policy_flags_in_extras() -> None:
    # NO_OVERLAP_HEX with PFLAGS 08, a bit no policy has.
    data = h(f"63 78  {NO_OVERLAP_HEX}")
    at = 2 + 24 + 9 + 8  # opcode, TIMING-EX, COMMANDLINE, TIMEOUT and JITTER
    assert data[at] == 0x01
    with pytest.raises(ProtocolError, match="unknown policy flags 0x8"):
        decode_request(data[:at] + b"\x08" + data[at + 1 :])


@pytest.mark.parametrize("opcode", [b"ru", b"pa", b"rs", b"ki", b"hx"])
def test_it_refuses_nr_where_only_output_ex_can_get_it(opcode: bytes) -> None:
    expect_error_on_last_byte(ReplyDecoder(opcode), h("45 52 4e 52"))


def test_it_refuses_a_reply_decoder_for_an_unknown_opcode() -> None:
    with pytest.raises(ValueError):
        ReplyDecoder(b"XX")


def test_it_refuses_trailing_bytes_in_a_whole_message() -> None:
    with pytest.raises(ProtocolError):
        decode_request(h("4c 53 4c"))
    with pytest.raises(ProtocolError):
        decode_reply(b"RM", h("4f 4b 00"))


class _ParserOnlyDecoder(RequestDecoder):
    """The request decoder without its shortcut for fixed-size requests: every request
    goes through the resumable parser."""

    def next_message(self) -> Request | protocol.NeedData:
        return decoding._Decoder.next_message(self)  # type: ignore[return-value]


def _steps(decoder: RequestDecoder, chunks: list[bytes]) -> list[object]:
    """Everything `decoder` says, chunk by chunk, up to its first ProtocolError."""
    said: list[object] = []
    for chunk in chunks:
        decoder.feed(chunk)
        while True:
            try:
                message = decoder.next_message()
            except ProtocolError as error:
                return [*said, ("error", str(error))]
            said.append((message, decoder.buffered, decoder.pending, decoder.in_message))
            if message is NEED_DATA:
                break
    return said


@QUICK
@given(st.lists(requests, max_size=5), noise, cut_lists)
def test_its_shortcut_for_fixed_size_requests_says_what_the_parser_says(
    batch: list[Request], tail: bytes, cuts: list[int]
) -> None:
    data = b"".join(encode(request_) for request_ in batch) + tail
    chunks = split(data, cuts)
    assert _steps(RequestDecoder(), chunks) == _steps(_ParserOnlyDecoder(), chunks)


def test_it_decodes_requests_sent_back_to_back_one_after_the_other() -> None:
    decoder = RequestDecoder()
    decoder.feed(
        h("4c 53  52 4d 00 00 00 00 00 00 00 07")
        + h(f"43 52 {WEDNESDAY_9_14_HEX} {ECHO_TEST_1_HEX}  54 4d  53")
    )
    assert decoder.next_message() == ListRequest()
    assert decoder.next_message() == RemoveRequest(7)
    assert decoder.next_message() == CreateRequest(WEDNESDAY_9_14, ECHO_TEST_1)
    assert decoder.next_message() == TerminateRequest()
    assert decoder.next_message() is NEED_DATA
    assert decoder.in_message
    decoder.feed(h("45 00 00 00 00 00 00 00 09"))
    assert decoder.next_message() == StderrRequest(9)
    assert decoder.next_message() is NEED_DATA
    assert not decoder.in_message


def test_it_discards_everything_on_reset() -> None:
    decoder = RequestDecoder()
    decoder.feed(h(f"43 52 {WEDNESDAY_9_14_HEX} 00 00 00 02 00 00"))
    assert decoder.next_message() is NEED_DATA
    assert decoder.in_message
    decoder.reset()
    assert not decoder.in_message
    assert decoder.buffered == 0
    decoder.feed(h("54 58 00 00 00 00 00 00 00 03"))
    assert decoder.next_message() == TimesExitcodesRequest(3)


def test_it_decodes_again_after_a_protocol_error_and_a_reset() -> None:
    decoder = RequestDecoder()
    decoder.feed(h("5a 5a 4c 53"))
    with pytest.raises(ProtocolError):
        decoder.next_message()
    decoder.reset()
    assert decoder.next_message() is NEED_DATA
    decoder.feed(h("54 4d"))
    assert decoder.next_message() == TerminateRequest()

    replies_ = ReplyDecoder(b"SO")
    replies_.feed(h("45 52 4e 4e 4f 4b"))
    with pytest.raises(ProtocolError):
        replies_.next_message()
    replies_.reset()
    replies_.feed(h("45 52 4e 52"))
    assert replies_.next_message() == ErrorReply(b"NR")


@pytest.mark.parametrize("opcode", [b"LS", b"TX"])
def test_it_allocates_nothing_for_an_announced_count(opcode: bytes) -> None:
    decoder = ReplyDecoder(opcode)
    tracemalloc.start()
    try:
        decoder.feed(h("4f 4b ff ff ff ff"))
        assert decoder.next_message() is NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# --- messages are values (Frozen classes, not dataclasses: see the module docstring) ---

EVERY_MESSAGE = [message for message, _ in REQUESTS] + [reply for _, reply, _ in REPLIES]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_it_treats_every_message_as_an_immutable_value(message: Request | Reply) -> None:
    clone = pickle.loads(pickle.dumps(message))
    assert clone is not message
    assert clone == message and hash(clone) == hash(message)
    assert copy.deepcopy(message) == message
    # The repr shows every field: it builds the message again from the public names.
    names = {**vars(protocol), "Timing": Timing, "Task": Task, "Extras": Extras}
    assert eval(repr(message), names) == message
    for name in type(message).__match_args__:
        with pytest.raises(AttributeError):
            setattr(message, name, None)
    with pytest.raises(AttributeError):
        message.extra = 1  # type: ignore[union-attr]


def test_it_tells_messages_of_different_kinds_apart() -> None:
    assert RemoveRequest(1) == RemoveRequest(1)
    assert RemoveRequest(1) != StdoutRequest(1)
    assert RemoveRequest(1) != RemoveRequest(2)
    assert ListRequest() != TerminateRequest()
    assert OkReply() != ListRequest()
    assert CreateReply(3) != 3
    assert len({ErrorReply(b"NF"), ErrorReply(b"NF"), ErrorReply(b"NR")}) == 2
    match TaskEntry(5, WEDNESDAY_9_14, ECHO_TEST_1):
        case TaskEntry(task_id, Timing(minutes, hours, days), argv):
            assert (task_id, minutes, hours, days, argv) == (5, 1, 0x4200, 0x08, ECHO_TEST_1)
        case _:
            pytest.fail("a TaskEntry did not match its positional pattern")
