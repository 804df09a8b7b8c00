"""`cassini --export` and `cassini --import`: crontab lines out and in.

What is exported must mean the same to a real cron as to our import: the lines are run
through a re-reading of cron's own processing (the fields, then `%`, as cronie's
do_command.c does) and a real /bin/sh, and must give back the task's argv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cassini import crontab, cronwrite
from cassini.crontab import Problem
from cassini.cronwrite import HEADER
from saturnd.protocol import TaskEntry
from saturnd.task import Extras, Task
from saturnd.timing import Timing
from tests.daemon_harness import CASSINI, Daemon
from tests.fake_daemon import Exchange, FakeDaemon, make_pipes

MakeDaemon = Callable[..., Daemon]

ALL = Timing()


def task(task_id: int, argv: tuple[bytes, ...], timing: Timing = ALL) -> TaskEntry:
    return TaskEntry(task_id, timing, argv)


def requests(data: bytes) -> list[tuple[Timing, tuple[bytes, ...]]]:
    """What `parse` makes of `data`, which must have no refused line."""
    entries, problems, _ = crontab.parse(data)
    assert problems == []
    return [(entry.task.timing, entry.task.argv) for entry in entries]


# --- export ----------------------------------------------------------------------------


def test_it_exports_tasks_as_crontab_lines() -> None:
    tasks = [
        task(0, (b"echo", b"test-1"), Timing.parse("0", "9,14", "3")),
        task(1, (b"toto.sh",), Timing.parse("0-2,5,10")),
        task(7, (b"sh", b"-c", b"echo 50% > /tmp/x"), Timing.parse("*/15", "*", "1-5")),
    ]
    text, problems = cronwrite.export(tasks)
    assert text == HEADER + (
        b"0 9,14 * * 3 exec echo test-1\n"  # the program echo, not sh's builtin
        b"0-2,5,10 * * * * toto.sh\n"
        b"*/15 * * * 1-5 sh -c 'echo 50\\% > /tmp/x'\n"
    )
    assert problems == []


def test_it_exports_nothing_but_the_header_for_no_task() -> None:
    assert cronwrite.export([]) == (HEADER, [])


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        ((b"if", b"x"), b"'if' x"),  # a keyword sh would not run
        ((b"A=b", b"c"), b"'A=b' c"),  # an assignment
        ((b"x", b"if", b"A=b"), b"x if A=b"),  # only first words are read so
        ((b"a b", b""), b"'a b' ''"),
        ((b"it's",), b"'it'\"'\"'s'"),
        ((b"x", b"100%"), b"x 100\\%"),
        ((b"x", b"a\\%b"), b"x 'a\\''\\%b'"),  # a backslash before the %
        ((b"x", b"caf\xc3\xa9", b"\xff"), b"x 'caf\xc3\xa9' '\xff'"),
        ((b"x", b"*", b"~", b"#c", b"$HOME", b"a;b"), b"x '*' '~' '#c' '$HOME' 'a;b'"),
    ],
)
def test_it_quotes_arguments(argv: tuple[bytes, ...], line: bytes) -> None:
    text, _ = cronwrite.export([task(0, argv)])
    assert text == HEADER + b"* * * * * " + line + b"\n"


def test_it_writes_a_set_without_a_value_as_cron_reads_one() -> None:
    # cron reads a range backwards as no value (test_cron_verdict.py), and so do we.
    tasks = [task(4, (b"x",), Timing(0, 1, 1)), task(5, (b"x",), Timing(1, 1, 0))]
    text, skipped = cronwrite.export(tasks)
    assert skipped == [] and text == HEADER + b"1-0 0 * * 0 x\n0 0 * * 1-0 x\n"
    entries, problems, warnings = crontab.parse(text)
    assert problems == [] and [entry.task.timing for entry in entries] == [
        Timing(0, 1, 1),
        Timing(1, 1, 0),
    ]
    assert len(warnings) == 2


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (task(4, (b"printf", b"a\nb")), "an argument holds a newline"),
        (task(4, (b"x", b"a\0b")), "an argument holds a NUL byte"),
    ],
)
def test_it_names_the_tasks_it_cannot_export(entry: TaskEntry, reason: str) -> None:
    text, problems = cronwrite.export([task(1, (b"a",)), entry, task(9, (b"b",))])
    assert text == (
        HEADER
        + b"* * * * * a\n"
        + f"# task 4 is not exported: {reason}".encode()
        + text.split(reason.encode())[1].split(b"\n")[0]
        + b"\n* * * * * b\n"
    )
    assert len(problems) == 1 and problems[0].startswith(f"task 4 is not exported: {reason}")


# Arguments that any crontab line must carry unchanged (no newline, no NUL).
TRICKY = [
    b"plain",
    b"",
    b"two words",
    b"tab\there",
    b"it's",
    b'say "hi"',
    b"back\\slash",
    b"\\",
    b"100%",
    b"%",
    b"%%",
    b"\\%",
    b"\\\\%",
    b"a\\%b\\%",
    b"'%'",
    b"$HOME",
    b"`id`",
    b"$(id)",
    b"*",
    b"?",
    b"[a]",
    b"~",
    b"~/x",
    b"#not a comment",
    b"a#b",
    b"{a,b}",
    b";",
    b"&&",
    b"|",
    b"<in",
    b">out",
    b"(x)",
    b"!",
    b"if",
    b"A=b",
    b"caf\xc3\xa9",
    b"\xff\xfe",
    b"\xe2\x82",  # a truncated UTF-8 sequence
    b"-x",
    b"--",
    b"\r",
    b"trailing space ",
]


def _cron_command(line: bytes) -> bytes:
    """What cron hands to `sh -c` for a task line: after 5 fields, then the % rule.

    Written from cronie's entry.c and do_command.c: fields are separated by spaces
    and tabs; in the command, `\\%` becomes `%`, any other backslash stays with the
    character after it, and a bare `%` ends the command.
    """
    rest = line.rstrip(b"\n")
    for _ in range(5):
        rest = rest.lstrip(b" \t")
        while rest and rest[:1] not in (b" ", b"\t"):
            rest = rest[1:]
    rest = rest.lstrip(b" \t")
    out = bytearray()
    escaped = False
    for byte in rest:
        if escaped:
            if byte == ord("%"):
                out[-1] = byte
            else:
                out.append(byte)
            escaped = False
        elif byte == ord("\\"):
            escaped = True
            out.append(byte)
        elif byte == ord("%"):
            break
        else:
            out.append(byte)
    return bytes(out)


SHELLS = [shell for shell in ("/bin/sh", "/bin/dash", "/bin/bash") if os.path.exists(shell)]


@pytest.mark.parametrize("shell", SHELLS)
def test_it_exports_lines_that_cron_and_sh_run_with_the_same_arguments(shell: str) -> None:
    # The task prints its own arguments, each followed by a NUL: the format has a %.
    args = (b"printf", b"%s\\0", *TRICKY)
    text, problems = cronwrite.export([task(0, args, Timing.parse("30", "2", "*"))])
    assert problems == []
    line = text.split(b"\n")[1] + b"\n"
    done = subprocess.run([shell, "-c", _cron_command(line)], capture_output=True, check=True)
    assert done.stdout.split(b"\0")[:-1] == list(TRICKY)


def test_it_reads_back_what_it_exports() -> None:
    tasks = [
        task(i, (b"cmd", arg, arg + b"!"), Timing.parse(str(i))) for i, arg in enumerate(TRICKY)
    ]
    text, _ = cronwrite.export(tasks)
    assert requests(text) == [(t.timing, t.argv) for t in tasks]


_ARGS = st.binary(max_size=12).filter(lambda b: b"\n" not in b and b"\0" not in b)


@given(
    st.lists(
        st.tuples(
            st.integers(1, (1 << 60) - 1),
            st.integers(1, (1 << 24) - 1),
            st.integers(1, 127),
            st.lists(_ARGS, min_size=1, max_size=4).filter(lambda argv: argv[0] != b""),
        ),
        max_size=5,
    )
)
@settings(max_examples=300, deadline=None)
def test_it_round_trips_any_exportable_task(
    specs: list[tuple[int, int, int, list[bytes]]],
) -> None:
    tasks = [task(i, tuple(argv), Timing(m, h, d)) for i, (m, h, d, argv) in enumerate(specs)]
    text, problems = cronwrite.export(tasks)
    assert problems == []
    assert requests(text) == [(t.timing, t.argv) for t in tasks]


# --- import ----------------------------------------------------------------------------


def test_it_imports_what_crontabs_hold() -> None:
    data = (
        b"# m h dom mon dow command\n"
        b"\n"
        b"   \t\n"
        b"  # an indented comment\n"
        b"0 9 * * 3 echo test-1\n"
        b"*/15\t8-18  *\t* mon-fri   /usr/bin/backup --quiet\n"
        b"@hourly date\n"
        b"@daily  x\n"
        b"@midnight x\n"
        b"@weekly\tx\n"
        b"5 4 * * 7 /usr/bin/printf '\\%s\\n' \"it's\" 100\\% 'a b'\\ c\n"
        b"  1 2 * * sun,sat x a#b 'x;y' \"\\\\\" \\*\n"
        b"0 0 * * * trailing   \r\n"
        b"0 0 * * * caf\xc3\xa9 \xff"  # no newline at the end
    )
    assert requests(data) == [
        (Timing.parse("0", "9", "3"), (b"/bin/sh", b"-c", b"echo test-1")),  # a builtin
        (Timing.parse("*/15", "8-18", "1-5"), (b"/usr/bin/backup", b"--quiet")),
        (Timing.parse("0", "*", "*"), (b"date",)),
        (Timing.parse("0", "0", "*"), (b"x",)),
        (Timing.parse("0", "0", "*"), (b"x",)),
        (Timing.parse("0", "0", "0"), (b"x",)),
        (Timing.parse("5", "4", "0"), (b"/usr/bin/printf", b"%s\\n", b"it's", b"100%", b"a b c")),
        (Timing.parse("1", "2", "0,6"), (b"x", b"a#b", b"x;y", b"\\", b"*")),
        (Timing.parse("0", "0", "*"), (b"trailing",)),
        (Timing.parse("0", "0", "*"), (b"caf\xc3\xa9", b"\xff")),
    ]


def test_it_imports_a_crontab_with_crlf_line_ends() -> None:
    data = b"# made elsewhere\r\n\r\n@hourly date\r\n0 9 * * 3 echo 'a\rb'\r\n"
    assert [argv for _, argv in requests(data)] == [(b"date",), (b"/bin/sh", b"-c", b"echo 'a\rb'")]


def test_it_imports_an_empty_crontab() -> None:
    assert crontab.parse(b"") == ([], [], [])
    assert requests(b"# nothing\n\n") == []


REFUSED = [
    # (line, a piece of the reason): what cron itself refuses (Debian's `crontab -n`;
    # what it takes is in test_cron_verdict.py)
    (b"@every_minute x", "unknown name '@every_minute'"),
    (b"0 9 * *", "expected five time fields"),
    (b"0 9 * * * * x", "the command starts with '*'"),
    (b"60 9 * * * x", "invalid minutes field '60': 60 is out of range 0-59"),
    (b"0 24 * * * x", "invalid hours field '24'"),
    (b"0 9 32 * * x", "invalid day-of-month field '32'"),
    (b"0 9 * 13 * x", "invalid month field '13'"),
    (b"0 9 * * 8 x", "invalid day-of-week field '8'"),
    (b"0 9 * * fun x", "invalid day-of-week field 'fun'"),
    (b"0 9 * * * x \0", "NUL byte"),
    (b"-0 9 * * * x", "invalid minutes field"),
    (b"MAILTO=", 'write MAILTO="" for an empty value'),
    (b"PATH = ", 'write PATH=""'),
    (b'A="x" y', "expected five time fields"),  # cron: not a setting, so a task line
    (b"A='x", "expected five time fields"),
]


@pytest.mark.parametrize(("line", "reason"), REFUSED, ids=lambda v: repr(v)[:40])
def test_it_refuses_what_saturnd_cannot_do(line: bytes, reason: str) -> None:
    entries, problems, _ = crontab.parse(b"# first\n0 * * * * fine\n" + line + b"\n@daily ok\n")
    assert entries == []
    assert len(problems) == 1 and problems[0].line == 3
    assert reason in problems[0].reason
    assert "\n" not in problems[0].reason


def test_it_refuses_every_bad_line_with_its_number() -> None:
    lines = [b"# a crontab"] + [line for line, _ in REFUSED] + [b"@hourly fine"]
    entries, problems, _ = crontab.parse(b"\n".join(lines))
    assert entries == []
    assert [p.line for p in problems] == list(range(2, len(REFUSED) + 2))
    for problem, (_, reason) in zip(problems, REFUSED, strict=True):
        assert reason in problem.reason


def test_it_accepts_what_only_looks_like_shell_syntax() -> None:
    data = (
        b"0 9 * * * x 'a > b' \"a | b\" a\\;b 'it''s' \"~\" a~ 'x'#y \\$HOME 'if'\n"
        b"0 9 * * * 'A=1' x \"{a,b}\" {} a=b\n"
    )
    assert [argv for _, argv in requests(data)] == [
        (b"x", b"a > b", b"a | b", b"a;b", b"its", b"~", b"a~", b"x#y", b"$HOME", b"if"),
        (b"A=1", b"x", b"{a,b}", b"{}", b"a=b"),
    ]


def test_problems_compare_by_line_and_reason() -> None:
    assert Problem(1, "x") == Problem(1, "x") != Problem(2, "x")


# --- end to end ------------------------------------------------------------------------


def _listing(daemon: Daemon) -> list[bytes]:
    """`cassini -l` without the ids (arguments hold no newline here, but carriage returns)."""
    lines = daemon.cassini("-l").stdout.split(b"\n")[:-1]
    return [line.split(b": ", 1)[1] for line in lines]


def test_it_round_trips_fifty_tasks_through_a_crontab(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    (tmp_path / "first").mkdir()
    first = make_daemon(root=tmp_path / "first")
    timings = ["*", "0", "*/15", "0-2,5,10", "59"]
    hours = ["*", "9,14", "0", "1-5,7"]
    days = ["*", "3", "1-5", "0,6"]
    for index in range(50):
        argv = [os.fsdecode(TRICKY[index % len(TRICKY)]), os.fsdecode(b"#%d \xff" % index)]
        first.create(
            "-m", timings[index % 5], "-H", hours[index % 4], "-d", days[index % 3],
            f"cmd-{index}", *argv,
        )  # fmt: skip
    first.cassini("-r", "17")  # ids need not be contiguous
    exported = first.cassini("--export").stdout
    assert exported.startswith(HEADER) and exported.count(b"\n") == 50

    (tmp_path / "second").mkdir()
    second = make_daemon(root=tmp_path / "second")
    (tmp_path / "saved.crontab").write_bytes(exported)
    created = second.cassini("--import", str(tmp_path / "saved.crontab"))
    assert created.stdout == b"".join(b"%d\n" % i for i in range(49))
    assert created.stderr == b""
    assert _listing(second) == _listing(first)
    assert second.cassini("--export").stdout == exported


def test_it_imports_from_standard_input(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    result = daemon.cassini("--import", "-", input=b"@hourly date\n0 9 * * 3 echo test-1\n")
    assert (result.stdout, result.stderr) == (b"0\n1\n", b"")
    assert daemon.cassini("-l").stdout == b"0: 0 * * date\n1: 0 9 3 /bin/sh -c echo test-1\n"


def test_it_creates_nothing_when_a_line_is_refused(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    path = tmp_path / "my.crontab"
    path.write_bytes(
        b"MAILTO=\n"
        b"0 9 * * 3 echo fine\n"
        b"@sometimes start-me\n"
        b"0 0 32 * * monthly\n"
        b"0 9 * * 1-9 echo 50% > /tmp/x\n"
        b"@hourly fine too\n"
    )
    result = daemon.cassini("--import", str(path), check=False)
    assert (result.stdout, result.returncode) == (b"", 1)
    lines = result.stderr.decode().splitlines()
    assert [line.split(": ", 2)[1] for line in lines[:-1]] == [
        f"{path}:1",
        f"{path}:3",
        f"{path}:4",
        f"{path}:5",
    ]
    assert all(line.startswith("cassini: ") for line in lines)
    assert lines[-1] == "cassini: nothing imported: 4 lines were refused"
    assert daemon.cassini("-l").stdout == b""


def test_it_names_standard_input_in_refusals(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    result = daemon.cassini("--import", "-", input=b"\n\n@rebot x\n", check=False)
    assert result.stderr == (
        b"cassini: <stdin>:3: invalid schedule field '@rebot': unknown name '@rebot'\n"
        b"cassini: nothing imported: 1 line was refused\n"
    )
    assert result.returncode == 1


def test_it_says_when_the_file_cannot_be_read(tmp_path: Path) -> None:
    for path, reason in [(tmp_path / "missing", "No such file or directory"), (tmp_path, "Is a")]:
        done = subprocess.run(
            [CASSINI, "-p", str(tmp_path), "--import", str(path)], capture_output=True
        )
        assert done.returncode == 1
        assert done.stderr.decode().startswith(f"cassini: cannot read {path}: {reason}")
        assert done.stderr.count(b"\n") == 1 and done.stdout == b""


def test_it_says_which_lines_were_created_when_the_daemon_fails(tmp_path: Path) -> None:
    pipes = make_pipes(tmp_path / "pipes")
    path = tmp_path / "my.crontab"
    path.write_bytes(b"# tasks\n@hourly a\n@hourly b\n\n@hourly c\n@hourly d\n")
    created = [Exchange(bytes.fromhex("4f4b") + i.to_bytes(8, "big")) for i in (41, 42)]
    with FakeDaemon(pipes, [*created, Exchange(b"OK\0", truncate_at=3)]) as fake:
        done = subprocess.run(
            [CASSINI, "-p", str(pipes), "--import", str(path)], capture_output=True, timeout=30
        )
    assert len(fake.requests) == 3  # nothing is sent after the failure
    assert done.stdout == b"41\n42\n"
    assert done.stderr.decode() == (
        f"cassini: {path}:5: task not created: truncated reply from daemon: it closed "
        f"{pipes}/saturnd-reply-pipe after 3 bytes; the tasks of lines 2-3 were created\n"
    )
    assert done.returncode == 1


def test_it_says_so_when_no_daemon_answers_the_first_line(tmp_path: Path) -> None:
    pipes = make_pipes(tmp_path / "pipes")
    path = tmp_path / "my.crontab"
    path.write_bytes(b"@hourly a\n")
    done = subprocess.run(
        [CASSINI, "-p", str(pipes), "--import", str(path)], capture_output=True, timeout=30
    )
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().endswith("(is saturnd running?); no task was created\n")


def test_it_exports_what_it_can_and_says_what_it_cannot(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.create("echo", "one")
    daemon.create("printf", "a\nb")
    daemon.create("echo", "three")
    result = daemon.cassini("--export", check=False)
    assert result.stdout == HEADER + (
        b"* * * * * exec echo one\n"
        b"# task 1 is not exported: an argument holds a newline, which a crontab line cannot\n"
        b"* * * * * exec echo three\n"
    )
    assert result.stderr == (
        b"cassini: task 1 is not exported: an argument holds a newline, "
        b"which a crontab line cannot\n"
    )
    assert result.returncode == 1


@pytest.mark.skipif(shutil.which("crontab") is None, reason="no crontab(1) here")
def test_a_real_crontab_accepts_the_export(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("-m", "0", "-H", "9,14", "-d", "3", "echo", "50%", "it's")
    daemon.create("-m", "*/15", "-d", "1-5", "printf", "%s\\0", *map(os.fsdecode, TRICKY))
    path = tmp_path / "export.crontab"
    path.write_bytes(daemon.cassini("--export").stdout)
    # Check the file without installing it: Debian's crontab says -n, cronie's -T.
    for flag in ("-n", "-T"):
        done = subprocess.run(["crontab", flag, str(path)], capture_output=True)
        if b"usage" not in done.stderr.lower():
            assert done.returncode == 0, done.stderr
            return
    pytest.skip("this crontab cannot check a file without installing it")


# Lines whose command needs a shell: imported as cron runs them, with /bin/sh -c.
SHELL_LINES = [
    b"0 9 * * * x > /dev/null",
    b"0 9 * * * x 2>&1",
    b"0 9 * * * a && b",
    b"0 9 * * * a; b",
    b"0 9 * * * a | b",
    b"0 9 * * * (a)",
    b"0 9 * * * echo $HOME",
    b'0 9 * * * echo "$HOME"',
    b'0 9 * * * echo "\\$HOME"',
    b"0 9 * * * echo `id`",
    b"0 9 * * * rm /tmp/*.log",
    b"0 9 * * * ls ?",
    b"0 9 * * * ls [ab]",
    b"0 9 * * * ~/bin/x",
    b"0 9 * * * x # a comment",
    b"0 9 * * * echo {a,b}",
    b"0 9 * * * if true",
    b"0 9 * * * ! x",
    b"0 9 * * * A=1 x",
    # What cron (sh) reads as a builtin, quoted or not, wherever the shell reads a
    # command word, even where a program of that name exists (echo, test, kill, true)
    b"0 9 * * * exec wallswitch",
    b"0 9 * * * cd /tmp && make",
    b"0 9 * * * cd /tmp",
    b"0 9 * * * . ./env",
    b"0 9 * * * source ./env",
    b"0 9 * * * export A",
    b"0 9 * * * eval x",
    b"0 9 * * * set -e",
    b"0 9 * * * ulimit -c 0",
    b"0 9 * * * umask 022",
    b"0 9 * * * alias x=y",
    b"0 9 * * * read x",
    b"0 9 * * * trap x INT",
    b"0 9 * * * wait",
    b"0 9 * * * kill 1",
    b"0 9 * * * test -f x",
    b"0 9 * * * echo -e x",
    b"0 9 * * * printf x",
    b"0 9 * * * true",
    b"0 9 * * * pwd",
    b"0 9 * * * 'echo' x",
    b"0 9 * * * \\exec x",
    b'0 9 * * * "cd" x',
    b"0 9 * * * exec -a name x",
    b"0 9 * * * exec",
    b"0 9 * * * time x",
    b"0 9 * * * x 'open",  # sh reports its own errors, as under cron
    b"0 9 * * * x \\",
    b"0 9 * * * ''",
]


@pytest.mark.parametrize("line", SHELL_LINES)
def test_it_imports_a_command_that_needs_a_shell_as_cron_runs_it(line: bytes) -> None:
    entries, problems, _ = crontab.parse(line + b"\n")
    assert problems == [] and len(entries) == 1
    command = line.split(b" ", 5)[5]
    assert entries[0].task.argv == (b"/bin/sh", b"-c", command)


# --- everything a personal crontab says (issue 13) ------------------------------------


def tasks_of(data: bytes, context: crontab.Context | None = None) -> list[Task]:
    entries, problems, _ = crontab.parse(data, context)
    assert problems == []
    return [entry.task for entry in entries]


def test_it_reads_all_five_fields_names_and_at_names() -> None:
    data = (
        b"0 3 1 * * certbot renew\n"
        b"00 20 1-7 * 5 first-friday\n"
        b"1 6 */2 jan,JUL * odd-days\n"
        b"0 0 1,8,15,22 * monday x\n"
        b"@reboot start\n"
        b"@yearly y\n@annually y\n@monthly m\n@weekly w\n@daily d\n@midnight d\n@hourly h\n"
        b"@DAILY d\n"
    )
    schedules = [task.timing for task in tasks_of(data)]
    assert schedules == [
        Timing.cron("0 3 1 * *"),
        Timing.cron("0 20 1-7 * 5"),
        Timing.cron("1 6 */2 1,7 *"),
        Timing.cron("0 0 1,8,15,22 * 1"),
        Timing(reboot=True),
        *[Timing.cron(name) for name in ("@yearly", "@yearly", "@monthly", "@weekly")],
        *[Timing.cron("@daily")] * 2,
        Timing.cron("@hourly"),
        Timing.cron("@daily"),
    ]
    assert schedules[1].days_or and not schedules[2].days_or


def test_it_reads_environment_lines_as_cron_does() -> None:
    data = (
        b"A=1\n"
        b"  B = two words  \n"  # blanks around = and at the ends dropped
        b'C=" kept "\n'  # quotes keep blanks
        b"D='say \"hi\"'\n"
        b"E=a\"b'c\n"  # quotes inside a bare value are kept
        b'"F G" = x\n'  # a quoted name may hold a blank
        b'H=""\n'  # an empty value must be quoted
        b"I = a # b\n"  # no comments on a setting line
        b"A=3\n"  # a later value replaces the first where it stood
        b"0 9 * * * /bin/true\n"
    )
    (task,) = tasks_of(data)
    assert task.extras.env == (
        (b"A", b"3"),
        (b"B", b"two words"),
        (b"C", b" kept "),
        (b"D", b'say "hi"'),
        (b"E", b"a\"b'c"),
        (b"F G", b"x"),
        (b"H", b""),
        (b"I", b"a # b"),
    )


def test_it_applies_a_setting_to_the_lines_after_it_only() -> None:
    data = b"@daily a\nX=1\n@daily b\nX=2\nY=3\n@daily c\n"
    assert [task.extras.env for task in tasks_of(data)] == [
        (),
        ((b"X", b"1"),),
        ((b"X", b"2"), (b"Y", b"3")),
    ]


def test_it_runs_the_following_lines_with_the_shell_of_shell() -> None:
    data = (
        b"@daily ls -l\nSHELL=/bin/bash\n@daily ls -l\n@daily echo $HOME\n"
        b"SHELL=/bin/sh\n@daily ls\n"
    )
    assert [(task.argv, task.extras.variables().get(b"SHELL")) for task in tasks_of(data)] == [
        ((b"ls", b"-l"), None),
        ((b"/bin/bash", b"-c", b"ls -l"), b"/bin/bash"),  # bash's words are bash's business
        ((b"/bin/bash", b"-c", b"echo $HOME"), b"/bin/bash"),
        ((b"ls",), b"/bin/sh"),
    ]


def test_it_reads_the_following_schedules_in_the_zone_of_cron_tz() -> None:
    data = b'@daily a\nCRON_TZ=America/New_York\n0 9 * * * b\nCRON_TZ=""\n@daily c\n'
    tasks = tasks_of(data)
    assert [task.timing.zone for task in tasks] == ["", "America/New_York", ""]
    assert all(task.extras.env == () for task in tasks)  # a zone, not a variable
    assert tasks[1].timing == Timing.cron("0 9 * * *", "America/New_York")


def test_it_refuses_an_unknown_zone() -> None:
    context = crontab.Context(zone_exists=lambda name: name == "Europe/Paris")
    _, problems, _ = crontab.parse(b"CRON_TZ=Europe/Paris\nCRON_TZ=Mars/Olympus\n", context)
    assert problems == [Problem(2, "CRON_TZ=Mars/Olympus: unknown time zone")]


def test_it_takes_tz_for_a_variable_of_the_task_not_its_zone() -> None:
    (task,) = tasks_of(b"TZ=Asia/Tokyo\n@daily a\n")
    assert task.timing.zone == "" and task.extras.env == ((b"TZ", b"Asia/Tokyo"),)


def test_it_keeps_mailto_with_one_warning_without_sendmail() -> None:
    data = b'@daily a\nMAILTO=me@example.org\n@daily b\nMAILTO=""\n@daily c\nMAILTO=you\n'
    entries, problems, warnings = crontab.parse(data, crontab.Context(has_sendmail=False))
    assert problems == []
    assert [entry.task.extras.mailto for entry in entries] == [None, b"me@example.org", b""]
    assert all(entry.task.extras.env == () for entry in entries)
    assert warnings == ["line 2: MAILTO is kept, but no mail is sent: this machine has no sendmail"]
    assert crontab.parse(data, crontab.Context(has_sendmail=True))[2] == []


@pytest.mark.parametrize(
    ("command", "argv", "stdin"),
    [
        (b"cat", (b"cat",), b""),
        (b"cat%", (b"cat",), b""),  # nothing after the %: no input
        (b"mail -s hi me%Dear me,%%bye", (b"mail", b"-s", b"hi", b"me"), b"Dear me,\n\nbye\n"),
        (b"cat%a%", (b"cat",), b"a\n"),  # a newline is added only when the text lacks one
        (b"cat%%", (b"cat",), b"\n"),
        (b"date +\\%Y%\\%x", (b"date", b"+%Y"), b"%x\n"),
        (b"cat%a\\b\\\\c", (b"cat",), b"a\\b\\\\c\n"),  # other backslashes stay
        (b"cat%a\\", (b"cat",), b"a\\\n"),
        (b"cat%\\", (b"cat",), b"\\"),
        (b"x 'a%b'", (b"/bin/sh", b"-c", b"x 'a"), b"b'\n"),  # cron does not know quotes
        (b"x \\\\%y", (b"x", b"\\"), b"y\n"),  # `\\` escapes the backslash, not the %
    ],
)
def test_it_applies_crons_percent_rule(
    command: bytes, argv: tuple[bytes, ...], stdin: bytes
) -> None:
    (task,) = tasks_of(b"@daily " + command + b"\n")
    assert (task.argv, task.extras.stdin) == (argv, stdin)


def test_it_runs_the_program_named_after_exec_when_a_builtin_has_its_name() -> None:
    # How --export writes a task whose program is named like a builtin.
    tasks = tasks_of(b"@daily exec echo hi\n@daily exec '[' -f x ]\n@daily exec wallswitch\n")
    assert [task.argv for task in tasks] == [
        (b"echo", b"hi"),
        (b"[", b"-f", b"x", b"]"),
        (b"/bin/sh", b"-c", b"exec wallswitch"),
    ]


def test_it_refuses_a_system_crontab_line_or_drops_the_own_user_name() -> None:
    context = crontab.Context("me", is_user=lambda word: word in ("me", "root"))
    data = b"0 * * * * root run-parts /etc/cron.hourly\n0 * * * * me backup\n"
    entries, problems, _ = crontab.parse(data, context)
    assert [p.line for p in problems] == [1]
    assert "'root' before the command is a user name: this is a system crontab line" in (
        problems[0].reason
    )
    entries, problems, _ = crontab.parse(data.split(b"\n", 1)[1], context)
    assert [entry.task.argv for entry in entries] == [(b"backup",)]


def test_it_knows_local_users_that_are_not_programs() -> None:
    from cassini.importing import local_context

    context = local_context()
    assert context.is_user("root")
    assert not context.is_user("ls") and not context.is_user("no-such-user-xyz")
    assert context.zone_exists("Europe/Paris") and not context.zone_exists("Mars/Olympus")


# --- export of whole tasks ------------------------------------------------------------


def whole(task_id: int, line: str, argv: tuple[bytes, ...], **extras: object) -> TaskEntry:
    zone = str(extras.pop("zone", ""))
    return TaskEntry(task_id, Timing.cron(line, zone), argv, Extras(**extras))  # type: ignore[arg-type]


def test_it_exports_settings_only_where_they_change() -> None:
    tasks = [
        whole(0, "0 3 1 * *", (b"certbot", b"renew")),
        whole(1, "*/15 * * * 1-5", (b"/bin/sh", b"-c", b"cd /srv && make"), env=((b"A", b"1"),)),
        whole(2, "@reboot", (b"/bin/sh", b"-c", b"exec x"), env=((b"A", b"1"),), mailto=b""),
        whole(
            3,
            "0 0 1-7 * 5",
            (b"cat",),
            env=((b"A", b"2"), (b"B", b" b ")),
            mailto=b"",
            stdin=b"x%y\n",
        ),
        whole(
            4,
            "0 9 * * *",
            (b"ls",),
            env=((b"A", b"2"), (b"B", b" b ")),
            mailto=b"",
            zone="Asia/Tokyo",
        ),
        whole(5, "0 9 * * *", (b"echo", b"x"), env=((b"A", b"2"), (b"B", b" b ")), mailto=b""),
    ]
    text, problems = cronwrite.export(tasks)
    assert problems == []
    assert text == HEADER + (
        b"0 3 1 * * certbot renew\n"
        b"A=1\n"
        b"*/15 * * * 1-5 cd /srv && make\n"
        b'MAILTO=""\n'
        b"@reboot exec x\n"
        b"A=2\n"
        b'B=" b "\n'
        b"0 0 1-7 * 5 cat%x\\%y\n"
        b"CRON_TZ=Asia/Tokyo\n"
        b"0 9 * * * ls\n"
        b'CRON_TZ=""\n'
        b"0 9 * * * exec echo x\n"
    )
    assert tasks_of(text) == [task.task for task in tasks]


def test_it_writes_a_shells_command_with_its_shell() -> None:
    bash = ((b"SHELL", b"/bin/bash"),)
    tasks = [
        whole(0, "@daily", (b"/bin/bash", b"-c", b"ls")),  # no SHELL set: the argv
        whole(1, "@daily", (b"/bin/bash", b"-c", b"ls [a]"), env=bash),
        whole(2, "@daily", (b"/bin/sh", b"-c", b"echo hi")),
        whole(3, "@daily", (b"ls", b"-l"), env=bash),  # bash would read the words
    ]
    text, problems = cronwrite.export(tasks)
    assert text.split(b"\n")[1:] == [
        b"0 0 * * * /bin/bash -c ls",
        b"0 0 * * * echo hi",
        b"SHELL=/bin/bash",
        b"0 0 * * * ls [a]",
        b"# task 3 is not exported: no crontab line makes cron run it the same way",
        b"",
    ]
    assert tasks_of(text) == [tasks[i].task for i in (0, 2, 1)]
    assert problems == ["task 3 is not exported: no crontab line makes cron run it the same way"]


def test_it_orders_tasks_so_no_variable_must_be_unset() -> None:
    tasks = [
        whole(0, "@daily", (b"a",), env=((b"X", b"1"),)),
        whole(1, "@daily", (b"b",)),
        whole(2, "@daily", (b"c",), env=((b"Y", b"1"),)),
        whole(3, "@daily", (b"d",), mailto=b"me"),
        whole(4, "@daily", (b"e",), env=((b"X", b"1"),), mailto=None),
    ]
    text, skipped = cronwrite.export_tasks(tasks)
    assert [(task.task_id, reason.split(" (")[0]) for task, reason in skipped] == [
        (2, "its environment variables cannot follow the earlier lines'"),
        (3, "its environment variables cannot follow the earlier lines'"),
    ]  # rather than 0, 2 and 4 in the other order
    assert sorted(tasks_of(text), key=lambda t: t.argv) == [tasks[i].task for i in (0, 1, 4)]


def test_it_exports_standard_input_that_cron_gives_back() -> None:
    for stdin in [b"a\n", b"a\n\n", b"\n", b"%\n", b"\\%\n", b"a\\b\n", b"a\\\n", b"x\ny\n", b"\\"]:
        task = whole(0, "@daily", (b"cat",), stdin=stdin)
        text, problems = cronwrite.export([task])
        assert problems == [] and tasks_of(text) == [task.task], stdin
    for stdin in [b"no newline", b"\\\n"]:
        text, problems = cronwrite.export([whole(7, "@daily", (b"cat",), stdin=stdin)])
        assert problems == ["task 7 is not exported: no text after a % gives its standard input"]


_NAMES = st.sampled_from([b"A", b"PATH", b"SHELL", b"HOME", b"X Y"])
_VALUES = st.binary(max_size=6).filter(lambda b: b"\n" not in b and b"\0" not in b)
# (Backslashes before a newline have forms cron cannot give: see the test above.)
_STDIN = st.binary(max_size=8).filter(lambda b: b"\0" not in b and b"\\" not in b)
_STDIN = _STDIN.map(lambda b: b + b"\n")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["@reboot", "0 3 1 * *", "*/5 8-18 * * 1-5", "0 20 1-7 * 5", "0 0 * 2 *"]
            ),
            st.sampled_from([(b"ls", b"-l"), (b"echo", b"%"), (b"/bin/sh", b"-c", b"a && b")]),
            st.dictionaries(_NAMES, _VALUES, max_size=3),
            st.one_of(st.just(b""), _STDIN),
            st.sampled_from([None, b"", b"me"]),
            st.sampled_from(["", "Europe/Paris"]),
        ),
        max_size=4,
    )
)
@settings(max_examples=300, deadline=None)
def test_it_round_trips_whole_tasks_or_says_why_not(specs: list[tuple[object, ...]]) -> None:
    tasks = [
        TaskEntry(i, Timing.cron(line, zone), argv, Extras(tuple(env.items()), stdin, mailto))  # type: ignore[arg-type]
        for i, (line, argv, env, stdin, mailto, zone) in enumerate(specs)
    ]
    text, skipped = cronwrite.export_tasks(tasks)
    exported = {task.task_id for task in tasks} - {task.task_id for task, _ in skipped}
    back = tasks_of(text)
    assert sorted(back, key=repr) == sorted(
        (t.task for t in tasks if t.task_id in exported), key=repr
    )
    # What is left out is left out for a reason cron imposes, never when alone.
    for task, _ in skipped:
        _, problems = cronwrite.export([task])
        assert problems == [] or b"SHELL" in b"".join(n for n, _ in task.extras.env)
