"""handlers: what each request means, without I/O. Replies are checked as raw bytes."""

from __future__ import annotations

import pytest

from saturnd import handlers
from saturnd.handlers import (
    Answer,
    CreateTask,
    ListTasks,
    ReadOutput,
    ReadRuns,
    RemoveTask,
    Terminate,
)
from saturnd.protocol import (
    CreateRequest,
    ListRequest,
    RemoveRequest,
    Request,
    StderrRequest,
    StdoutRequest,
    TerminateRequest,
    TimesExitcodesRequest,
)
from saturnd.timing import Timing

LIVE = {0, 3, 7}
TIMING = Timing.parse("0", "9", "3")

DECISIONS: list[tuple[Request, handlers.Action]] = [
    (ListRequest(), ListTasks()),
    (CreateRequest(TIMING, (b"echo", b"hi")), CreateTask(TIMING, (b"echo", b"hi"))),
    (RemoveRequest(3), RemoveTask(3)),
    (RemoveRequest(4), Answer(b"ERNF")),
    (TimesExitcodesRequest(7), ReadRuns(7)),
    (TimesExitcodesRequest(2**64 - 1), Answer(b"ERNF")),
    (StdoutRequest(0), ReadOutput(0, "stdout")),
    (StderrRequest(0), ReadOutput(0, "stderr")),
    (StdoutRequest(1), Answer(b"ERNF")),
    (StderrRequest(8), Answer(b"ERNF")),
    (TerminateRequest(), Terminate()),
]


@pytest.mark.parametrize(("request_", "action"), DECISIONS)
def test_it_decides_each_request(request_: Request, action: handlers.Action) -> None:
    assert handlers.decide(request_, LIVE) == action


def test_it_answers_about_a_missing_task_even_with_no_tasks() -> None:
    for request in (RemoveRequest(0), TimesExitcodesRequest(0), StdoutRequest(0)):
        assert handlers.decide(request, set()) == Answer(b"ERNF")


def test_it_builds_the_replies_byte_for_byte() -> None:
    assert handlers.reply_created(26) == bytes.fromhex("4f4b 000000000000001a")
    assert handlers.OK == b"OK"
    # TIMES_EXITCODES: OK, NBRUNS; the runs (TIME int64, EXITCODE uint16) follow from
    # the file, stored in the reply's layout.
    assert handlers.reply_runs_head(0) == bytes.fromhex("4f4b 00000000")
    assert handlers.reply_runs_head(500_000) == bytes.fromhex("4f4b 0007a120")
    assert handlers.reply_runs_head(2**32 - 1) == bytes.fromhex("4f4b ffffffff")
    assert handlers.reply_output(b"a\0b") == b"OK\x00\x00\x00\x03a\0b"
    assert handlers.reply_output(b"") == b"OK\x00\x00\x00\x00"
    assert handlers.reply_output(None) == b"ERNR"


def test_it_describes_requests_for_the_log() -> None:
    assert handlers.describe(RemoveRequest(5)) == "Remove 5"
    assert handlers.describe(ListRequest()) == "List"
