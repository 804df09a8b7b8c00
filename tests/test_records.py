"""Tests of saturnd.records and saturnd.runsfile: the byte layouts of `cmds` and
`times-exitcodes` (pure)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saturnd.cmdsupgrade import encode_body_v1, encode_body_v2, upgrade, upgrade_v1
from saturnd.protocol import (
    MAX_ARGC,
    MAX_ENV,
    MAX_ERROR_MESSAGE,
    MAX_STRING,
    MAX_ZONE,
    Run,
    encode_runs,
)
from saturnd.records import (
    HEADER_SIZE,
    MAGIC,
    RECORD_HEAD_SIZE,
    RUN_SIZE,
    TOMBSTONE,
    VERSION,
    RecordsError,
    Slot,
    choose_slot,
    command_span,
    decode_body,
    decode_header,
    decode_runs,
    encode_header,
    encode_record,
    encode_run,
    header_version,
    runs_body,
    scan_cmds,
)
from saturnd.records import encode_body as encode_task_body
from saturnd.runsfile import RunsError
from saturnd.task import NO_EXTRAS, Extras, Task
from saturnd.timing import (
    FULL_DAYSOFMONTH,
    FULL_DAYSOFWEEK,
    FULL_HOURS,
    FULL_MINUTES,
    FULL_MONTHS,
    Timing,
)
from saturnd.wiretypes import PFLAGS_OFFSET

ECHO = (b"echo", b"test-1")
WEDNESDAY_9_14 = Timing(minutes=1, hours=(1 << 9) | (1 << 14), daysofweek=1 << 3)
# The task of PROTOCOL.md's worked example as a VERSION 2 BODY: TIMING-EX (TIMING, every
# day of the month, every month, no flag, no zone), COMMANDLINE, then no extras: no
# POLICY (TIMEOUT 0, JITTER 0, PFLAGS 0, an empty ON_FAILURE), NBENV 0, an empty
# STDIN, MAILTO not set.
ECHO_BODY = bytes.fromhex(
    "0000000000000001 00004200 08  fffffffe 1ffe 00 00000000"
    "00000002 00000004 6563686f 00000006 746573742d31"
    "00000000 00000000 00 00000000  00000000 00000000 00"
)
ECHO_TASK = Task(WEDNESDAY_9_14, ECHO)
ECHO_COMMAND = (24, 24 + 22)  # where the COMMANDLINE lies in ECHO_BODY


def encode_body(timing: Timing, argv: tuple[bytes, ...], extras: Extras = NO_EXTRAS) -> bytes:
    return encode_task_body(Task(timing, argv, extras))


def cmds(next_id: int, *records: bytes, version: int = VERSION) -> bytes:
    return encode_header(next_id, version) + b"".join(records)


def live(task_id: int, argv: tuple[bytes, ...] = ECHO, pad: int = 0) -> bytes:
    body = encode_body(Timing(), argv)
    return encode_record(task_id, body, len(body) + pad)


EVERY_MINUTE = Timing()


def live_v1(task_id: int, argv: tuple[bytes, ...] = ECHO, timing: Timing = EVERY_MINUTE) -> bytes:
    body = encode_body_v1(timing, argv)
    return encode_record(task_id, body, len(body))


# --- header ---------------------------------------------------------------------


@pytest.mark.parametrize("next_id", [0, 1, 26, 2**32, 2**64 - 2])
def test_it_round_trips_the_header(next_id: int) -> None:
    data = encode_header(next_id)
    assert len(data) == HEADER_SIZE == 16
    assert data[:4] == MAGIC == b"SATD"
    assert data[4:8] == struct.pack(">I", VERSION) == b"\x00\x00\x00\x03"
    assert data[8:] == struct.pack(">Q", next_id)
    assert decode_header(data) == next_id


def test_it_refuses_a_bad_magic() -> None:
    data = b"SATX" + encode_header(3)[4:]
    with pytest.raises(RecordsError, match="not a saturnd cmds file"):
        decode_header(data)
    with pytest.raises(RecordsError, match="not a saturnd cmds file"):
        scan_cmds(data + live(0))


@pytest.mark.parametrize("version", [0, 4, 0xFFFF_FFFF])
def test_it_refuses_an_unknown_version(version: int) -> None:
    data = MAGIC + struct.pack(">IQ", version, 3)
    with pytest.raises(RecordsError, match=f"^unsupported cmds version {version}$"):
        decode_header(data)
    with pytest.raises(RecordsError, match=f"^unsupported cmds version {version}$"):
        scan_cmds(data + live(0))


def test_it_refuses_a_short_header_in_decode_header() -> None:
    with pytest.raises(RecordsError):
        decode_header(encode_header(1)[:15])


# --- bodies ---------------------------------------------------------------------


def test_it_encodes_a_body_exactly_as_on_the_wire() -> None:
    assert encode_body(WEDNESDAY_9_14, ECHO) == ECHO_BODY
    assert decode_body(ECHO_BODY) == ECHO_TASK
    assert command_span(ECHO_BODY) == ECHO_COMMAND


@pytest.mark.parametrize("pad", [1, 7, 1000])
def test_it_ignores_zero_padding_after_a_body(pad: int) -> None:
    assert decode_body(ECHO_BODY + bytes(pad)) == ECHO_TASK


def test_it_decodes_a_version_1_body_as_a_task_without_extras() -> None:
    v1 = ECHO_BODY[:13] + ECHO_BODY[ECHO_COMMAND[0] : ECHO_COMMAND[1]]
    assert encode_body_v1(WEDNESDAY_9_14, ECHO) == v1
    assert decode_body(v1 + bytes(3), version=1) == ECHO_TASK
    with pytest.raises(RecordsError):
        decode_body(v1)  # not a VERSION 2 body


EXTRAS = Extras(((b"PATH", b"/bin"), (b"EMPTY", b"")), b"line 1\nline 2\n", b"me@example.org")
WHOLE_TIMING = Timing.cron("30 4 1,15 */2 5", zone="Europe/Paris")


@pytest.mark.parametrize(
    "task",
    [
        Task(WHOLE_TIMING, ECHO, EXTRAS),
        Task(Timing(reboot=True), (b"x",), Extras(mailto=b"")),
        Task(Timing(), (b"x",), Extras(stdin=b"\0in")),
        Task(Timing(zone="x" * MAX_ZONE), (b"x",), Extras(mailto=b"m" * MAX_ERROR_MESSAGE)),
    ],
)
def test_it_keeps_a_whole_task_in_a_body(task: Task) -> None:
    body = encode_task_body(task)
    assert decode_body(body + bytes(5)) == task
    command, end = command_span(body)
    assert body[command:end] == ECHO_BODY[ECHO_COMMAND[0] : ECHO_COMMAND[1]] or task.argv != ECHO
    assert body[end:] != bytes(22) or task.extras.is_empty


# A task with every policy, derived by hand from the layout: ECHO_BODY's TIMING-EX and
# COMMANDLINE, then POLICY (TIMEOUT 90 s, JITTER 300 s, PFLAGS no-overlap 1 | catch-up
# 2 | paused 4, ON_FAILURE "notify"), NBENV 1 ("A", "B"), STDIN "in", MAILTO "me".
POLICY_TASK = Task(
    WEDNESDAY_9_14,
    ECHO,
    Extras(((b"A", b"B"),), b"in", b"me", 90, 300, True, True, b"notify", True),
)
POLICY_BODY = ECHO_BODY[: ECHO_COMMAND[1]] + bytes.fromhex(
    "0000005a 0000012c 07 00000006 6e6f74696679"
    "00000001 00000001 41 00000001 42"
    "00000002 696e  01 00000002 6d65"
)


def test_it_keeps_every_policy_in_a_body_where_pause_finds_it() -> None:
    assert encode_task_body(POLICY_TASK) == POLICY_BODY
    assert decode_body(POLICY_BODY + bytes(4)) == POLICY_TASK
    command, end = command_span(POLICY_BODY)
    assert (command, end) == ECHO_COMMAND
    # PAUSE and RESUME rewrite this one byte: PFLAGS_OFFSET past the COMMANDLINE.
    assert POLICY_BODY[end + PFLAGS_OFFSET] == 0x07
    resumed = bytearray(POLICY_BODY)
    resumed[end + PFLAGS_OFFSET] = 0x03
    assert decode_body(bytes(resumed)) == Task(
        WEDNESDAY_9_14, ECHO, POLICY_TASK.extras.replace(paused=False)
    )
    paused_only = bytearray(ECHO_BODY)
    paused_only[end + PFLAGS_OFFSET] = 0x04
    assert decode_body(bytes(paused_only)) == Task(WEDNESDAY_9_14, ECHO, Extras(paused=True))


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


TIMING_BYTES = ECHO_BODY[:13]
TEX = ECHO_BODY[:24]  # the TIMING-EX of ECHO_BODY
COMMAND = ECHO_BODY[ECHO_COMMAND[0] : ECHO_COMMAND[1]]
NONE = bytes(22)  # no extras
NO_POLICY = bytes(13)  # TIMEOUT 0, JITTER 0, PFLAGS 0, ON_FAILURE empty
X = u32(1) + u32(1) + b"x"  # the command line "x"


def tex(days: int = 1, dom: int = FULL_DAYSOFMONTH, months: int = FULL_MONTHS, flags: int = 0,
        zone: bytes = b"") -> bytes:  # fmt: skip
    return struct.pack(">QIBIHB", 1, 1, days, dom, months, flags) + u32(len(zone)) + zone


BAD_BODIES = {
    "empty": b"",
    "short timing": TIMING_BYTES[:12],
    "no argc": TEX,
    "minute 60": struct.pack(">QIB", 1 << 60, 1, 1) + TEX[13:] + X + NONE,
    "hour 24": struct.pack(">QIB", 1, 1 << 24, 1) + TEX[13:] + X + NONE,
    "day bit 7": tex(days=0x80) + X + NONE,
    "day of month 0": tex(dom=1) + X + NONE,
    "month 0": tex(months=1) + X + NONE,
    "month 13": tex(months=1 << 13) + X + NONE,
    "unknown flag": tex(flags=4) + X + NONE,
    "zone too long": tex(zone=b"z" * (MAX_ZONE + 1)) + X + NONE,
    "zone not ASCII": tex(zone="é".encode()) + X + NONE,
    "zone past the end": TEX[:20] + u32(3) + b"UT",
    "argc 0": TEX + u32(0) + NONE,
    "argc too large": TEX + u32(MAX_ARGC + 1) + u32(1) + b"x" + NONE,
    "missing argument": TEX + u32(2) + u32(1) + b"x" + NONE,
    "truncated length": TEX + u32(1) + b"\x00\x00",
    "truncated argument": TEX + u32(1) + u32(4) + b"ech",
    "string too long": TEX + u32(1) + u32(MAX_STRING + 1) + b"x",
    "empty argv0": TEX + u32(1) + u32(0) + NONE,
    "no extras": TEX + COMMAND,
    "truncated extras": TEX + COMMAND + bytes(21),
    "policy cut": TEX + COMMAND + bytes(8),
    "unknown policy flag": TEX + COMMAND + bytes(8) + b"\x08" + bytes(13),
    "on-failure too long": TEX + COMMAND + bytes(9) + u32(MAX_STRING + 1) + b"x",
    "on-failure past the end": TEX + COMMAND + bytes(9) + u32(5) + b"true",
    "NUL in on-failure": TEX + COMMAND + bytes(9) + u32(1) + b"\0" + bytes(9),
    "too many variables": TEX + COMMAND + NO_POLICY + u32(MAX_ENV + 1) + bytes(9),
    "variable past the end": TEX + COMMAND + NO_POLICY + u32(1) + u32(1) + b"A",
    "empty variable name": TEX + COMMAND + NO_POLICY + u32(1) + u32(0) + u32(0) + bytes(5),
    "= in a name": TEX + COMMAND + NO_POLICY + u32(1) + u32(3) + b"A=B" + u32(0) + bytes(5),
    "NUL in a value": TEX
    + COMMAND
    + NO_POLICY
    + u32(1)
    + u32(1)
    + b"A"
    + u32(1)
    + b"\0"
    + bytes(5),
    "stdin too long": TEX + COMMAND + NO_POLICY + u32(0) + u32(MAX_STRING + 1) + b"x",
    "MAILTO flag 2": TEX + COMMAND + NO_POLICY + bytes(8) + b"\x02" + u32(0),
    "MAILTO too long": TEX + COMMAND + NO_POLICY + bytes(8) + b"\x01" + u32(MAX_ERROR_MESSAGE + 1),
    "NUL in MAILTO": TEX + COMMAND + NO_POLICY + bytes(8) + b"\x01" + u32(1) + b"\0",
    "garbage after": ECHO_BODY + b"\x00\x01",
    "garbage after padding": ECHO_BODY + bytes(5) + b"\xff",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_it_refuses_a_body_that_does_not_decode(body: bytes) -> None:
    with pytest.raises(RecordsError):
        decode_body(body)


@pytest.mark.parametrize(
    ("timing", "argv"),
    [
        (Timing(minutes=1 << 60), ECHO),
        (Timing(), ()),
        (Timing(), (b"",)),
        (Timing(), (b"", *ECHO)),
        (Timing(), (b"x" * (MAX_STRING + 1),)),
        (Timing(zone="é"), ECHO),
        (Timing(zone="z" * (MAX_ZONE + 1)), ECHO),
        (Timing(daysofmonth=1), ECHO),
    ],
)
def test_it_refuses_to_encode_a_body_that_would_not_decode(
    timing: Timing, argv: tuple[bytes, ...]
) -> None:
    with pytest.raises(ValueError):
        encode_body(timing, argv)


@pytest.mark.parametrize(
    "extras",
    [
        Extras(((b"A=B", b""),)),
        Extras(((b"", b"x"),)),
        Extras(((b"A", b"\0"),)),
        Extras(mailto=b"\0"),
        Extras(mailto=b"m" * (MAX_ERROR_MESSAGE + 1)),
        Extras(((b"A", b""),) * (MAX_ENV + 1)),
        Extras(on_failure=b"mail \0 me"),
        Extras(on_failure=b"x" * (MAX_STRING + 1)),
        Extras(timeout=2**32),
        Extras(jitter=-1),
    ],
)
def test_it_refuses_to_encode_extras_that_would_not_decode(extras: Extras) -> None:
    with pytest.raises(ValueError):
        encode_body(Timing(), ECHO, extras)


# --- records and slots ----------------------------------------------------------


def test_it_lays_out_a_record_with_its_padding() -> None:
    record = encode_record(26, ECHO_BODY, len(ECHO_BODY) + 5)
    assert record[:8] == struct.pack(">Q", 26)
    assert record[8:12] == u32(len(ECHO_BODY) + 5)
    assert record[12:] == ECHO_BODY + bytes(5)
    assert len(record) == RECORD_HEAD_SIZE + len(ECHO_BODY) + 5


def test_it_refuses_a_record_smaller_than_its_body() -> None:
    with pytest.raises(ValueError):
        encode_record(1, ECHO_BODY, len(ECHO_BODY) - 1)


def test_it_chooses_the_first_free_slot_big_enough() -> None:
    free = [(16, 10), (100, 40), (200, 30), (300, 50)]
    assert choose_slot(free, 30) == 1
    assert choose_slot(free, 40) == 1
    assert choose_slot(free, 41) == 3
    assert choose_slot(free, 10) == 0
    assert choose_slot(free, 51) is None
    assert choose_slot([], 1) is None


def test_it_scans_an_empty_file_as_a_fresh_store() -> None:
    scan = scan_cmds(b"")
    assert (scan.next_id, scan.slots, scan.valid_length, scan.problems) == (0, [], 0, [])


@pytest.mark.parametrize("length", range(1, HEADER_SIZE))
def test_it_scans_a_torn_header_as_a_fresh_store(length: int) -> None:
    scan = scan_cmds(encode_header(5)[:length])
    assert (scan.next_id, scan.slots, scan.valid_length) == (0, [], 0)
    assert scan.problems == [f"dropped a torn header of {length} bytes"]


def test_it_scans_records_and_tombstones_with_their_sizes() -> None:
    body = encode_body(WEDNESDAY_9_14, ECHO)
    first = encode_record(0, body, len(body))
    hole = encode_record(TOMBSTONE, body, len(body) + 3)
    third = encode_record(2, encode_body(Timing(), (b"ls",), EXTRAS), 140)
    scan = scan_cmds(cmds(3, first, hole, third))
    at_hole = HEADER_SIZE + len(first)
    at_third = at_hole + len(hole)
    assert scan.version == VERSION
    assert scan.slots == [
        Slot(HEADER_SIZE, len(body), 0, WEDNESDAY_9_14, ECHO, extras=NO_EXTRAS),
        Slot(at_hole, len(body) + 3, None),
        Slot(at_third, 140, 2, Timing(), (b"ls",), extras=EXTRAS),
    ]
    assert scan.slots[2].end == at_third + RECORD_HEAD_SIZE + 140
    assert scan.next_id == 3
    assert scan.valid_length == at_third + len(third)
    assert scan.problems == []


def test_it_scans_a_zero_sized_tombstone() -> None:
    scan = scan_cmds(cmds(1, encode_record(TOMBSTONE, b"", 0), live(0)))
    assert scan.slots[0] == Slot(HEADER_SIZE, 0, None)
    assert scan.slots[1].task_id == 0
    assert scan.problems == []


def test_it_drops_a_torn_tail_at_every_byte_of_the_last_record() -> None:
    last = live(7, (b"sh", b"-c", b"echo hello"), pad=3)
    whole = cmds(8, live(0), encode_record(TOMBSTONE, ECHO_BODY, 80), last)
    start = len(whole) - len(last)
    expected = scan_cmds(whole).slots[:2]
    for cut in range(start + 1, len(whole)):
        scan = scan_cmds(whole[:cut])
        assert scan.slots == expected, cut
        assert scan.valid_length == start, cut
        assert scan.next_id == 8, cut
        message = f"dropped a torn tail of {cut - start} bytes at offset {start}"
        assert scan.problems == [message], cut
    assert scan_cmds(whole[:start]).problems == []
    assert scan_cmds(whole).slots[2].task_id == 7


def test_it_drops_a_tail_whose_size_runs_past_the_end() -> None:
    head = struct.pack(">QI", 1, 1 << 30)
    scan = scan_cmds(cmds(2, live(0), head + ECHO_BODY))
    assert [slot.task_id for slot in scan.slots] == [0]
    assert scan.problems == [
        f"dropped a torn tail of {len(head) + len(ECHO_BODY)} bytes at offset {scan.valid_length}"
    ]


def test_it_frees_a_live_record_whose_body_does_not_decode() -> None:
    bad = struct.pack(">QI", 1, 30) + bytes(30)
    scan = scan_cmds(cmds(3, live(0), bad, live(2)))
    offset = HEADER_SIZE + len(live(0))
    assert [slot.task_id for slot in scan.slots] == [0, None, 2]
    assert scan.slots[1] == Slot(offset, 30, None)
    assert scan.valid_length == HEADER_SIZE + len(live(0)) + len(bad) + len(live(2))
    assert len(scan.problems) == 1
    assert scan.problems[0].startswith(f"freed the record of task id 1 at offset {offset}")
    assert scan.next_id == 3


def test_it_keeps_the_first_of_two_records_with_one_id() -> None:
    scan = scan_cmds(cmds(2, live(1, (b"first",)), live(1, (b"second",))))
    assert [(slot.task_id, slot.argv) for slot in scan.slots] == [
        (1, (b"first",)),
        (None, None),
    ]
    assert len(scan.problems) == 1
    assert "duplicate" in scan.problems[0]


def test_it_never_gives_a_next_id_at_or_below_a_live_id() -> None:
    scan = scan_cmds(cmds(2, live(0), live(9)))
    assert scan.next_id == 10
    assert scan.problems == ["header NEXT_ID 2 is not above the highest task id 9"]


def test_it_keeps_a_next_id_above_every_record() -> None:
    # Removing the highest id leaves the header as it was: ids never go back.
    scan = scan_cmds(cmds(12, live(0), encode_record(TOMBSTONE, ECHO_BODY, len(ECHO_BODY))))
    assert scan.next_id == 12
    assert scan.problems == []


# --- times-exitcodes ------------------------------------------------------------


RUNS = (Run(1_790_000_000, 0), Run(1_790_000_060, 0xFFFF), Run(-5, 127))


def test_it_encodes_a_run_as_int64_and_uint16() -> None:
    assert encode_run(-1, 0xFFFF) == b"\xff" * 8 + b"\xff\xff"
    assert encode_run(1, 2) == bytes(7) + b"\x01\x00\x02"
    assert len(encode_run(0, 0)) == RUN_SIZE == 10


def test_it_gives_the_whole_file_as_the_runs_body() -> None:
    data = encode_runs(RUNS)
    assert data == b"\x00\x00\x00\x03" + b"".join(encode_run(r.time, r.exitcode) for r in RUNS)
    assert runs_body(data) == data
    assert decode_runs(runs_body(data)) == RUNS


def test_it_clamps_the_runs_body_at_every_truncation() -> None:
    data = encode_runs(RUNS)
    for cut in range(len(data) + 1):
        body = runs_body(data[:cut])
        complete = 0 if cut < 4 else min(3, (cut - 4) // RUN_SIZE)
        assert body == struct.pack(">I", complete) + data[4 : 4 + complete * RUN_SIZE], cut
        assert decode_runs(body) == RUNS[:complete], cut


def test_it_ignores_a_run_written_before_its_count() -> None:
    # An append interrupted between the run and NBRUNS: the old count holds.
    data = encode_runs(RUNS[:1]) + encode_run(99, 1)
    assert decode_runs(runs_body(data)) == RUNS[:1]


def test_it_gives_zero_runs_for_an_empty_file() -> None:
    assert runs_body(b"") == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x01", bytes(15)])
def test_it_refuses_a_runs_body_of_the_wrong_length(body: bytes) -> None:
    with pytest.raises(RunsError):
        decode_runs(body)


# --- properties -----------------------------------------------------------------

timings = st.builds(
    Timing,
    st.integers(0, FULL_MINUTES),
    st.integers(0, FULL_HOURS),
    st.integers(0, FULL_DAYSOFWEEK),
    st.integers(0, FULL_DAYSOFMONTH).map(lambda bits: bits & ~1),
    st.integers(0, FULL_MONTHS).map(lambda bits: bits & ~1),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["", "UTC", "Europe/Paris", "America/Argentina/Buenos_Aires"]),
)
names = st.binary(min_size=1, max_size=8).filter(lambda name: b"=" not in name)
no_nul = st.binary(max_size=10).map(lambda value: value.replace(b"\0", b""))
extras_ = st.builds(
    Extras,
    st.lists(st.tuples(names.map(lambda n: n.replace(b"\0", b"") or b"N"), no_nul), max_size=3),
    st.binary(max_size=20),
    st.one_of(st.none(), no_nul),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.booleans(),
    no_nul,
    st.booleans(),
)
argvs = st.tuples(st.binary(min_size=1, max_size=20)).flatmap(
    lambda head: st.lists(st.binary(max_size=20), max_size=4).map(lambda rest: head + tuple(rest))
)
# A record: a live task (timing, argv, padding) or a tombstone of some SIZE.
records = st.one_of(
    st.tuples(timings, argvs, st.integers(0, 16)),
    st.integers(0, 80),
)


@given(timings, argvs, extras_, st.integers(0, 64))
def test_it_decodes_every_body_it_encodes(
    timing: Timing, argv: tuple[bytes, ...], extras: Extras, pad: int
) -> None:
    body = encode_body(timing, argv, extras)
    assert decode_body(body + bytes(pad)) == Task(timing, argv, extras)
    command, end = command_span(body)
    assert body[:command].startswith(body[:13]) and body[command:end].startswith(u32(len(argv)))


@given(st.lists(records, max_size=12), st.integers(0, 5))
def test_it_scans_back_any_list_of_records(
    specs: list[tuple[Timing, tuple[bytes, ...], int] | int], spare: int
) -> None:
    data = bytearray()
    expected: list[Slot] = []
    offset = HEADER_SIZE
    task_id = 0
    for spec in specs:
        if isinstance(spec, int):
            record = encode_record(TOMBSTONE, bytes(spec), spec)
            expected.append(Slot(offset, spec, None))
        else:
            timing, argv, pad = spec
            body = encode_body(timing, argv)
            record = encode_record(task_id, body, len(body) + pad)
            expected.append(Slot(offset, len(body) + pad, task_id, timing, argv, extras=NO_EXTRAS))
            task_id += 1
        data += record
        offset += len(record)
    scan = scan_cmds(encode_header(task_id + spare) + bytes(data))
    assert scan.slots == expected
    assert scan.next_id == task_id + spare
    assert scan.valid_length == offset
    assert scan.problems == []


@given(st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(0, 0xFFFF))))
def test_it_decodes_every_runs_body(pairs: list[tuple[int, int]]) -> None:
    runs = tuple(Run(time, code) for time, code in pairs)
    body = encode_runs(runs)
    assert runs_body(body) == body
    assert decode_runs(body) == runs


# --- the lean scan --------------------------------------------------------------


def test_a_slot_has_no_instance_dictionary() -> None:
    slot = Slot(HEADER_SIZE, 10, None)
    assert not hasattr(slot, "__dict__")
    assert slot.used == 0


def test_it_scans_lean_with_used_lengths_and_shared_timings() -> None:
    ls_body = encode_body(Timing(), (b"ls",))
    data = cmds(
        3,
        encode_record(0, ECHO_BODY, len(ECHO_BODY) + 4),
        encode_record(TOMBSTONE, ls_body, len(ls_body)),
        encode_record(1, ls_body, 60),
        encode_record(2, x_body := encode_body(WEDNESDAY_9_14, (b"x",), EXTRAS), 130),
    )
    full = scan_cmds(data)
    lean = scan_cmds(data, lean=True)
    assert [(s.offset, s.size, s.task_id, s.timing) for s in lean.slots] == [
        (s.offset, s.size, s.task_id, s.timing) for s in full.slots
    ]
    assert [s.argv for s in lean.slots] == [None] * 4
    assert [s.used for s in lean.slots] == [len(ECHO_BODY), 0, len(ls_body), len(x_body)]
    # Where the COMMANDLINE lies in each body: what the course's LIST entry is made of.
    spans = [command_span(body) for body in (ECHO_BODY, ls_body, x_body)]
    assert spans[0] == ECHO_COMMAND
    assert [(s.command, s.command_end) for s in lean.slots] == [spans[0], (0, 0), *spans[1:]]
    assert [s.extras for s in lean.slots] == [None] * 4
    # Tasks 0 and 2 have equal timings, met at different offsets: one object.
    assert lean.slots[0].timing is lean.slots[3].timing
    assert lean.timings == {
        ECHO_BODY[:24]: WEDNESDAY_9_14,
        ls_body[:24]: Timing(),
    }
    assert (lean.next_id, lean.valid_length, lean.problems) == (3, len(data), [])


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_the_lean_scan_frees_a_bad_body_with_the_same_problem(body: bytes) -> None:
    data = cmds(3, live(0), encode_record(1, body, len(body)), live(2))
    full, lean = scan_cmds(data), scan_cmds(data, lean=True)
    assert [s.task_id for s in lean.slots] == [s.task_id for s in full.slots] == [0, None, 2]
    assert len(lean.problems) == 1
    assert lean.problems == full.problems
    with pytest.raises(RecordsError) as caught:
        decode_body(body)
    assert f"({caught.value})" in lean.problems[0]


def test_it_hands_each_slot_to_a_sink_in_file_order() -> None:
    data = cmds(3, live(2), encode_record(TOMBSTONE, ECHO_BODY, 80), live(0), live(2))
    handed: list[Slot] = []
    scan = scan_cmds(data, lean=True, sink=handed.append)
    assert scan.slots == []
    assert handed == scan_cmds(data, lean=True).slots
    assert [slot.task_id for slot in handed] == [2, None, 0, None]
    assert len(scan.problems) == 1 and "duplicate" in scan.problems[0]


def test_it_decodes_a_body_from_any_bytes_like_object() -> None:
    for body in (bytearray(ECHO_BODY), memoryview(ECHO_BODY + bytes(3))):
        assert decode_body(body) == ECHO_TASK  # type: ignore[arg-type]
    assert scan_cmds(bytearray(cmds(1, live(0)))).slots[0].argv == ECHO


def test_a_lean_scan_reads_a_bytearray_in_place() -> None:
    data = bytearray(cmds(2, live(0), live(1, (b"ls",), pad=3)))
    scan = scan_cmds(data, lean=True)
    assert [slot.task_id for slot in scan.slots] == [0, 1]
    assert all(type(key) is bytes for key in scan.timings)  # hashable, whatever the input
    full = scan_cmds(data)
    assert [slot.argv for slot in full.slots] == [ECHO, (b"ls",)]
    assert all(type(arg) is bytes for slot in full.slots for arg in slot.argv or ())


def test_it_frees_every_later_record_of_an_id_met_in_or_out_of_order() -> None:
    # 5, 2, 7 then 2 again (met out of order), 5 (in order), 3 (new), 9, 7, 3.
    ids = [5, 2, 7, 2, 5, 3, 9, 7, 3]
    scan = scan_cmds(cmds(10, *(live(task_id) for task_id in ids)), lean=True)
    assert [slot.task_id for slot in scan.slots] == [5, 2, 7, None, None, 3, 9, None, None]
    assert [problem.split(" at ")[0] for problem in scan.problems] == [
        f"freed a duplicate record of task id {task_id}" for task_id in (2, 5, 7, 3)
    ]
    assert scan.next_id == 10


# A record of a random file: a task, a tombstone, or a live id over a body that is
# likely not to decode (one known to be bad, random bytes, or a good one damaged).
damaged_bodies = st.one_of(
    st.sampled_from(list(BAD_BODIES.values())),
    st.binary(max_size=40),
    st.tuples(timings, argvs, extras_, st.integers(0, 90), st.integers(0, 255)).map(
        lambda t: _damage(encode_body(t[0], t[1], t[2]), t[3], t[4])
    ),
)
file_records = st.one_of(
    st.tuples(st.integers(0, 6), timings, argvs, extras_, st.integers(0, 8)).map(
        lambda t: _record(t[0], encode_body(t[1], t[2], t[3]), t[4])
    ),
    st.integers(0, 40).map(lambda size: encode_record(TOMBSTONE, bytes(size), size)),
    st.tuples(st.integers(0, 6), damaged_bodies).map(
        lambda t: encode_record(t[0], t[1], len(t[1]))
    ),
)


def _record(task_id: int, body: bytes, pad: int) -> bytes:
    return encode_record(task_id, body, len(body) + pad)


def _damage(body: bytes, at: int, value: int) -> bytes:
    """`body` with one byte overwritten (or one appended, past its end)."""
    if at >= len(body):
        return body + bytes([value])
    return body[:at] + bytes([value]) + body[at + 1 :]


@given(st.data(), st.lists(file_records, max_size=10), st.integers(0, 9))
def test_the_lean_scan_agrees_with_the_full_scan(
    data: st.DataObject, records_: list[bytes], next_id: int
) -> None:
    whole = cmds(next_id, *records_)
    cut = data.draw(st.integers(HEADER_SIZE, len(whole)), label="cut")
    damaged = whole[:cut]
    if data.draw(st.booleans(), label="flip") and cut > 0:
        at = data.draw(st.integers(0, cut - 1), label="at")
        damaged = _damage(damaged, at, data.draw(st.integers(0, 255), label="value"))
    try:
        full = scan_cmds(damaged)
    except RecordsError as error:  # a flipped header byte
        with pytest.raises(RecordsError) as caught:
            scan_cmds(damaged, lean=True)
        assert str(caught.value) == str(error)
        return
    lean = scan_cmds(damaged, lean=True)
    in_place = scan_cmds(bytearray(damaged), lean=True)  # the writer's copy of the file
    assert (in_place.slots, in_place.problems, in_place.timings) == (
        lean.slots,
        lean.problems,
        lean.timings,
    )
    assert (in_place.next_id, in_place.valid_length) == (lean.next_id, lean.valid_length)
    assert [(s.offset, s.size, s.task_id, s.timing) for s in lean.slots] == [
        (s.offset, s.size, s.task_id, s.timing) for s in full.slots
    ]
    for lean_slot, full_slot in zip(lean.slots, full.slots, strict=True):
        if full_slot.task_id is None:
            assert (lean_slot.used, lean_slot.timing, lean_slot.argv) == (0, None, None)
        else:
            assert full_slot.timing is not None and full_slot.argv is not None
            assert full_slot.extras is not None
            task = Task(full_slot.timing, full_slot.argv, full_slot.extras)
            body = encode_task_body(task)
            assert lean_slot.used == len(body)
            assert (lean_slot.command, lean_slot.command_end) == command_span(body)
            start = lean_slot.offset + RECORD_HEAD_SIZE
            assert decode_body(damaged[start : start + lean_slot.used]) == task
    assert lean.problems == full.problems
    assert (lean.next_id, lean.valid_length) == (full.next_id, full.valid_length)


# --- version 1 and the upgrade --------------------------------------------------


def test_it_reads_the_version_of_a_header() -> None:
    assert header_version(encode_header(3, version=1)) == 1
    assert header_version(encode_header(3, version=2)) == 2
    assert header_version(encode_header(3)) == VERSION == 3
    assert header_version(b"SAT") == VERSION  # a torn-at-birth file is a fresh one
    assert decode_header(encode_header(7, version=1)) == 7


def v1_file() -> bytes:
    """A VERSION 1 file with a reused slot (ids out of order), a tombstone, a record
    that does not decode, a duplicate id and a torn tail."""
    return (
        cmds(
            9,
            live_v1(4, ECHO, WEDNESDAY_9_14),
            live_v1(1, (b"ls", b"-l")),
            encode_record(TOMBSTONE, bytes(30), 30),
            encode_record(5, bytes(20), 20),
            live_v1(6, (b"x",), Timing(minutes=3)),
            live_v1(4, (b"again",)),
            version=1,
        )
        + b"\x00\x00\x00"
    )


def test_it_scans_a_version_1_file() -> None:
    data = v1_file()
    scan = scan_cmds(data)
    assert scan.version == 1
    assert [(s.task_id, s.argv) for s in scan.slots] == [
        (4, ECHO),
        (1, (b"ls", b"-l")),
        (None, None),
        (None, None),
        (6, (b"x",)),
        (None, None),
    ]
    assert scan.slots[0].timing == WEDNESDAY_9_14
    assert scan.slots[0].extras == NO_EXTRAS
    assert len(scan.problems) == 3  # the bad body, the duplicate, the torn tail


def test_it_upgrades_a_version_1_file_to_exactly_its_tasks() -> None:
    old = v1_file()
    upgraded, old_scan = upgrade_v1(bytearray(old))
    assert old_scan.problems == scan_cmds(old).problems
    scan = scan_cmds(bytes(upgraded))
    assert (scan.version, scan.next_id, scan.problems) == (VERSION, 9, [])
    assert scan.valid_length == len(upgraded)
    assert [(s.task_id, s.timing, s.argv, s.extras) for s in scan.slots] == [
        (1, Timing(), (b"ls", b"-l"), NO_EXTRAS),
        (4, WEDNESDAY_9_14, ECHO, NO_EXTRAS),
        (6, Timing(minutes=3), (b"x",), NO_EXTRAS),
    ]
    # No free slot, no padding: each record is exactly what encode_body gives.
    assert bytes(upgraded) == cmds(
        9,
        *(
            encode_record(s.task_id or 0, body := encode_body(s.timing, s.argv or ()), len(body))
            for s in scan.slots
            if s.timing is not None
        ),
    )


def test_it_upgrades_an_empty_version_1_file() -> None:
    upgraded, _ = upgrade_v1(encode_header(0, version=1))
    assert bytes(upgraded) == encode_header(0)


@pytest.mark.parametrize("data", [encode_header(3), b"", b"SATD"])
def test_it_upgrades_only_a_version_1_file(data: bytes) -> None:
    with pytest.raises(RecordsError, match="not a version 1 cmds file"):
        upgrade_v1(data)


# --- version 2 (extras without POLICY) and its upgrade ------------------------------

# ECHO_TASK with A=1, "in" on its standard input and MAILTO "me", as a VERSION 2 BODY
# (by hand): ECHO_BODY's TIMING-EX and COMMANDLINE, then NBENV 1, "A", "1", STDIN "in",
# MAILTO set, "me"; no POLICY.
V2_EXTRAS = Extras(((b"A", b"1"),), b"in", b"me")
V2_BODY = ECHO_BODY[: ECHO_COMMAND[1]] + bytes.fromhex(
    "00000001 00000001 41 00000001 31  00000002 696e  01 00000002 6d65"
)


def test_it_reads_a_version_2_body_without_a_policy() -> None:
    assert encode_body_v2(Task(WEDNESDAY_9_14, ECHO, V2_EXTRAS)) == V2_BODY
    assert decode_body(V2_BODY + bytes(3), version=2) == Task(WEDNESDAY_9_14, ECHO, V2_EXTRAS)
    assert decode_body(ECHO_BODY[: ECHO_COMMAND[1]] + bytes(9), version=2) == ECHO_TASK
    with pytest.raises(RecordsError):
        decode_body(V2_BODY)  # not a VERSION 3 body
    with pytest.raises(ValueError, match="no policy"):
        encode_body_v2(Task(Timing(), ECHO, Extras(paused=True)))


def v2_file() -> bytes:
    """A VERSION 2 file with extras, padding, a tombstone, a record that does not
    decode and a slot reused (ids out of order)."""
    with_extras = encode_body_v2(Task(WEDNESDAY_9_14, ECHO, V2_EXTRAS))
    plain = encode_body_v2(Task(Timing(zone="UTC"), (b"ls",)))
    return cmds(
        8,
        encode_record(6, plain, len(plain) + 7),
        encode_record(TOMBSTONE, bytes(30), 30),
        encode_record(2, with_extras, len(with_extras)),
        encode_record(3, bytes(25), 25),
        version=2,
    )


def test_it_upgrades_a_version_2_file_to_exactly_its_tasks() -> None:
    old = v2_file()
    assert [s.task_id for s in scan_cmds(old).slots] == [6, None, 2, None]
    upgraded, old_scan = upgrade(bytearray(old))
    assert old_scan.version == 2
    assert old_scan.problems == scan_cmds(old).problems and len(old_scan.problems) == 1
    tasks = [
        (2, Task(WEDNESDAY_9_14, ECHO, V2_EXTRAS)),
        (6, Task(Timing(zone="UTC"), (b"ls",))),
    ]
    # Spliced, yet byte for byte what encode_body gives: no free slot, no padding.
    assert bytes(upgraded) == cmds(
        8, *(encode_record(i, body := encode_task_body(t), len(body)) for i, t in tasks)
    )
    scan = scan_cmds(bytes(upgraded))
    assert (scan.version, scan.next_id, scan.problems) == (VERSION, 8, [])
    assert [(s.task_id, Task(s.timing, s.argv, s.extras)) for s in scan.slots] == tasks  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [encode_header(3), b"", b"SATD"])
def test_it_upgrades_only_an_old_file(data: bytes) -> None:
    with pytest.raises(RecordsError, match="not an old cmds file"):
        upgrade(data)
