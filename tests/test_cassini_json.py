"""`--json` with `-l`, `-l -v`, `-x` and `-n`: one JSON document, the same facts as the text.

Each JSON document is parsed and turned back into the text output, which must come
out byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cassini import output
from cassini.cli import Invocation
from cassini.replies import Outcome
from saturnd.protocol import (
    ListExReply,
    ListExRequest,
    Run,
    TaskEntry,
    TimesExitcodesReply,
    TimesExitcodesRequest,
)
from saturnd.task import Extras
from saturnd.timing import Timing
from tests.conftest import NOW
from tests.daemon_harness import Daemon, wait_for

MakeDaemon = Callable[..., Daemon]

TZ = "Europe/Paris"


def _document(data: bytes) -> Any:
    """The one JSON document of an output: ASCII, on one line, ending with a newline."""
    assert data.isascii()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return json.loads(data)


def _argv(document: dict[str, Any]) -> bytes:
    return b" ".join(arg.encode("utf-8", "surrogateescape") for arg in document["argv"])


def _escaped(arg: str) -> bytes:
    """An argument as `-l` shows it: control bytes as `\\n`, `\\t`, `\\r`, `\\xHH`."""
    names = {0x09: b"\\t", 0x0A: b"\\n", 0x0D: b"\\r"}
    shown = b""
    for byte in arg.encode("utf-8", "surrogateescape"):
        if byte < 0x20 or byte == 0x7F:
            shown += names.get(byte, f"\\x{byte:02x}".encode())
        else:
            shown += bytes([byte])
    return shown


def _task_line(document: dict[str, Any]) -> bytes:
    """A task of `-l --json` written as `-l` writes it."""
    if document["reboot"]:
        timing = "- - - @reboot"
    else:
        timing = f"{document['minutes']} {document['hours']} {document['daysofweek']}"
        if document["daysofmonth"] != "*":
            key = "or-dom" if document["days_or"] else "dom"
            timing += f" {key}={document['daysofmonth']}"
        if document["months"] != "*":
            timing += f" mon={document['months']}"
    if document["zone"] is not None:
        timing += f" tz={document['zone']}"
    argv = b" ".join(_escaped(arg) for arg in document["argv"])
    return f"{document['id']}: {timing} ".encode() + argv + b"\n"


def _stable(run: Callable[[], bytes]) -> bytes:
    """Run `run` twice within one minute of the real clock; the first output."""
    for _ in range(3):
        before = time.time()
        result = run()
        if int(before) // 60 == int(time.time()) // 60:
            return result
    raise AssertionError("three attempts straddled a minute boundary")


def _daemon_with_runs(make_daemon: MakeDaemon) -> tuple[Daemon, list[int]]:
    daemon = make_daemon(tz=TZ)
    ids = [
        daemon.create("sh", "-c", "exit 3"),
        daemon.create("-m", "0", "-H", "9,14", "-d", "3", "echo", "test-1"),
        daemon.create("printf", "%s\\n", os.fsdecode(b"caf\xc3\xa9 \xff \\ \"'"), "\t"),
    ]
    for _ in daemon.steps(NOW + 60, 2):
        pass
    wait_for(lambda: len(daemon.runs(ids[0])) == 2, what="two runs")
    return daemon, ids


def test_it_matches_the_text_outputs(make_daemon: MakeDaemon) -> None:
    daemon, ids = _daemon_with_runs(make_daemon)

    listing = _document(daemon.cassini("-l", "--json").stdout)
    assert b"".join(_task_line(task) for task in listing) == daemon.cassini("-l").stdout
    assert [task["id"] for task in listing] == ids
    assert listing[2]["argv"] == ["printf", "%s\\n", "caf\u00e9 \udcff \\ \"'", "\t"]

    runs = _document(daemon.cassini("-x", str(ids[0]), "--json").stdout)
    text = daemon.cassini("-x", str(ids[0])).stdout
    assert "".join(f"{run['local']} {run['exitcode']}\n" for run in runs).encode() == text
    assert [run["exitcode"] for run in runs] == [3, 3]
    assert [run["time"] for run in runs] == [NOW + 60, NOW + 120]
    for run in runs:
        shown = datetime.fromtimestamp(run["time"], ZoneInfo(TZ)).strftime("%Y-%m-%d %H:%M:%S")
        assert shown == run["local"]

    for task_id in ids:

        def both_outputs(task_id: int = task_id) -> bytes:
            text = daemon.cassini("-n", str(task_id), "-N", "7").stdout
            return text + b"\0" + daemon.cassini("-n", str(task_id), "-N", "7", "--json").stdout

        both = _stable(both_outputs)
        text, _, document = both.partition(b"\0")
        starts = _document(document)
        assert len(starts) == 7
        assert "".join(f"{start['local']}\n" for start in starts).encode() == text
        for start in starts:
            local = datetime.fromtimestamp(start["time"], ZoneInfo(TZ))
            assert local.strftime("%Y-%m-%d %H:%M:%S") == start["local"]


def test_it_matches_the_verbose_listing(make_daemon: MakeDaemon) -> None:
    daemon, _ = _daemon_with_runs(make_daemon)
    both = _stable(
        lambda: daemon.cassini("-lvv").stdout + b"\0" + daemon.cassini("-lv", "--json").stdout
    )
    text, _, document = both.partition(b"\0")
    tasks = _document(document)
    extra = "    next run: {}\n    description: {}\n"
    rebuilt = b"".join(
        _task_line(task) + extra.format(task["next"]["local"], task["description"]).encode()
        for task in tasks
    )
    assert rebuilt == text
    assert tasks[1]["description"] == "At 09:00 and 14:00, only on Wednesday"
    assert set(tasks[0]) == {
        "id", "minutes", "hours", "daysofweek", "argv", "next", "description",
        "daysofmonth", "months", "days_or", "reboot", "zone", "env", "stdin", "mailto",
        "timeout", "jitter", "no_overlap", "catch_up", "on_failure", "paused",
        "running", "last", "result", "failed",
    }  # fmt: skip
    assert set(tasks[0]["next"]) == {"time", "local"}


def test_it_prints_empty_lists(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    assert daemon.cassini("--json").stdout == b"[]\n"
    task_id = daemon.create("true")
    assert daemon.cassini("-x", str(task_id), "--json").stdout == b"[]\n"


def test_it_prints_no_json_for_an_error(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    for args in (["-x", "5", "--json"], ["-n", "5", "--json"]):
        result = daemon.cassini(*args, check=False)
        assert (result.stdout, result.stderr, result.returncode) == (
            b"",
            b"cassini: no task with id 5\n",
            1,
        )


def test_it_carries_the_whole_task() -> None:
    reply = ListExReply(
        (
            TaskEntry(
                4,
                Timing.cron("0 20 1-7 * 5", "America/New_York"),
                (b"report", b"caf\xc3\xa9\n"),
                Extras(((b"PATH", b"/opt/bin"), (b"X", b"\xff")), b"line 1\nline 2", b""),
            ),
            TaskEntry(5, Timing(reboot=True), (b"true",)),
            TaskEntry(6, Timing.cron("0 0 29 2 *"), (b"true",), Extras(mailto=b"me@here")),
        )
    )
    outcome = output.render(Invocation(ListExRequest(), json=True), reply, time.gmtime, 0)
    tasks = _document(outcome.stdout)
    assert tasks[0] == {
        "id": 4,
        "minutes": "0",
        "hours": "20",
        "daysofweek": "5",
        "argv": ["report", "caf\u00e9\n"],
        "daysofmonth": "1-7",
        "months": "*",
        "days_or": True,
        "reboot": False,
        "zone": "America/New_York",
        "env": [{"name": "PATH", "value": "/opt/bin"}, {"name": "X", "value": "\udcff"}],
        "stdin": "line 1\nline 2",
        "mailto": "",
        "timeout": 0,
        "jitter": 0,
        "no_overlap": False,
        "catch_up": False,
        "on_failure": None,
        "paused": False,
    }
    assert (tasks[1]["reboot"], tasks[1]["minutes"], tasks[1]["zone"]) == (True, "", None)
    assert (tasks[2]["daysofmonth"], tasks[2]["months"], tasks[2]["days_or"]) == ("29", "2", False)
    assert (tasks[2]["env"], tasks[2]["stdin"], tasks[2]["mailto"]) == ([], "", "me@here")
    # And -l's lines can be rebuilt from it.
    listing = output.render_plain(ListExRequest(), reply, time.gmtime).stdout
    assert b"".join(_task_line(task) for task in tasks) == listing


def test_it_refuses_a_run_time_it_cannot_show() -> None:
    reply = TimesExitcodesReply((Run(0, 0), Run(2**63 - 1, 0)))
    invocation = Invocation(TimesExitcodesRequest(1), json=True)
    outcome = output.render(invocation, reply, time.gmtime, 0)
    message = f"cassini: malformed reply from daemon: run time {2**63 - 1} is out of range\n"
    assert outcome == Outcome(stderr=message, status=1)


def _imported(daemon: Daemon, *args: str) -> set[str]:
    """The modules `cassini ARGS` imports, talking to `daemon`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cassini", "-p", str(daemon.pipes), *args],
        capture_output=True,
        timeout=30,
        env=daemon.env,
        check=True,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_it_imports_only_what_each_output_needs(make_daemon: MakeDaemon) -> None:
    daemon, ids = _daemon_with_runs(make_daemon)
    newer = {"cassini.output", "cassini.crontab", "cassini.cronwrite", "json", "saturnd.schedule"}
    newer.add("cron_descriptor")
    newer |= {"cassini.history", "cassini.table", "cassini.duration", "cassini.policyline"}
    for args in (["-l"], ["-x", str(ids[0])], ["-o", str(ids[0])]):
        assert _imported(daemon, *args) & newer == set(), args
    assert _imported(daemon, "-l", "--json") & newer == {"cassini.output", "json"}
    assert _imported(daemon, "-n", "0") & newer == {"cassini.output", "saturnd.schedule"}
    assert "cron_descriptor" in _imported(daemon, "-l", "-v", "-v")
    assert "cron_descriptor" not in _imported(daemon, "-l", "-v")  # the table has no words
    exporting = {"cassini.output", "cassini.crontab", "cassini.cronwrite", "cassini.policyline"}
    assert _imported(daemon, "--export") & newer == exporting
