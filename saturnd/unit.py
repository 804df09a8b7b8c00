"""`saturnd --install-unit`: a systemd user unit that starts the daemon at login.

This module owns the unit's text, where it goes, and writing it there. The text is a
pure function of the command line it runs (`unit_text`), so it is tested without
systemd; `install_unit` only writes.

Rules:
- `Type=simple` running `saturnd -f`: systemd watches the process itself, and the log
  also goes to the journal through standard error.
- `Restart=on-failure`: a crash restarts the daemon; `cassini -q` (exit 0) stops it
  for good, as the user asked.
- `KillMode=process`: stopping or restarting the service signals the supervisor only,
  which stops its listener and executor itself. Runs already started (each in its own
  session, supervised by its own process) finish and are recorded, as with cronie.
- The command line is quoted for systemd (systemd.syntax(7)): `%` is a specifier and
  `$` a variable in arguments, so they are doubled; quotes and backslashes are escaped
  inside double quotes. The program path itself takes no variables and may not contain
  quotes or backslashes at all: such a path is refused with one line, as is any
  control character (a unit file is lines of UTF-8 text).
- Only where systemd can use it: when systemctl is missing or says the machine is
  `offline` (systemd is not the init system: containers, WSL, OpenRC...), nothing
  reads a user unit, so none is written and the `~/.profile` line is given instead.
  When systemd runs but `systemctl --user` cannot reach the user's manager (su, sudo,
  some ssh sessions), the unit is written: the manager reads it at the next login.
  The probes are systemctl's own answers (it checks /run/systemd/system as
  sd_booted(3) does), so that tests can stand in for it through PATH.
- The unit goes to `$XDG_CONFIG_HOME/systemd/user/saturnd.service` (default
  `~/.config/systemd/user/`), mode 0644, written to a temporary file and renamed, so
  systemd never reads half a unit. A different existing file is replaced only with
  `--force`; an identical one is left alone.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "UNIT_NAME",
    "SystemdState",
    "UnitError",
    "install_unit",
    "next_steps",
    "probe_systemd",
    "profile_line",
    "quote_argument",
    "quote_program",
    "saturnd_program",
    "started_by_systemd",
    "unit_dir",
    "unit_text",
]

UNIT_NAME: Final = "saturnd.service"
UNIT_MODE: Final = 0o644

_PLAIN: Final = re.compile(r"[A-Za-z0-9/._+,:@=-]+")
"""Words written as they are: nothing in them means anything to systemd."""
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_NOT_IN_PROGRAM: Final = frozenset("\"'\\")
_PROBE_TIMEOUT: Final = 10.0
"""Seconds for one systemctl call: it may wait for D-Bus, never for long."""


class UnitError(Exception):
    """The unit cannot be made or written (one line, exit status 1)."""


def _check_text(word: str) -> None:
    if _CONTROL.search(word):
        raise UnitError(f"{word!r} contains a control character; it cannot go in a unit file")
    try:
        word.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UnitError(f"{word!r} is not valid UTF-8; it cannot go in a unit file") from error


def quote_argument(word: str) -> str:
    """One argument of ExecStart=, so that systemd passes exactly `word`."""
    _check_text(word)
    if word == ";":
        return "\\;"  # a lone semicolon, even quoted, would separate two command lines
    if _PLAIN.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def quote_program(path: str) -> str:
    """The program of ExecStart=: absolute, specifiers escaped, no variables."""
    _check_text(path)
    if not os.path.isabs(path):
        raise UnitError(f"the program {path!r} is not an absolute path")
    if _NOT_IN_PROGRAM.intersection(path):
        raise UnitError(
            f"systemd cannot run a program whose path contains quotes or backslashes: {path}"
        )
    escaped = path.replace("%", "%%")
    return escaped if _PLAIN.fullmatch(path) else f'"{escaped}"'


def unit_text(command: Sequence[str]) -> str:
    """The unit file running `command` (program first, already ending in `-f`)."""
    if not command:
        raise UnitError("no command to run")
    exec_start = " ".join([quote_program(command[0]), *map(quote_argument, command[1:])])
    return (
        "# Written by `saturnd --install-unit`; `saturnd --install-unit --force` rewrites it.\n"
        "[Unit]\n"
        "Description=saturnd, a per-user cron daemon\n"
        "Documentation=man:saturnd(1) man:cassini(1)\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        "Restart=on-failure\n"
        "# Stop the daemon only: runs already started finish and are recorded (as cronie).\n"
        "KillMode=process\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def unit_dir(environ: Mapping[str, str], home: Path) -> Path:
    """Where systemd looks for the user's own units: `$XDG_CONFIG_HOME/systemd/user`."""
    config = environ.get("XDG_CONFIG_HOME", "")
    # The XDG specification says a relative value is invalid and must be ignored.
    base = Path(config) if os.path.isabs(config) else home / ".config"
    return base / "systemd" / "user"


def saturnd_program(argv0: str, python: str) -> list[str]:
    """The command that starts this very saturnd: the script we were started as, or,
    under `python -m saturnd`, the same interpreter with `-m saturnd`.

    Paths are made absolute but symbolic links are kept: a link that a package manager
    (pipx, ...) maintains stays right after an upgrade, its target may not.
    """
    if os.path.basename(argv0) == "saturnd" and os.path.isfile(argv0) and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    return [os.path.abspath(python), "-m", "saturnd"]


def install_unit(directory: Path, text: str, *, force: bool) -> bool:
    """Write the unit into `directory`; False when an identical one was already there.

    Raises UnitError when a different file is there and `force` is false, or on an
    OS error.
    """
    path = directory / UNIT_NAME
    try:
        existing: str | None = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        existing = None  # nothing there (a non-directory on the way fails below)
    except (OSError, UnicodeDecodeError) as error:
        if not force:
            raise UnitError(
                f"cannot read the existing {path} ({_reason(error)}); use --force to replace it"
            ) from error
        existing = ""
    if existing == text:
        return False
    if existing is not None and not force:
        raise UnitError(f"{path} exists and differs; use --force to replace it")
    try:
        # 0700 for what we create, as the XDG specification asks; existing
        # directories are left as they are.
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{UNIT_NAME}.", dir=directory)
    except OSError as error:
        raise UnitError(f"cannot write in {directory}: {_reason(error)}") from error
    try:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fchmod(stream.fileno(), UNIT_MODE)
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as error:
        raise UnitError(f"cannot write {path}: {_reason(error)}") from error
    return True


def next_steps(
    path: Path,
    written: bool,
    user: str,
    running_pid: int | None,
    stop_command: str,
    manager_problem: str | None = None,
    options: Sequence[str] = (),
) -> str:
    """What to tell the user after `install_unit`: the exact commands to run next.

    `manager_problem`: why `systemctl --user` cannot reach the user manager now, if it
    cannot; `options`: the -p/-s of the unit, for the `~/.profile` alternative then."""
    lines = [f"wrote {path}" if written else f"{path} is already up to date"]
    if manager_problem is not None:
        lines += [
            f"note: systemctl --user cannot reach your user manager now ({manager_problem}).",
            "      Run the commands below from a login session of yours (not su or sudo);",
            "      or, without systemd, add this line at the end of ~/.profile:",
            f"      {profile_line(options)}",
        ]
    if running_pid is not None:
        lines += [
            f"note: a saturnd is running now (pid {running_pid}), not started by systemd;",
            f"      stop it first ({stop_command}), or systemd's one will find it and exit.",
        ]
    lines += [
        "To start saturnd now and at every login:",
        "  systemctl --user daemon-reload && systemctl --user enable --now saturnd.service",
        "To keep it running while you are logged out (and start it at boot):",
        f"  loginctl enable-linger {user}",
        "Then check it with `saturnd status` or `systemctl --user status saturnd.service`.",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SystemdState:
    """What systemd can do for us here: `running` (systemd is the init system) and,
    when it is, `reason`, why `systemctl --user` cannot reach the user manager (None
    when it can). When it is not running, `reason` says how we know."""

    running: bool
    reason: str | None


def _systemctl(program: str, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, first line of stderr) of one systemctl call."""
    try:
        done = subprocess.run(
            [program, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_PROBE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return 1, "", f"no answer in {_PROBE_TIMEOUT:g} s"
    except OSError as error:
        return 1, "", _reason(error)
    first = (done.stderr.strip().splitlines() or [""])[0]
    return done.returncode, done.stdout.strip(), first


def probe_systemd(path: str | None) -> SystemdState:
    """Ask systemctl (searched in `path`, as PATH) whether a user unit can work here."""
    program = shutil.which("systemctl", path=path)
    if program is None:
        return SystemdState(False, "systemctl is not installed")
    _, state, _ = _systemctl(program, "is-system-running")
    if state == "offline":
        return SystemdState(False, "systemctl is-system-running: offline")
    status, _, error = _systemctl(program, "--user", "show-environment")
    if status == 0:
        return SystemdState(True, None)
    return SystemdState(True, error or f"systemctl --user exited with {status}")


def profile_line(options: Sequence[str]) -> str:
    """The `~/.profile` line that starts saturnd (with `options`) at login, if needed."""
    given = "".join(f" {shlex.quote(word)}" for word in options)
    start = f"saturnd{given} status >/dev/null || saturnd{given}"
    return f"command -v saturnd >/dev/null && {{ {start}; }}"


def without_systemd(options: Sequence[str]) -> str:
    """What to do where systemd does not run: the `~/.profile` line, and start it now."""
    given = "".join(f" {shlex.quote(word)}" for word in options)
    return (
        "To start saturnd at every login, add this line at the end of ~/.profile\n"
        "(or of ~/.bash_profile if you have one):\n"
        f"  {profile_line(options)}\n"
        f"and start it now with: saturnd{given}\n"
    )


def started_by_systemd(pid: int) -> bool:
    """Whether process `pid` runs in the cgroup of a `saturnd.service` unit."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as stream:
            groups = stream.read().splitlines()
    except OSError:
        return False
    # Lines are "ID:CONTROLLERS:PATH"; the unit is one component of the path.
    return any(UNIT_NAME in line.split(":", 2)[-1].split("/") for line in groups)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
