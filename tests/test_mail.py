"""Mailing a run's output: the pure rules of saturnd.mail, then real runs (spawn_run)
with a sendmail stand-in on the task's PATH that records its argv and its input."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from cassini.transport import exchange
from saturnd.mail import (
    SENDMAILS,
    find_sendmail,
    message,
    recipients,
    sendmail_argv,
    sendmail_choice,
    subject_command,
)
from saturnd.protocol import CreateExRequest, CreateReply
from saturnd.spawn import identity
from saturnd.task import Extras, Task
from saturnd.timing import Timing
from tests.conftest import NOW as START
from tests.daemon_harness import Daemon
from tests.test_spawn import TASK_ID, run, wait_for

ENV = {b"HOME": b"/home/alice", b"PATH": b"/usr/bin:/bin"}


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    directory = tmp_path / f"task_{TASK_ID}"
    directory.mkdir(mode=0o700)
    return directory


def test_it_mails_the_user_when_mailto_is_unset_and_nobody_when_it_is_empty() -> None:
    assert recipients(None, b"alice") == (b"alice",)
    assert recipients(b"", b"alice") == ()
    assert recipients(b"bob@example.org", b"alice") == (b"bob@example.org",)
    assert recipients(b"bob, carol@x.org  dave", b"alice") == (b"bob", b"carol@x.org", b"dave")
    assert recipients(b" , ", b"alice") == ()


def test_it_calls_sendmail_as_cron_does() -> None:
    assert sendmail_argv(b"/usr/sbin/sendmail", [b"-bob"]) == [
        b"/usr/sbin/sendmail",
        b"-FCronDaemon",
        b"-i",
        b"-oem",
        b"--",
        b"-bob",
    ]


def test_it_shows_the_command_as_the_crontab_wrote_it() -> None:
    assert subject_command([b"/bin/sh", b"-c", b"cd /srv && make"]) == b"cd /srv && make"
    assert subject_command([b"echo", b"two words", b""]) == b"echo 'two words' ''"


def test_it_writes_cron_s_headers_then_the_output() -> None:
    text = message(
        b"alice",
        b"box.example.org",
        None,
        [b"/bin/sh", b"-c", b"backup"],
        ENV,
        b"out\nerr\n",
    )
    assert text == (
        b"From: alice (Cron Daemon)\n"
        b"To: alice\n"
        b"Subject: Cron <alice@box> backup\n"
        b"Content-Type: text/plain; charset=UTF-8\n"
        b"Auto-Submitted: auto-generated\n"
        b"X-Cron-Env: <HOME=/home/alice>\n"
        b"X-Cron-Env: <PATH=/usr/bin:/bin>\n"
        b"\n"
        b"out\nerr\n"
    )


def test_it_lets_the_task_choose_the_content_type_but_no_header_breaks_a_line() -> None:
    env = {
        b"CONTENT_TYPE": b"text/plain; charset=ISO-8859-1\nBcc: eve",
        b"CONTENT_TRANSFER_ENCODING": b"8bit",
    }
    text = message(b"alice", b"box", b"bob\r\nBcc: eve", [b"printf", b"a\nb"], env, b"x")
    headers = text.split(b"\n\n", 1)[0].split(b"\n")
    assert b"To: bob Bcc: eve" in headers
    assert b"Content-Type: text/plain; charset=ISO-8859-1 Bcc: eve" in headers
    assert b"Content-Transfer-Encoding: 8bit" in headers
    assert b"Subject: Cron <alice@box> printf 'a b'" in headers
    assert not any(header.startswith(b"Bcc") for header in headers)


def test_it_finds_sendmail_in_fixed_places_then_in_the_task_s_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        (directory / "sendmail").write_text("#!/bin/sh\n")
    (first / "sendmail").chmod(0o644)  # not executable: skipped
    (second / "sendmail").chmod(0o755)
    path = os.fsencode(f"{tmp_path}/none:{first}:{second}")
    assert find_sendmail((), path) == os.fsencode(second / "sendmail")
    fixed = os.fsencode(second / "sendmail")
    assert find_sendmail((b"/nonexistent/sendmail", fixed), b"") == fixed
    assert find_sendmail((), os.fsencode(first)) is None
    assert find_sendmail((), None) is None


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[bytes, Path]:
    """A `sendmail` in a directory of its own that records its argv and its input: (the
    PATH to give a task, the directory where each call leaves `argv.N` and `input.N`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    records = tmp_path / "mails"
    records.mkdir()
    script = bin_dir / "sendmail"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{records}" | wc -l)\n'
        f'printf "%s\\n" "$@" > "{records}/argv.tmp.$n"\n'
        f'cat > "{records}/input.$n"\n'
        f'mv "{records}/argv.tmp.$n" "{records}/argv.$n"\n'
    )
    script.chmod(0o755)
    return os.fsencode(f"{bin_dir}:/usr/bin:/bin"), records


def mails(records: Path) -> list[tuple[list[bytes], bytes]]:
    """The recorded calls: (argv without the program, input)."""
    found = []
    for name in sorted(os.listdir(records)):
        if name.startswith("argv.") and not name.startswith("argv.tmp"):
            number = name.split(".")[1]
            argv = (records / name).read_bytes().splitlines()
            found.append((argv, (records / f"input.{number}").read_bytes()))
    return found


def test_it_mails_a_run_s_output_to_mailto(task_dir: Path, stand_in: tuple[bytes, Path]) -> None:
    path, records = stand_in
    extras = Extras(env=((b"PATH", path),), mailto=b"bob@example.org")
    command = ("/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert run(task_dir, *command, extras=extras, sendmails=()) == (3, b"out\n", b"err\n")
    wait_for(lambda: mails(records), "the mail")
    [(argv, text)] = mails(records)
    assert argv == [b"-FCronDaemon", b"-i", b"-oem", b"--", b"bob@example.org"]
    headers, body = text.split(b"\n\n", 1)
    me = identity().user
    host = os.fsencode(socket.gethostname()).split(b".")[0]
    assert headers.split(b"\n")[:3] == [
        b"From: %s (Cron Daemon)" % me,
        b"To: bob@example.org",
        b"Subject: Cron <%s@%s> echo out; echo err >&2; exit 3" % (me, host),
    ]
    assert b"X-Cron-Env: <PATH=%s>" % path in headers.split(b"\n")
    assert body == b"out\nerr\n"


def test_it_mails_the_user_when_mailto_is_unset(
    task_dir: Path, stand_in: tuple[bytes, Path]
) -> None:
    path, records = stand_in
    extras = Extras(env=((b"PATH", path),))
    assert run(task_dir, "echo", "hi", extras=extras, sendmails=())[0] == 0
    wait_for(lambda: mails(records), "the mail")
    [(argv, text)] = mails(records)
    assert argv[-1] == identity().user
    assert text.endswith(b"\n\nhi\n")


def test_it_mails_nothing_without_output_or_with_an_empty_mailto(
    task_dir: Path, stand_in: tuple[bytes, Path], tmp_path: Path
) -> None:
    path, records = stand_in
    assert run(task_dir, "true", extras=Extras(env=((b"PATH", path),)), sendmails=())[0] == 0
    quiet = Extras(env=((b"PATH", path),), mailto=b"")
    assert run(task_dir, "echo", "hi", extras=quiet, sendmails=())[0] == 0
    # Then one that mails: once its mail is there, the two before would have been too.
    loud = Extras(env=((b"PATH", path),), mailto=b"me")
    assert run(task_dir, "echo", "last", extras=loud, sendmails=())[0] == 0
    wait_for(lambda: mails(records), "the mail")
    [(argv, text)] = mails(records)
    assert argv[-1] == b"me" and text.endswith(b"\n\nlast\n")


def test_it_mails_nothing_without_a_sendmail(task_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    extras = Extras(env=((b"PATH", os.fsencode(f"{empty}:/usr/bin:/bin")),), mailto=b"me")
    # The run is recorded as usual; nothing else happens (nothing to look at but that).
    assert run(task_dir, "echo", "hi", extras=extras, sendmails=()) == (0, b"hi\n", b"")


def test_a_real_daemon_runs_a_task_with_its_variables_input_and_mail(
    make_daemon: Callable[..., Daemon],
    stand_in: tuple[bytes, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, records = stand_in
    # The tests' daemons never mail (conftest); this one uses the stand-in only.
    monkeypatch.setenv("SATURND_SENDMAIL", os.fsdecode(path.split(b":")[0] + b"/sendmail"))
    daemon = make_daemon()
    task = Task(
        Timing.parse("1", "8", "*"),
        (b"/bin/sh", b"-c", b'echo "$GREETING"; cat; echo oops >&2'),
        Extras(
            env=((b"PATH", path), (b"GREETING", b"hello")),
            stdin=b"line one\nline two\n",
            mailto=b"bob@example.org",
        ),
    )
    reply = exchange(str(daemon.pipes), CreateExRequest(task))
    assert isinstance(reply, CreateReply)
    daemon.step_to(START + 60)
    wait_for(lambda: mails(records), "the mail")
    assert daemon.runs(reply.task_id) == [("2026-11-21 08:01:00", 0)]
    output = b"hello\nline one\nline two\n"
    assert daemon.cassini("-o", str(reply.task_id)).stdout == output
    [(argv, text)] = mails(records)
    assert argv[-1] == b"bob@example.org"
    headers, body = text.split(b"\n\n", 1)
    assert b"To: bob@example.org" in headers.split(b"\n")
    assert body == output + b"oops\n"


def test_it_lets_the_daemon_s_environment_choose_the_sendmail() -> None:
    assert sendmail_choice({}) == (SENDMAILS, True)
    assert sendmail_choice({b"SATURND_SENDMAIL": b"/opt/msmtp"}) == ((b"/opt/msmtp",), False)
    assert sendmail_choice({b"SATURND_SENDMAIL": b""}) == ((), False)


def test_a_daemon_whose_environment_says_no_sendmail_mails_nothing(
    task_dir: Path, stand_in: tuple[bytes, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, records = stand_in
    monkeypatch.setenv("SATURND_SENDMAIL", "")
    extras = Extras(env=((b"PATH", path),), mailto=b"me")
    assert run(task_dir, "echo", "hi", extras=extras) == (0, b"hi\n", b"")
    # With the choice given, the stand-in on the task's PATH is used as before.
    monkeypatch.setenv("SATURND_SENDMAIL", os.fsdecode(path.split(b":")[0] + b"/sendmail"))
    assert run(task_dir, "echo", "there", extras=extras)[0] == 0
    wait_for(lambda: mails(records), "the mail")
    [(_argv, text)] = mails(records)
    assert text.endswith(b"\n\nthere\n")
