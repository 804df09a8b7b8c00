"""`cassini --import FILE [--replace] [--check]` against a real saturnd (issue 13, item 5).

--replace makes the daemon's tasks those of the file in one REPLACE: unchanged lines
keep their task (id and history), the rest are removed or created, all or nothing, and
a Ctrl-C during the import leaves the old list or the new one and says which.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cassini import cli, crontab, importing
from cassini.crontab import Entry
from saturnd.protocol import TaskEntry
from saturnd.task import Extras, Task
from saturnd.timing import Timing
from tests.conftest import NOW
from tests.daemon_harness import CASSINI, Daemon, wait_for

MakeDaemon = Callable[..., Daemon]


def entry(line: int, argv: tuple[bytes, ...], when: str = "@daily") -> Entry:
    return Entry(line, Task(Timing.cron(when), argv))


def listed(task_id: int, argv: tuple[bytes, ...], when: str = "@daily") -> TaskEntry:
    return TaskEntry(task_id, Timing.cron(when), argv)


# --- pure -----------------------------------------------------------------------------


def test_it_parses_the_import_and_edit_options() -> None:
    assert cli.parse_args(["--import", "f"]) == cli.Import("f")
    assert cli.parse_args(["-p", "d", "--import", "f", "--replace", "--check"]) == cli.Import(
        "f", "d", replace=True, check=True
    )
    assert cli.parse_args(["--edit"]) == cli.Edit()
    for args in (["--replace"], ["-l", "--check"], ["--edit", "--replace"]):
        with pytest.raises(cli.UsageError, match="only valid with --import"):
            cli.parse_args(args)
    with pytest.raises(cli.UsageError, match="conflicting options"):
        cli.parse_args(["--edit", "--import", "f"])


def test_it_plans_to_keep_equal_tasks_as_a_multiset_lowest_id_first() -> None:
    current = [
        listed(3, (b"a",)),
        listed(1, (b"a",)),
        listed(2, (b"b",)),
        listed(4, (b"c",), "@hourly"),
    ]
    wanted = [entry(1, (b"a",)), entry(2, (b"c",)), entry(3, (b"a",)), entry(5, (b"a",))]
    plan = importing.plan(current, wanted, replace=True)
    assert [(e.line, t.task_id) for e, t in plan.keep] == [(1, 1), (3, 3)]
    assert [e.line for e in plan.create] == [2, 5]  # `c` at another time is another task
    assert [t.task_id for t in plan.remove] == [2, 4]
    assert plan.summary() == "2 created, 2 kept, 2 removed"


def test_it_creates_every_line_in_a_plain_import() -> None:
    plan = importing.plan([listed(0, (b"a",))], [entry(1, (b"a",))], replace=False)
    assert (plan.keep, [e.line for e in plan.create], plan.remove) == ([], [1], [])


def test_it_plans_no_change_when_the_tasks_are_the_files() -> None:
    plan = importing.plan([listed(7, (b"a",))], [entry(4, (b"a",))], replace=True)
    assert not plan.changes


# --- end to end -------------------------------------------------------------------------


def _listing(daemon: Daemon) -> bytes:
    return daemon.cassini("-l").stdout


CRONTAB = (
    b"# my crontab\n"
    b'MAILTO=""\n'
    b"PATH=/usr/bin:/bin\n"
    b"0 3 1 * * certbot renew\n"
    b"* * * * * /bin/true tick\n"
    b"SHELL=/bin/bash\n"
    b"@reboot exec wallswitch\n"
    b"0 9 * * mon-fri cd /srv && make%all\n"
    b"CRON_TZ=America/New_York\n"
    b"30 6 * * * echo up\n"
)


def _import(
    daemon: Daemon, tmp_path: Path, data: bytes, *args: str
) -> subprocess.CompletedProcess[bytes]:
    path = tmp_path / "crontab"
    path.write_bytes(data)
    return daemon.cassini("--import", str(path), *args, check=False)


def test_it_imports_a_whole_crontab_and_exports_it_back(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    done = _import(daemon, tmp_path, CRONTAB)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"0\n1\n2\n3\n4\n", b"")
    exported = daemon.cassini("--export").stdout
    tasks = [entry.task for entry in crontab.parse(exported)[0]]
    assert tasks == [entry.task for entry in crontab.parse(CRONTAB)[0]]
    bash = (b"/bin/bash", b"-c")
    assert [task.argv for task in tasks] == [
        (b"certbot", b"renew"),
        (b"/bin/true", b"tick"),
        (*bash, b"exec wallswitch"),
        (*bash, b"cd /srv && make"),
        (*bash, b"echo up"),
    ]
    assert tasks[3].extras.stdin == b"all\n" and tasks[4].timing.zone == "America/New_York"
    assert tasks[0].extras == Extras(((b"PATH", b"/usr/bin:/bin"),), b"", b"")


def test_it_changes_nothing_on_export_then_import_replace(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    _import(daemon, tmp_path, CRONTAB)
    daemon.create("-m", "5", "echo", "from -c")  # a course task among them
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(daemon.runs(1)) == 1, what="the tick to run")
    before = (_listing(daemon), daemon.runs(1))
    exported = daemon.cassini("--export").stdout
    done = _import(daemon, tmp_path, exported, "--replace")
    assert (done.returncode, done.stdout) == (0, b"")
    assert done.stderr == b"cassini: no changes: 0 created, 6 kept, 0 removed\n"
    assert (_listing(daemon), daemon.runs(1)) == before
    assert daemon.cassini("--export").stdout == exported


def test_it_keeps_unchanged_lines_and_their_histories_on_replace(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    _import(daemon, tmp_path, b"* * * * * /bin/true a\n* * * * * /bin/true b\n@daily c\n")
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(daemon.runs(0)) == len(daemon.runs(1)) == 1, what="the runs")
    done = _import(
        daemon, tmp_path, b"@daily d\n* * * * * /bin/true b\n* * * * * /bin/true a\n", "--replace"
    )
    assert (done.returncode, done.stdout) == (0, b"3\n")
    assert done.stderr == b"cassini: 1 created, 2 kept, 1 removed\n"
    assert _listing(daemon) == (b"0: * * * /bin/true a\n1: * * * /bin/true b\n3: 0 0 * d\n")
    assert len(daemon.runs(0)) == len(daemon.runs(1)) == 1


def test_it_says_what_it_would_do_on_check_and_does_nothing(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    _import(daemon, tmp_path, b"@daily a\n@daily b\n")
    data = b"# new\n@daily b\nX=1\n@daily b\n"
    done = _import(daemon, tmp_path, data, "--replace", "--check")
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == (
        b"keep 1: line 2\n"
        b"create: line 4: @daily b\n"
        b"remove 0: 0 0 * a\n"
        b"1 to create, 1 to keep, 1 to remove\n"
    )
    assert _listing(daemon) == b"0: 0 0 * a\n1: 0 0 * b\n"
    plain = _import(daemon, tmp_path, data, "--check")
    assert plain.stdout.endswith(b"2 to create, 0 to keep, 0 to remove\n")


def test_it_refuses_on_check_what_cron_refuses(tmp_path: Path) -> None:
    path = tmp_path / "crontab"
    path.write_bytes(b"@daily fine\n61 * * * * x\n")
    done = subprocess.run(
        [CASSINI, "-p", str(tmp_path / "none"), "--import", str(path), "--check"],
        capture_output=True,
    )
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().splitlines() == [
        f"cassini: {path}:2: invalid minutes field '61': 61 is out of range 0-59",
        "cassini: nothing imported: 1 line was refused",
    ]


def test_it_changes_nothing_when_the_replace_fails(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    _import(daemon, tmp_path, b"@daily a\n")
    # Too many variables for the daemon's limit: refused whole.
    many = b"".join(b"V%d=x\n" % i for i in range(5000)) + b"@daily b\n"
    done = _import(daemon, tmp_path, many, "--replace")
    assert done.returncode == 1
    assert done.stderr.startswith(b"cassini: ")
    assert b"nothing changed" in done.stderr and done.stderr.count(b"\n") == 1
    assert _listing(daemon) == b"0: 0 0 * a\n"


def _crontab(tag: str, count: int = 300) -> bytes:
    return b"".join(
        b"%d * * * * /bin/true %s%d\n" % (i % 60, tag.encode(), i) for i in range(count)
    )


def _interrupt(daemon: Daemon, data: bytes, whole: bool, delay: float) -> tuple[int, str]:
    """`cassini --import - --replace` of `data` with a SIGINT `delay` seconds after the
    end of the file (`whole`) or while it waits for the rest: exit status and stderr.

    All of the file but its last byte is given first, 0.3 s before: cassini has
    started and waits to read, so the delay counts from the end of its input.
    """
    proc = subprocess.Popen(
        [CASSINI, "-p", str(daemon.pipes), "--import", "-", "--replace"],
        env=daemon.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(data[:-1])
    proc.stdin.flush()
    time.sleep(0.3)
    if whole:
        proc.stdin.write(data[-1:])
        proc.stdin.close()
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    if not whole:
        try:
            proc.stdin.write(data[-1:])
            proc.stdin.close()
        except BrokenPipeError:  # it has gone: nothing more to read
            pass
    stderr = proc.stderr.read().decode()
    return proc.wait(timeout=30), stderr


def test_it_leaves_the_old_list_or_the_new_on_ctrl_c_in_a_300_line_import(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    files = {tag: _crontab(tag) for tag in ("a", "b")}
    daemon.cassini("--import", "-", "--replace", input=files["a"])
    current = "a"
    outcomes: dict[str, int] = {}
    # While the file is being read, then from the moment it is whole to after the
    # import (300 lines parsed, LIST-EX, REPLACE) is over: about 0.1 s here.
    attempts = [(False, 0.0)] * 3 + [(True, 0.01 * i) for i in range(16)]
    for whole, delay in attempts:
        target = "b" if current == "a" else "a"
        before = _listing(daemon)
        status, text = _interrupt(daemon, files[target], whole, delay)
        after = _listing(daemon)
        assert "Traceback" not in text, text
        assert after.count(b"\n") == 300
        if "nothing changed" in text:
            assert (after, status, text) == (before, 130, "cassini: interrupted: nothing changed\n")
            outcome = "nothing"
        else:
            # Done whole: interrupted after the REPLACE, or not interrupted at all.
            assert text.startswith("cassini: 300 created, 0 kept, 300 removed\n"), text
            assert b"/bin/true %s0\n" % target.encode() in after and after != before
            interrupted = "cassini: interrupted after the change was made whole\n"
            assert (status, text.endswith(interrupted)) in ((130, True), (0, False)), text
            outcome = "interrupted after" if status else "finished"
            current = target
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes["nothing"] >= 3, outcomes
    print(outcomes)  # for the record: how many of each (pytest -s)


def test_it_imports_only_once_per_replace_in_the_store(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    # The ids of a replace are consecutive: the daemon created them in one request.
    daemon = make_daemon(root=tmp_path)
    done = _import(daemon, tmp_path, _crontab("x", 50), "--replace")
    assert done.stdout == b"".join(b"%d\n" % i for i in range(50))
    assert os.path.exists(daemon.pipes / "saturnd.sock")


def test_it_says_a_daemon_without_the_socket_cannot_take_whole_tasks(tmp_path: Path) -> None:
    from tests.fake_daemon import make_pipes

    pipes = make_pipes(tmp_path / "pipes")
    path = tmp_path / "crontab"
    path.write_bytes(b"@daily a\n0 3 1 * * certbot renew\n")
    done = subprocess.run(
        [CASSINI, "-p", str(pipes), "--import", str(path)], capture_output=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode() == (
        f"cassini: {path}: a task says more than the named pipes carry (a day of month, a "
        "month, @reboot, a zone, a setting or input): it needs saturnd's socket, and there "
        "is none; nothing changed\n"
    )


def test_it_runs_what_cron_would_run(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    (tmp_path / "dir").mkdir()
    data = (
        b"GREETING = hello there  \n"
        b"SHELL=/bin/bash\n"
        b'* * * * * echo "$GREETING from $0"\n'
        b"* * * * * cat%line one%line two\n"
        b"* * * * * cd " + str(tmp_path / "dir").encode() + b" && pwd\n"
        b"SHELL=/bin/sh\n"
        b"* * * * * exec printf '<\\%s>' \"$GREETING\" 50\\%\n"
        b"* * * * * /usr/bin/env\n"
    )
    done = _import(daemon, tmp_path, data)
    assert (done.returncode, done.stdout) == (0, b"0\n1\n2\n3\n4\n"), done.stderr
    daemon.step_to(NOW + 60)
    wait_for(lambda: all(daemon.runs(i) for i in range(5)), what="the runs")
    outputs = [daemon.cassini("-o", str(i)).stdout for i in range(5)]
    assert outputs[:4] == [
        b"hello there from /bin/bash\n",
        b"line one\nline two\n",
        str(tmp_path / "dir").encode() + b"\n",
        b"<hello there><50%>",
    ]
    environment = outputs[4].split(b"\n")
    assert b"GREETING=hello there" in environment and b"SHELL=/bin/sh" in environment


def test_it_ends_quietly_on_ctrl_c_while_its_modules_load() -> None:
    import sys

    # What bin/cassini does, with a Ctrl-C before main() runs.
    code = (
        "import sys; sys.argv[0] = 'cassini'; import cassini, os, signal, time; "
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(5)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert (done.returncode, done.stderr) == (130, b"cassini: interrupted: nothing changed\n")
    # A program that only imports the package keeps its own Ctrl-C.
    code = "import signal, cassini; print(signal.getsignal(signal.SIGINT).__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.stdout == b"default_int_handler\n"
