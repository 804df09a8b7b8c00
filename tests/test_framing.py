"""framing: which bytes form a request, what is dropped and why; bytes and times only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saturnd.framing import (
    Close,
    Drop,
    FifoFraming,
    NeedMore,
    Serve,
    StreamFraming,
)
from saturnd.protocol import (
    CreateExRequest,
    CreateRequest,
    HistoryRequest,
    KillRequest,
    ListExRequest,
    ListRequest,
    OutputExRequest,
    PauseRequest,
    RemoveRequest,
    ReplaceRequest,
    Request,
    ResumeRequest,
    RunNowRequest,
    TerminateRequest,
    VersionRequest,
    encode,
)
from saturnd.task import Task
from saturnd.timing import Timing

T0 = 1000.0
LIST = bytes.fromhex("4c53")
REMOVE_5 = bytes.fromhex("524d 0000000000000005")
CREATE = encode(CreateRequest(Timing.parse("0", "9", "*"), (b"echo", b"hi")))
VERSION = encode(VersionRequest(b"x"))


def steps(framer: FifoFraming, now: float) -> list[object]:
    """Every decision until NeedMore (included)."""
    said: list[object] = []
    while True:
        step = framer.next(now)
        said.append(step)
        if isinstance(step, NeedMore):
            return said


# Each case: the reads (bytes, time), when we ask, and what the framer says.
FIFO_CASES = [
    ("one request", [(LIST, T0)], T0, [Serve(ListRequest(), 2), NeedMore(None)]),
    (
        "two in one read",
        [(LIST + REMOVE_5, T0)],
        T0,
        [Serve(ListRequest(), 2), Serve(RemoveRequest(5), 10), NeedMore(None)],
    ),
    (
        "half, then the rest in time",
        [(CREATE[:7], T0), (CREATE[7:], T0 + 0.5)],
        T0 + 0.5,
        [
            Serve(CreateRequest(Timing.parse("0", "9", "*"), (b"echo", b"hi")), len(CREATE)),
            NeedMore(None),
        ],
    ),
    ("half, still in time", [(CREATE[:7], T0)], T0 + 0.9, [NeedMore(T0 + 1.0)]),
    (
        "half, too late: dropped with its read",
        [(CREATE[:7], T0)],
        T0 + 1.0,
        [Drop(7, "incomplete after 1 s (7 bytes)"), NeedMore(None)],
    ),
    (
        "half, then a whole request in a read of its own: the half is dropped at once",
        [(CREATE[:7], T0), (LIST, T0 + 0.1)],
        T0 + 0.1,
        [
            Drop(7, "incomplete (7 bytes) when a whole request came in a read of its own"),
            Serve(ListRequest(), 2),
            NeedMore(None),
        ],
    ),
    (
        "a stalled writer's prefix that would swallow the next request's bytes",
        [(b"SE", T0), (REMOVE_5, T0 + 0.1)],
        T0 + 0.1,
        [
            Drop(
                2,
                "a stalled writer's bytes (2) glued to a whole request that came in a "
                "read of its own",
            ),
            Serve(RemoveRequest(5), 10),
            NeedMore(None),
        ],
    ),
    (
        "garbage: its read dropped, the next read served",
        [(b"zz" + LIST, T0), (REMOVE_5, T0)],
        T0,
        [Drop(4, "unknown opcode 7a 7a"), Serve(RemoveRequest(5), 10), NeedMore(None)],
    ),
    (
        "an extension on the FIFO is dropped, not served",
        [(VERSION + LIST, T0)],
        T0,
        [
            Drop(len(VERSION), "vr is served on the socket only"),
            Serve(ListRequest(), 2),
            NeedMore(None),
        ],
    ),
]


@pytest.mark.parametrize(
    ("reads", "now", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in FIFO_CASES],
)
def test_it_frames_the_fifo(
    reads: list[tuple[bytes, float]], now: float, expected: list[object]
) -> None:
    framer = FifoFraming()
    for data, at in reads:
        framer.feed(data, at)
    assert steps(framer, now) == expected


WHOLE_TASK = Task(Timing.cron("@daily"), (b"echo",))


@pytest.mark.parametrize(
    "request_",
    [
        CreateExRequest(WHOLE_TASK),
        ListExRequest(),
        ReplaceRequest((5,), (WHOLE_TASK,)),
        RunNowRequest(5),
        PauseRequest(5),
        ResumeRequest(5),
        KillRequest(5),
        HistoryRequest(5),
        OutputExRequest(5, 1),
    ],
    ids=["cx", "lx", "rp", "ru", "pa", "rs", "ki", "hx", "ox"],
)
def test_it_drops_the_socket_only_extensions_on_the_fifo(request_: Request) -> None:
    framer = FifoFraming()
    framer.feed(encode(request_) + LIST, T0)
    opcode = request_.opcode.decode()
    assert steps(framer, T0) == [
        Drop(len(encode(request_)), f"{opcode} is served on the socket only"),
        Serve(ListRequest(), 2),
        NeedMore(None),
    ]


def test_it_serves_a_request_fed_one_byte_at_a_time() -> None:
    framer = FifoFraming()
    for index, byte in enumerate(CREATE[:-1]):
        framer.feed(bytes([byte]), T0 + index * 0.001)
        assert steps(framer, T0 + index * 0.001) == [NeedMore(T0 + 1.0)]
    framer.feed(CREATE[-1:], T0 + 0.5)
    assert isinstance(framer.next(T0 + 0.5), Serve)
    assert framer.buffered == 0 and framer.deadline is None


def test_it_drops_a_request_over_the_size_limit_at_once() -> None:
    framer = FifoFraming()
    huge = bytes.fromhex("4352") + bytes(13) + (2).to_bytes(4, "big") + (1 << 30).to_bytes(4, "big")
    framer.feed(huge, T0)
    step = framer.next(T0)
    assert isinstance(step, Drop) and step.size == len(huge)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=3))
def test_a_whole_request_after_any_bad_read_is_served(junk: bytes, pause: int) -> None:
    # Resynchronisation: whatever a bad writer sent in its read, and however long it
    # stalls, a well-formed request in a later read is served within the timeout.
    framer = FifoFraming()
    framer.feed(junk, T0)
    framer.feed(REMOVE_5, T0 + 0.1)
    served: list[object] = []
    for now in (T0 + 0.1, T0 + 0.1 + pause, T0 + 1.0, T0 + 2.0):
        for step in steps(framer, now):
            if isinstance(step, Serve):
                served.append(step.request)
    assert served[-1:] == [RemoveRequest(5)]


# --- the socket ------------------------------------------------------------------------


def test_a_connection_serves_requests_in_order() -> None:
    framer = StreamFraming(T0)
    framer.feed(LIST + REMOVE_5 + LIST[:1], T0)
    assert framer.next(T0) == Serve(ListRequest(), 0)
    assert framer.next(T0) == Serve(RemoveRequest(5), 0)
    assert framer.next(T0) == NeedMore(T0 + 1.0)
    assert framer.in_request
    framer.feed(LIST[1:], T0 + 0.2)
    assert framer.next(T0 + 0.2) == Serve(ListRequest(), 0)
    assert framer.next(T0 + 0.2) == NeedMore(T0 + 0.2 + 30.0)


def test_a_connection_serves_an_extension() -> None:
    framer = StreamFraming(T0)
    framer.feed(VERSION + bytes.fromhex("544d"), T0)
    assert framer.next(T0) == Serve(VersionRequest(b"x"), 0)
    assert framer.next(T0) == Serve(TerminateRequest(), 0)


@pytest.mark.parametrize(
    ("data", "now", "reason"),
    [
        (b"zz", T0, "malformed request: unknown opcode 7a 7a"),
        (CREATE[:5], T0 + 1.0, "incomplete request after 1 s (5 bytes)"),
        (b"", T0 + 30.0, "idle for 30 s"),
    ],
)
def test_a_connection_is_closed_for_good_reason(data: bytes, now: float, reason: str) -> None:
    framer = StreamFraming(T0)
    if data:
        framer.feed(data, T0)
    assert framer.next(now) == Close(reason)
    assert isinstance(framer.next(now), Close)  # and stays closed


def test_the_idle_time_counts_from_the_last_reply() -> None:
    framer = StreamFraming(T0)
    framer.rest(T0 + 20.0)
    assert framer.deadline == T0 + 50.0
    assert framer.next(T0 + 31.0) == NeedMore(T0 + 50.0)
