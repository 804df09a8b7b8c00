"""`saturnd --install-unit`: the unit's text, its quoting, where and how it is written,
and systemd's own verdict on it (`systemd-analyze verify`)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from saturnd import unit
from saturnd.unit import UnitError
from tests.daemon_harness import SATURND


@pytest.fixture(autouse=True)
def _no_pipes_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite's isolation sets SATURND_PIPES_DIR, which --install-unit pins into the
    # unit as -p; these tests are about the unit written without it.
    monkeypatch.delenv("SATURND_PIPES_DIR", raising=False)


ROOT = Path(__file__).resolve().parent.parent


# --- the text ------------------------------------------------------------------------


def test_it_writes_the_unit_the_issue_asks_for() -> None:
    text = unit.unit_text(["/opt/venv/bin/saturnd", "-f", "-s", "/home/u/state"])
    assert text == (
        "# Written by `saturnd --install-unit`; `saturnd --install-unit --force` rewrites it.\n"
        "[Unit]\n"
        "Description=saturnd, a per-user cron daemon\n"
        "Documentation=man:saturnd(1) man:cassini(1)\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "ExecStart=/opt/venv/bin/saturnd -f -s /home/u/state\n"
        "Restart=on-failure\n"
        "# Stop the daemon only: runs already started finish and are recorded (as cronie).\n"
        "KillMode=process\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("-f", "-f"),
        ("/home/u/state", "/home/u/state"),
        ("/home/u/my state", '"/home/u/my state"'),
        ("/tmp/100%", '"/tmp/100%%"'),
        ("/tmp/$HOME", '"/tmp/$$HOME"'),
        ('/tmp/a"b', '"/tmp/a\\"b"'),
        ("/tmp/a\\b", '"/tmp/a\\\\b"'),
        ("/tmp/a'b", '"/tmp/a\'b"'),
        ("/tmp/été", '"/tmp/été"'),
        ("", '""'),
        (";", "\\;"),
    ],
)
def test_it_quotes_arguments_for_systemd(word: str, quoted: str) -> None:
    assert unit.quote_argument(word) == quoted


@pytest.mark.parametrize("word", ["/tmp/a\nb", "/tmp/a\tb", "/tmp/\x7f", "/tmp/\udcff"])
def test_it_refuses_what_a_unit_file_cannot_hold(word: str) -> None:
    with pytest.raises(UnitError):
        unit.quote_argument(word)
    with pytest.raises(UnitError):
        unit.quote_program(word)


def test_it_quotes_the_program_the_way_systemd_reads_it() -> None:
    assert unit.quote_program("/usr/bin/saturnd") == "/usr/bin/saturnd"
    assert unit.quote_program("/opt/my tools/saturnd") == '"/opt/my tools/saturnd"'
    # Specifiers apply to the program too; variables do not.
    assert unit.quote_program("/opt/100%/saturnd") == '"/opt/100%%/saturnd"'
    assert unit.quote_program("/opt/$x/saturnd") == '"/opt/$x/saturnd"'
    for bad in ("saturnd", "bin/saturnd", '/opt/a"b/saturnd', "/opt/a\\b/saturnd"):
        with pytest.raises(UnitError):
            unit.quote_program(bad)


def test_it_puts_the_unit_where_systemd_looks() -> None:
    home = Path("/home/u")
    assert unit.unit_dir({}, home) == Path("/home/u/.config/systemd/user")
    assert unit.unit_dir({"XDG_CONFIG_HOME": "/cfg"}, home) == Path("/cfg/systemd/user")
    # A relative XDG_CONFIG_HOME is invalid and ignored (XDG Base Directory spec).
    assert unit.unit_dir({"XDG_CONFIG_HOME": "cfg"}, home) == Path("/home/u/.config/systemd/user")


def test_it_runs_the_saturnd_it_was_started_as(tmp_path: Path) -> None:
    assert unit.saturnd_program(SATURND, sys.executable) == [SATURND]
    main = str(ROOT / "saturnd" / "__main__.py")
    assert unit.saturnd_program(main, "/opt/py/bin/python3") == [
        "/opt/py/bin/python3",
        "-m",
        "saturnd",
    ]
    link = tmp_path / "saturnd"
    link.symlink_to(SATURND)  # a link (pipx, ~/bin) is kept, not resolved
    assert unit.saturnd_program(str(link), sys.executable) == [str(link)]


def test_it_tells_the_exact_next_commands() -> None:
    path = Path("/home/u/.config/systemd/user/saturnd.service")
    text = unit.next_steps(path, True, "u", None, "cassini -q")
    assert text.splitlines() == [
        f"wrote {path}",
        "To start saturnd now and at every login:",
        "  systemctl --user daemon-reload && systemctl --user enable --now saturnd.service",
        "To keep it running while you are logged out (and start it at boot):",
        "  loginctl enable-linger u",
        "Then check it with `saturnd status` or `systemctl --user status saturnd.service`.",
    ]
    again = unit.next_steps(path, False, "u", 42, "cassini -q -p /x")
    assert f"{path} is already up to date" in again
    assert "(pid 42)" in again and "cassini -q -p /x" in again


# --- writing --------------------------------------------------------------------------


def test_it_writes_once_and_overwrites_only_with_force(tmp_path: Path) -> None:
    directory = tmp_path / "config" / "systemd" / "user"
    path = directory / unit.UNIT_NAME
    text = unit.unit_text(["/usr/bin/saturnd", "-f"])
    assert unit.install_unit(directory, text, force=False) is True
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    inode = path.stat().st_ino
    assert unit.install_unit(directory, text, force=False) is False
    assert path.stat().st_ino == inode  # identical: left alone

    other = unit.unit_text(["/usr/bin/saturnd", "-f", "-s", "/elsewhere"])
    with pytest.raises(UnitError, match="exists and differs; use --force"):
        unit.install_unit(directory, other, force=False)
    assert path.read_text() == text
    assert unit.install_unit(directory, other, force=True) is True
    assert path.read_text() == other
    assert sorted(p.name for p in directory.iterdir()) == [unit.UNIT_NAME]  # no temporaries


def test_it_fails_in_one_line_when_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "config"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(UnitError, match="cannot write in"):
        unit.install_unit(blocker / "systemd" / "user", "x\n", force=False)


def test_it_knows_a_daemon_that_systemd_started() -> None:
    assert unit.started_by_systemd(os.getpid()) is False
    assert unit.started_by_systemd(2**22 + 1) is False  # no such process


# --- is systemd there? -------------------------------------------------------------------

_FAKE_SYSTEMCTL = """#!/bin/sh
# A stand-in for systemctl: a machine {state}.
case "$*" in
is-system-running)
    if [ {state} = offline ]; then echo offline; exit 1; fi
    echo degraded; exit 1 ;;
"--user show-environment")
    if [ {state} = no-user-manager ]; then
        echo "Failed to connect to bus: No medium found" >&2; exit 1
    fi
    echo PATH=/usr/bin ;;
*) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def _systemctl(tmp_path: Path, state: str) -> str:
    """A directory to put first in PATH, whose systemctl describes a machine `state`:
    running (degraded, as many are), offline (no systemd), no-user-manager, absent."""
    directory = tmp_path / f"bin-{state}"
    directory.mkdir(exist_ok=True)
    if state != "absent":
        program = directory / "systemctl"
        program.write_text(_FAKE_SYSTEMCTL.format(state=state))
        program.chmod(0o755)
    return str(directory)


def test_it_asks_systemctl_whether_a_user_unit_can_work(tmp_path: Path) -> None:
    probe = unit.probe_systemd
    assert probe(_systemctl(tmp_path, "running")) == unit.SystemdState(True, None)
    assert probe(_systemctl(tmp_path, "no-user-manager")) == unit.SystemdState(
        True, "Failed to connect to bus: No medium found"
    )
    assert probe(_systemctl(tmp_path, "offline")) == unit.SystemdState(
        False, "systemctl is-system-running: offline"
    )
    assert probe(_systemctl(tmp_path, "absent")) == unit.SystemdState(
        False, "systemctl is not installed"
    )


def test_it_gives_the_readme_profile_line() -> None:
    line = unit.profile_line(())
    assert f"\n{line}\n" in (ROOT / "README.md").read_text()
    as_roff = line.replace("-", "\\-")
    assert f"\n{as_roff}\n" in (ROOT / "man" / "saturnd.1").read_text()
    assert unit.profile_line(["-s", "/my state"]) == (
        "command -v saturnd >/dev/null && "
        "{ saturnd -s '/my state' status >/dev/null || saturnd -s '/my state'; }"
    )


# --- the command ------------------------------------------------------------------------


def _install(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, systemd: str = "running"
) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.pop("XDG_STATE_HOME", None)
    environment["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    environment["PATH"] = _systemctl(tmp_path, systemd) + os.pathsep + environment["PATH"]
    environment.update(env or {})
    return subprocess.run(
        [SATURND, *args, "--install-unit"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=environment,
    )


def _exec_start(tmp_path: Path) -> str:
    text = (tmp_path / "config" / "systemd" / "user" / unit.UNIT_NAME).read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def test_it_installs_the_unit_from_the_command_line(tmp_path: Path) -> None:
    result = _install(tmp_path, "-p", "pipes", "-s", "state")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "config" / "systemd" / "user" / unit.UNIT_NAME
    assert result.stdout.startswith(f"wrote {path}\n")
    assert "systemctl --user daemon-reload && systemctl --user enable --now" in result.stdout
    assert "loginctl enable-linger " in result.stdout
    # Relative directories are made absolute: systemd starts it in another directory.
    assert _exec_start(tmp_path) == f"{SATURND} -f -p {tmp_path}/pipes -s {tmp_path}/state"

    again = _install(tmp_path, "-p", "pipes", "-s", "state")
    assert again.returncode == 0 and "already up to date" in again.stdout

    other = _install(tmp_path, "-s", "other")
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr.count("\n") == 1 and "--force" in other.stderr
    assert "Traceback" not in other.stderr
    forced = _install(tmp_path, "-s", "other", "--force")
    assert forced.returncode == 0
    assert _exec_start(tmp_path) == f"{SATURND} -f -s {tmp_path}/other"


def test_it_pins_a_state_directory_set_by_the_environment(tmp_path: Path) -> None:
    # The systemd user manager may not have this variable: the unit says it outright.
    result = _install(tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert result.returncode == 0, result.stderr
    assert _exec_start(tmp_path) == f"{SATURND} -f -s {tmp_path}/xdg/saturnd"
    plain = _install(tmp_path, "--force")
    assert _exec_start(tmp_path) == f"{SATURND} -f"
    assert plain.returncode == 0


@pytest.mark.parametrize("systemd", ["offline", "absent"])
def test_it_writes_no_unit_where_systemd_does_not_run(tmp_path: Path, systemd: str) -> None:
    environment = {"PATH": _systemctl(tmp_path, systemd)}  # nothing else: no systemctl
    result = _install(tmp_path, env=environment, systemd=systemd)
    assert result.returncode == 1
    assert result.stderr.startswith("saturnd: systemd is not running on this machine (")
    assert result.stderr.endswith("); no unit written\n") and result.stderr.count("\n") == 1
    assert result.stdout.splitlines() == [
        "To start saturnd at every login, add this line at the end of ~/.profile",
        "(or of ~/.bash_profile if you have one):",
        f"  {unit.profile_line(())}",
        "and start it now with: saturnd",
    ]
    assert "systemctl" not in result.stdout
    assert not (tmp_path / "config").exists()
    given = _install(tmp_path, "-s", "my state", env=environment, systemd=systemd)
    assert f"  {unit.profile_line(['-s', str(tmp_path / 'my state')])}\n" in given.stdout


def test_it_writes_the_unit_when_only_the_user_manager_is_out_of_reach(tmp_path: Path) -> None:
    # su, sudo, some ssh sessions: the manager will read the unit at the next login.
    result = _install(tmp_path, "-p", "pipes", systemd="no-user-manager")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "config" / "systemd" / "user" / unit.UNIT_NAME).exists()
    lines = result.stdout.splitlines()
    assert lines[1] == (
        "note: systemctl --user cannot reach your user manager now "
        "(Failed to connect to bus: No medium found)."
    )
    assert f"      {unit.profile_line(['-p', str(tmp_path / 'pipes')])}" in lines
    assert (
        "  systemctl --user daemon-reload && systemctl --user enable --now saturnd.service" in lines
    )


def test_it_refuses_the_test_clock_in_a_unit(tmp_path: Path) -> None:
    result = _install(tmp_path, "--clock", "x")
    assert result.returncode == 2 and "--clock" in result.stderr
    assert not (tmp_path / "config").exists()


# --- systemd's verdict ------------------------------------------------------------------


def _verify(unit_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze --user verify` on one file, offline.

    It needs no running manager or D-Bus, only a runtime directory of its own. It
    checks the syntax and every setting, that ExecStart's program exists and is
    executable, and (with `man` installed) that the Documentation= pages exist: we give
    it ours through MANPATH, laid out as `man1/`.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_LEVEL="notice")
    options = ["--man=no"]
    if shutil.which("man"):
        pages = tmp_path / "man" / "man1"
        pages.mkdir(parents=True, exist_ok=True)
        for page in ("saturnd.1", "cassini.1"):
            shutil.copy(ROOT / "man" / page, pages / page)
        env["MANPATH"] = str(tmp_path / "man")
        options = ["--man=yes"]
    return subprocess.run(
        [analyze, "--user", "verify", *options, str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )


def test_systemd_accepts_the_installed_unit(tmp_path: Path) -> None:
    # A program path with a space and a specifier character, to check their quoting.
    odd = tmp_path / "my tools 100%"
    odd.mkdir()
    (odd / "saturnd").symlink_to(SATURND)
    result = subprocess.run(
        [str(odd / "saturnd"), "-s", "my state", "--install-unit"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=dict(
            os.environ,
            XDG_CONFIG_HOME=str(tmp_path / "config"),
            PATH=_systemctl(tmp_path, "running") + os.pathsep + os.environ["PATH"],
        ),
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "config" / "systemd" / "user" / unit.UNIT_NAME
    assert f'ExecStart="{odd}%/saturnd" -f -s "{tmp_path}/my state"\n' in path.read_text()
    verdict = _verify(path, tmp_path)
    assert (verdict.returncode, verdict.stdout + verdict.stderr) == (0, "")


def test_systemd_analyze_does_catch_a_broken_unit_here(tmp_path: Path) -> None:
    """The check above is alive: the same call rejects a unit with mistakes."""
    broken = tmp_path / unit.UNIT_NAME
    text = unit.unit_text([str(tmp_path / "missing" / "saturnd"), "-f"])
    broken.write_text(text.replace("KillMode=process", "KillMode=proces"))
    verdict = _verify(broken, tmp_path)
    assert verdict.returncode != 0
    assert "kill mode" in verdict.stderr and "missing/saturnd" in verdict.stderr
