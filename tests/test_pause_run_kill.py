"""PAUSE, RESUME, RUN and KILL end to end: a real daemon with a fake clock, raw messages
over its socket, the runs' records read back with HISTORY (issue 14).

No test waits for a real minute: the clock file is stepped, and "did not run" is shown
by a later run being the only one in the history.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from saturnd.decoding import decode_reply
from saturnd.protocol import (
    CreateExRequest,
    CreateReply,
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
    PauseRequest,
    Reply,
    Request,
    ResumeRequest,
    Run,
    RunNowRequest,
    TimesExitcodesReply,
    TimesExitcodesRequest,
    encode,
)
from saturnd.runrecord import BY_HAND, EXITED, KILLED, RunRecord
from saturnd.task import Task
from saturnd.taskdir import runs_in_progress
from saturnd.timing import Timing
from tests.daemon_harness import Daemon, wait_for

MakeDaemon = Callable[..., Daemon]
T0 = 1_767_225_600  # 2026-01-01 00:00 UTC, a minute boundary
NOT_FOUND = ErrorReply(b"NF")


def ask(daemon: Daemon, request: Request) -> Reply:
    """One request over the daemon's socket, the reply decoded."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(daemon.pipes / "saturnd.sock"))
        connection.sendall(encode(request))
        connection.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return decode_reply(request.opcode, data)


def create(daemon: Daemon, timing: Timing, *argv: bytes) -> int:
    reply = ask(daemon, CreateExRequest(Task(timing, argv)))
    assert isinstance(reply, CreateReply)
    return reply.task_id


def history(daemon: Daemon, task_id: int) -> tuple[RunRecord, ...]:
    reply = ask(daemon, HistoryRequest(task_id))
    assert isinstance(reply, HistoryReply)
    return reply.runs


def ended(daemon: Daemon, task_id: int) -> tuple[RunRecord, ...]:
    """The runs that have ended (HISTORY ends with the runs in progress, END 0)."""
    return tuple(run for run in history(daemon, task_id) if run.end)


def wait_for_runs(daemon: Daemon, task_id: int, count: int) -> tuple[RunRecord, ...]:
    wait_for(lambda: len(ended(daemon, task_id)) >= count, what=f"{count} runs")
    return ended(daemon, task_id)


def paused_in_listing(daemon: Daemon, task_id: int) -> bool:
    reply = ask(daemon, ListExRequest())
    assert isinstance(reply, ListExReply)
    return next(entry.extras.paused for entry in reply.tasks if entry.task_id == task_id)


def test_it_pauses_a_task_and_resumes_it(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(start=T0)
    task_id = create(daemon, Timing(), b"echo", b"ran")
    other = create(daemon, Timing(), b"true")
    assert ask(daemon, PauseRequest(task_id)) == OkReply()
    assert ask(daemon, PauseRequest(task_id)) == OkReply()  # already paused: OK
    assert ask(daemon, PauseRequest(99)) == NOT_FOUND
    assert paused_in_listing(daemon, task_id) and not paused_in_listing(daemon, other)
    daemon.step_to(T0 + 60)  # a matching minute: the other task runs, the paused one not
    wait_for_runs(daemon, other, 1)
    assert ask(daemon, ResumeRequest(task_id)) == OkReply()
    assert ask(daemon, ResumeRequest(99)) == NOT_FOUND
    assert not paused_in_listing(daemon, task_id)
    daemon.step_to(T0 + 120)
    runs = wait_for_runs(daemon, task_id, 1)
    assert [(run.start, run.outcome, run.flags & BY_HAND) for run in runs] == [
        (T0 + 120, EXITED, 0)
    ]
    assert wait_for_runs(daemon, other, 2)[1].start == T0 + 120


def test_it_runs_a_paused_task_now_by_hand(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(start=T0)
    task_id = create(daemon, Timing.cron("30 4 * * *"), b"echo", b"by hand")
    assert ask(daemon, PauseRequest(task_id)) == OkReply()
    assert ask(daemon, RunNowRequest(task_id)) == OkReply()
    assert ask(daemon, RunNowRequest(99)) == NOT_FOUND
    (run,) = wait_for_runs(daemon, task_id, 1)
    assert (run.start, run.exitcode, run.outcome, run.flags) == (T0, 0, EXITED, BY_HAND)
    assert run.pid > 0
    reply = ask(daemon, TimesExitcodesRequest(task_id))  # the course's history too
    assert reply == TimesExitcodesReply((Run(T0, 0),))
    assert ask(daemon, OutputExRequest(task_id, 1)) == OutputExReply(False, b"by hand\n")
    assert ask(daemon, OutputExRequest(task_id, 2, T0)) == OutputExReply(False, b"")
    assert ask(daemon, OutputExRequest(task_id, 1, T0 - 60)) == ErrorReply(b"NR")
    assert paused_in_listing(daemon, task_id)  # still paused: the run was by hand


def test_it_kills_a_run_in_progress_and_records_it_killed(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(start=T0)
    task_id = create(daemon, Timing.cron("30 4 * * *"), b"sleep", b"30")
    assert ask(daemon, KillRequest(task_id)) == KillReply(0)  # nothing going
    assert ask(daemon, RunNowRequest(task_id)) == OkReply()
    task_dir = daemon.state / f"task_{task_id}"
    wait_for(lambda: any(pid for _, pid in runs_in_progress(task_dir)), what="the run")
    ((start, pid),) = runs_in_progress(task_dir)
    assert history(daemon, task_id) == (RunRecord(start, 0, 0xFFFF, 0, 0, pid),)  # going
    asked = time.monotonic()
    assert ask(daemon, KillRequest(task_id)) == KillReply(1)
    (run,) = wait_for_runs(daemon, task_id, 1)
    took = time.monotonic() - asked
    assert (run.start, run.outcome, run.exitcode, run.flags) == (T0, KILLED, 0xFFFF, BY_HAND)
    assert took < 5, f"the kill took {took:.1f} s"
    # Its marker goes just after its record.
    wait_for(lambda: runs_in_progress(task_dir) == [], what="the run's marker to go")
    assert ask(daemon, KillRequest(task_id)) == KillReply(0)
    assert ask(daemon, KillRequest(99)) == NOT_FOUND
    assert ask(daemon, HistoryRequest(99)) == NOT_FOUND


def test_it_kills_a_run_whose_supervising_process_was_killed(make_daemon: MakeDaemon) -> None:
    import psutil

    daemon = make_daemon(start=T0)
    task_id = create(daemon, Timing.cron("30 4 * * *"), b"sleep", b"30")
    assert ask(daemon, RunNowRequest(task_id)) == OkReply()
    task_dir = daemon.state / f"task_{task_id}"
    wait_for(lambda: any(pid for _, pid in runs_in_progress(task_dir)), what="the run")
    ((_, pid),) = runs_in_progress(task_dir)
    command = psutil.Process(pid)
    command.parent().kill()  # its P5: the run is abandoned, the command goes on
    wait_for(lambda: runs_in_progress(task_dir) == [], what="the run to be abandoned")
    daemon.set_time(T0 + 42)  # within the minute: the end is the daemon's clock
    wait_for(lambda: ask(daemon, KillRequest(task_id)) == KillReply(1), what="the kill")
    (run,) = history(daemon, task_id)
    assert (run.start, run.end, run.outcome, run.flags, run.pid) == (
        T0,
        T0 + 42,
        KILLED,
        BY_HAND,
        pid,
    )
    command.wait(timeout=5)  # killed too
