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

from cassini import crontab
from cassini.crontab import HEADER, Problem
from saturnd.protocol import CreateRequest, TaskEntry
from saturnd.timing import Timing
from tests.daemon_harness import CASSINI, Daemon
from tests.fake_daemon import Exchange, FakeDaemon, make_pipes

MakeDaemon = Callable[..., Daemon]

ALL = Timing()


def task(task_id: int, argv: tuple[bytes, ...], timing: Timing = ALL) -> TaskEntry:
    return TaskEntry(task_id, timing, argv)


def requests(data: bytes) -> list[tuple[Timing, tuple[bytes, ...]]]:
    """What `parse` makes of `data`, which must have no refused line."""
    entries, problems = crontab.parse(data)
    assert problems == []
    result = []
    for entry in entries:
        assert isinstance(entry.request, CreateRequest)
        result.append((entry.request.timing, entry.request.argv))
    return result


# --- export ----------------------------------------------------------------------------


def test_it_exports_tasks_as_crontab_lines() -> None:
    tasks = [
        task(0, (b"echo", b"test-1"), Timing.parse("0", "9,14", "3")),
        task(1, (b"toto.sh",), Timing.parse("0-2,5,10")),
        task(7, (b"sh", b"-c", b"echo 50% > /tmp/x"), Timing.parse("*/15", "*", "1-5")),
    ]
    text, problems = crontab.export(tasks)
    assert text == HEADER + (
        b"0 9,14 * * 3 echo test-1\n"
        b"0-2,5,10 * * * * toto.sh\n"
        b"0,15,30,45 * * * 1-5 sh -c 'echo 50\\% > /tmp/x'\n"
    )
    assert problems == []


def test_it_exports_nothing_but_the_header_for_no_task() -> None:
    assert crontab.export([]) == (HEADER, [])


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
    text, _ = crontab.export([task(0, argv)])
    assert text == HEADER + b"* * * * * " + line + b"\n"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (task(4, (b"x",), Timing(0, 1, 1)), "it never runs"),
        (task(4, (b"x",), Timing(1, 1, 0)), "it never runs"),
        (task(4, (b"printf", b"a\nb")), "an argument holds a newline"),
        (task(4, (b"x", b"a\0b")), "an argument holds a NUL byte"),
    ],
)
def test_it_names_the_tasks_it_cannot_export(entry: TaskEntry, reason: str) -> None:
    text, problems = crontab.export([task(1, (b"a",)), entry, task(9, (b"b",))])
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
    text, problems = crontab.export([task(0, args, Timing.parse("30", "2", "*"))])
    assert problems == []
    line = text.split(b"\n")[1] + b"\n"
    done = subprocess.run([shell, "-c", _cron_command(line)], capture_output=True, check=True)
    assert done.stdout.split(b"\0")[:-1] == list(TRICKY)


def test_it_reads_back_what_it_exports() -> None:
    tasks = [
        task(i, (b"cmd", arg, arg + b"!"), Timing.parse(str(i))) for i, arg in enumerate(TRICKY)
    ]
    text, _ = crontab.export(tasks)
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
    text, problems = crontab.export(tasks)
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
        b"5 4 * * 7 printf '\\%s\\n' \"it's\" 100\\% 'a b'\\ c\n"
        b"  1 2 * * sun,sat x a#b 'x;y' \"\\\\\" \\*\n"
        b"0 0 * * * trailing   \r\n"
        b"0 0 * * * caf\xc3\xa9 \xff"  # no newline at the end
    )
    assert requests(data) == [
        (Timing.parse("0", "9", "3"), (b"echo", b"test-1")),
        (Timing.parse("*/15", "8-18", "1-5"), (b"/usr/bin/backup", b"--quiet")),
        (Timing.parse("0", "*", "*"), (b"date",)),
        (Timing.parse("0", "0", "*"), (b"x",)),
        (Timing.parse("0", "0", "*"), (b"x",)),
        (Timing.parse("0", "0", "0"), (b"x",)),
        (Timing.parse("5", "4", "0"), (b"printf", b"%s\\n", b"it's", b"100%", b"a b c")),
        (Timing.parse("1", "2", "0,6"), (b"x", b"a#b", b"x;y", b"\\", b"*")),
        (Timing.parse("0", "0", "*"), (b"trailing",)),
        (Timing.parse("0", "0", "*"), (b"caf\xc3\xa9", b"\xff")),
    ]


def test_it_imports_a_crontab_with_crlf_line_ends() -> None:
    data = b"# made elsewhere\r\n\r\n@hourly date\r\n0 9 * * 3 echo 'a\rb'\r\n"
    assert [argv for _, argv in requests(data)] == [(b"date",), (b"echo", b"a\rb")]


def test_it_imports_an_empty_crontab() -> None:
    assert crontab.parse(b"") == ([], [])
    assert requests(b"# nothing\n\n") == []


REFUSED = [
    # (line, a piece of the reason)
    (b"0 9 1 * * x", "the day of month field is '1', not '*'"),
    (b"0 9 * 12 * x", "the month field is '12', not '*'"),
    (b"0 9 */2 * * x", "day of month"),
    (b"0 9 * jan * x", "month"),
    (b"@reboot x", "@reboot is not supported"),
    (b"@monthly x", "@monthly runs on a day of the month"),
    (b"@yearly x", "@yearly runs on a day of the month"),
    (b"@annually x", "@annually runs on a day of the month"),
    (b"@every_minute x", "unknown special time '@every_minute'"),
    (b"@hourly", "@hourly needs a command"),
    (b"@daily   ", "@daily needs a command"),
    (b"MAILTO=me@example.org", "environment settings (NAME=value) are not supported"),
    (b"PATH = /bin:/usr/bin", "environment settings"),
    (b'"SHELL"=/bin/bash', "environment settings"),
    (b"0 9 * * 3", "expected five time fields and a command"),
    (b"0 9 * *", "expected five time fields"),
    (b"0 9 * * * * x", "the command starts with '*'"),
    (b"60 9 * * * x", "invalid minutes field '60': 60 is out of range 0-59"),
    (b"0 24 * * * x", "invalid hours field '24'"),
    (b"0 9 * * 8 x", "invalid day-of-week field '8'"),
    (b"0 9 * * fun x", "invalid day-of-week field 'fun'"),
    (b"5-3 9 * * * x", "goes backwards"),
    (b"0 9 * * * echo 50%", "standard-input separator"),
    (b"0 9 * * * mail -s hi me%body%", "'%'"),
    (b"0 9 * * * x '%'", "'%'"),  # cron does not know sh's quotes
    (b"0 9 * * * x \\\\%", "'%'"),  # a backslash escapes the backslash, not the %
    (b"0 9 * * * x 'open", "cannot split the command: no closing quotation"),
    (b"0 9 * * * x \\", "cannot split the command: no escaped character"),
    (b"0 9 * * * ''", "the command's name is empty"),
    (b"0 9 * * * x \0", "NUL byte"),
    (b"-0 9 * * * x", "invalid minutes field"),
]


@pytest.mark.parametrize(("line", "reason"), REFUSED, ids=lambda v: repr(v)[:40])
def test_it_refuses_what_saturnd_cannot_do(line: bytes, reason: str) -> None:
    entries, problems = crontab.parse(b"# first\n0 * * * * fine\n" + line + b"\n@daily ok\n")
    assert entries == []
    assert len(problems) == 1 and problems[0].line == 3
    assert reason in problems[0].reason
    assert "\n" not in problems[0].reason


def test_it_refuses_every_bad_line_with_its_number() -> None:
    lines = [b"# a crontab"] + [line for line, _ in REFUSED] + [b"@hourly fine"]
    entries, problems = crontab.parse(b"\n".join(lines))
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
    assert daemon.cassini("-l").stdout == b"0: 0 * * date\n1: 0 9 3 echo test-1\n"


def test_it_creates_nothing_when_a_line_is_refused(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    path = tmp_path / "my.crontab"
    path.write_bytes(
        b"MAILTO=me\n"
        b"0 9 * * 3 echo fine\n"
        b"@reboot start-me\n"
        b"0 0 1 * * monthly\n"
        b"0 9 * * * echo 50% > /tmp/x\n"
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
    result = daemon.cassini("--import", "-", input=b"\n\n@reboot x\n", check=False)
    assert result.stderr == (
        b"cassini: <stdin>:3: @reboot is not supported: saturnd runs tasks at times of day, "
        b"not at start-up\ncassini: nothing imported: 1 line was refused\n"
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
        b"* * * * * echo one\n"
        b"# task 1 is not exported: an argument holds a newline, which a crontab line cannot\n"
        b"* * * * * echo three\n"
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
]


@pytest.mark.parametrize("line", SHELL_LINES)
def test_it_imports_a_command_that_needs_a_shell_as_cron_runs_it(line: bytes) -> None:
    entries, problems = crontab.parse(line + b"\n")
    assert problems == [] and len(entries) == 1
    command = line.split(b" ", 5)[5]
    assert entries[0].request.argv == (b"/bin/sh", b"-c", command)
