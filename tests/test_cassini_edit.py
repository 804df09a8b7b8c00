"""`cassini --edit` against a real saturnd, with EDITOR a script that edits the file.

Like `crontab -e`: the export in a private file, refused lines sent back into the editor
with the reasons on top, an unchanged file is "no changes", and what changed is applied
like --replace (unchanged lines keep their ids and histories).
"""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from cassini import edit
from cassini.crontab import Problem
from tests.conftest import NOW
from tests.daemon_harness import CASSINI, Daemon, wait_for

MakeDaemon = Callable[..., Daemon]


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _edit(daemon: Daemon, editor: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CASSINI, "-p", str(daemon.pipes), "--edit"],
        env={**daemon.env, "VISUAL": "", "EDITOR": editor, **env},
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_it_puts_the_reasons_on_top_numbered_as_the_lines_below_them() -> None:
    data = b"@daily a\n61 * * * * b\n"
    shown = edit.with_reasons(data, [Problem(2, "invalid minutes")])
    assert shown == (
        b"# cassini: some lines were refused; correct or delete them, then save\n"
        b"# cassini: line 4: invalid minutes\n" + data
    )
    assert shown.split(b"\n")[3] == b"61 * * * * b"
    assert edit.without_reasons(shown) == data


def test_it_keeps_the_ids_and_histories_of_unchanged_lines(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    kept = daemon.create("-m", "*", "/bin/true", "kept")
    changed = daemon.create("-m", "*", "/bin/true", "old")
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(daemon.runs(kept)) == len(daemon.runs(changed)) == 1, what="runs")
    editor = _script(tmp_path / "ed", 'sed -i \'s/old/new/; $a MAILTO=""\\n@reboot exec x\' "$1"\n')
    done = _edit(daemon, editor)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"2\n3\n"
    assert done.stderr == b"cassini: 2 created, 1 kept, 1 removed\n"
    assert daemon.cassini("-l").stdout.startswith(
        b"0: * * * /bin/true kept\n2: * * * /bin/true new\n"
    )
    assert len(daemon.runs(kept)) == 1
    assert b'MAILTO=""\n@reboot exec x\n' in daemon.cassini("--export").stdout


def test_it_changes_nothing_for_an_unchanged_file(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("echo", "a")
    done = _edit(daemon, "true")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"cassini: no changes\n")


def test_it_edits_a_private_file_and_removes_it(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    record = tmp_path / "modes"
    editor = _script(tmp_path / "ed", f'stat -c "%a %n" "$1" "$(dirname "$1")" > {record}\n')
    assert _edit(daemon, editor).returncode == 0
    (file_mode, _), (dir_mode, directory) = [
        line.split(" ", 1) for line in record.read_text().splitlines()
    ]
    assert (file_mode, dir_mode) == ("600", "700")
    assert not Path(directory).exists()  # removed on the way out


def test_it_sends_the_user_back_with_the_reasons_of_refused_lines(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("-m", "0", "/bin/true", "a")
    seen = tmp_path / "seen"
    # First call: add a bad line. Second: keep what it was shown, and fix the line.
    editor = _script(
        tmp_path / "ed",
        f'if [ -e {seen} ]; then cp "$1" {seen}.2; sed -i "s/^61 /1 /" "$1"\n'
        f'else touch {seen}; echo "61 * * * * /bin/true b" >> "$1"; fi\n',
    )
    done = _edit(daemon, editor)
    assert done.returncode == 0, done.stderr
    shown = (tmp_path / "seen.2").read_bytes().split(b"\n")
    assert shown[0].startswith(b"# cassini: some lines were refused")
    assert shown[1] == b"# cassini: line 5: invalid minutes field '61': 61 is out of range 0-59"
    assert shown[4] == b"61 * * * * /bin/true b"
    assert done.stderr == (
        b"cassini: 1 line was refused: back to the editor\ncassini: 1 created, 1 kept, 0 removed\n"
    )
    assert daemon.cassini("-l").stdout == b"0: 0 * * /bin/true a\n1: 1 * * /bin/true b\n"


def test_it_abandons_the_edit_when_refused_lines_stay(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("-m", "0", "/bin/true", "a")
    seen = tmp_path / "seen"
    editor = _script(
        tmp_path / "ed",
        f'[ -e {seen} ] || {{ touch {seen}; echo "@daily a" >> "$1"; echo "@often b" >> "$1"; }}\n',
    )
    done = _edit(daemon, editor)
    assert done.returncode == 1
    assert done.stderr.endswith(b"cassini: the refused lines were not corrected: nothing changed\n")
    assert daemon.cassini("-l").stdout == b"0: 0 * * /bin/true a\n"


def test_it_changes_nothing_when_the_editor_fails(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("-m", "0", "/bin/true", "a")
    editor = _script(tmp_path / "ed", 'echo "@daily more" >> "$1"; exit 3\n')
    done = _edit(daemon, editor)
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr == b"cassini: the editor failed (exit status 3): nothing changed\n"
    assert daemon.cassini("-l").stdout == b"0: 0 * * /bin/true a\n"


def test_it_runs_an_editor_command_with_words(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    done = _edit(daemon, "", VISUAL="sed -i '$a @hourly /bin/true v'")
    assert done.returncode == 0, done.stderr
    assert daemon.cassini("-l").stdout == b"0: 0 * * /bin/true v\n"


def test_it_says_so_when_no_daemon_answers(tmp_path: Path) -> None:
    done = subprocess.run(
        [CASSINI, "-p", str(tmp_path / "none"), "--edit"],
        env={"EDITOR": "true", "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.endswith(b"; nothing changed\n") and done.stderr.count(b"\n") == 1
    assert stat.S_ISDIR((tmp_path).stat().st_mode)


def test_it_leaves_alone_what_it_cannot_show_and_what_others_create(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("-m", "0", "printf", "a\nb")  # no crontab line can hold the newline
    daemon.create("-m", "0", "/bin/true", "gone")
    # The editor deletes every line, while someone else creates a task.
    editor = _script(
        tmp_path / "ed",
        f'{CASSINI} -p {daemon.pipes} -c -m 5 /bin/true other >/dev/null; : > "$1"\n',
    )
    done = _edit(daemon, editor)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().splitlines() == [
        "cassini: warning: task 0 is not in the file and stays: an argument holds a newline, "
        "which a crontab line cannot",
        "cassini: 0 created, 0 kept, 1 removed",
    ]
    assert daemon.cassini("-l").stdout == b"0: 0 * * printf a\\nb\n2: 5 * * /bin/true other\n"
