"""Mailing a run's output as cron does: to whom, the message, and the sendmail that
carries it.

This module owns the rules (pure: `recipients`, `message`, `sendmail_argv`,
`subject_command`) and the thin I/O steps P5 takes with them (`Mailer`: `find_sendmail`
once per PATH, `send`); runsupervisor.py calls it after a run that wrote anything.

Rules, Debian cron's (do_command.c), facts only:
- MAILTO unset: the user; MAILTO="": no mail; else its addresses (commas or blanks
  between them). No sendmail program: no mail (cassini warns when a task is created).
- sendmail is /usr/sbin/sendmail, else /usr/lib/sendmail, else `sendmail` in the task's
  PATH (the daemon's SATURND_SENDMAIL, when set, names the only one; "": none). It runs
  as `sendmail -FCronDaemon -i -oem -- ADDRESS...`, in the task's environment, with the
  message on its standard input, in its own session.
- Headers: From, To (MAILTO as written), `Subject: Cron <user@host> command` (host up to
  its first dot; the command as crontab wrote it: `SHELL -c LINE` shows LINE),
  Content-Type (`text/plain; charset=UTF-8` unless the task sets CONTENT_TYPE, and
  Content-Transfer-Encoding when it sets CONTENT_TRANSFER_ENCODING), Auto-Submitted,
  then one `X-Cron-Env: <NAME=value>` per variable of the task's environment. Unlike
  cron (`From: root`), the sender is the user: saturnd runs as the user, not as root.
  No header value holds a line break (one would forge headers): each becomes a space.
- Body: what the run stored, stdout then stderr (cron mails one interleaved stream;
  saturnd keeps the two apart).
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Final

from saturnd.launch import CATCHABLE_SIGNALS, input_fd

__all__ = [
    "SENDMAILS",
    "Mailer",
    "find_sendmail",
    "message",
    "recipients",
    "send",
    "sendmail_argv",
    "subject_command",
]

SENDMAILS: Final = (b"/usr/sbin/sendmail", b"/usr/lib/sendmail")
"""Where sendmail is looked for before the task's PATH."""
CHOICE: Final = b"SATURND_SENDMAIL"
"""The daemon's variable naming the one sendmail to use ("": never mail)."""

_DEV_NULL: Final = b"/dev/null"
_SEPARATORS: Final = b", \t\r\n"
_DEFAULT_CONTENT_TYPE: Final = b"text/plain; charset=UTF-8"


def sendmail_choice(environ: Mapping[bytes, bytes]) -> tuple[tuple[bytes, ...], bool]:
    """Where to look for sendmail, from the daemon's environment: (fixed candidates,
    whether the task's PATH is searched after them). SATURND_SENDMAIL, when set, names
    the only program ("" never mails: the tests set it, so that no test mails anyone)."""
    chosen = environ.get(CHOICE)
    if chosen is None:
        return SENDMAILS, True
    return ((chosen,) if chosen else ()), False


def recipients(mailto: bytes | None, user: bytes) -> tuple[bytes, ...]:
    """The addresses a run's output goes to (none: no mail)."""
    if mailto is None:
        return (user,)
    text = mailto
    for separator in _SEPARATORS[1:]:
        text = text.replace(bytes([separator]), b",")
    return tuple(address for address in text.split(b",") if address)


def sendmail_argv(program: bytes, to: Sequence[bytes]) -> list[bytes]:
    """sendmail's command line: sender's full name, a lone `.` is no end, errors
    mailed back, then the addresses (after `--`: an address is never an option)."""
    return [program, b"-FCronDaemon", b"-i", b"-oem", b"--", *to]


def subject_command(argv: Sequence[bytes]) -> bytes:
    """The command as the subject shows it: an imported crontab line (`SHELL -c LINE`)
    as written, any other command line shell-quoted."""
    if len(argv) == 3 and argv[1] == b"-c":
        return argv[2]
    return b" ".join(os.fsencode(shlex.quote(os.fsdecode(arg))) if arg else b"''" for arg in argv)


def _one_line(value: bytes) -> bytes:
    """A header value cannot break its line (a newline would start a forged header)."""
    return value.replace(b"\r\n", b" ").replace(b"\n", b" ").replace(b"\r", b" ")


def message(
    user: bytes,
    host: bytes,
    mailto: bytes | None,
    argv: Sequence[bytes],
    env: Mapping[bytes, bytes],
    output: bytes,
) -> bytes:
    """The whole message of a run's output: headers, a blank line, the output."""
    to = user if mailto is None else mailto
    short_host = host.split(b".", 1)[0]
    headers = [
        b"From: %s (Cron Daemon)" % user,
        b"To: %s" % to,
        b"Subject: Cron <%s@%s> %s" % (user, short_host, subject_command(argv)),
        b"Content-Type: %s" % env.get(b"CONTENT_TYPE", _DEFAULT_CONTENT_TYPE),
    ]
    encoding = env.get(b"CONTENT_TRANSFER_ENCODING")
    if encoding is not None:
        headers.append(b"Content-Transfer-Encoding: %s" % encoding)
    headers.append(b"Auto-Submitted: auto-generated")
    headers.extend(b"X-Cron-Env: <%s=%s>" % item for item in env.items())
    return b"".join(_one_line(header) + b"\n" for header in headers) + b"\n" + output


# --- I/O ---------------------------------------------------------------------------


class Mailer:
    """P5's mail of its runs' outputs: sendmail looked for once per PATH, one log line
    per mail sent or failed (none when there is no sendmail: cassini warned)."""

    def __init__(
        self,
        fixed: Sequence[bytes],
        search_path: bool,
        user: bytes,
        host: bytes,
        logger: logging.Logger | None,
    ) -> None:
        self.fixed = tuple(fixed)
        self.search_path = search_path
        self.user = user
        self.host = host
        self.log = logger
        self.found: dict[bytes | None, bytes | None] = {}  # by PATH; None: none

    def sendmail(self, env: Mapping[bytes, bytes]) -> bytes | None:
        """The sendmail for a task with environment `env` (None: none)."""
        path = env.get(b"PATH")
        if path not in self.found:
            self.found[path] = find_sendmail(self.fixed, path if self.search_path else None)
        return self.found[path]

    def wants(self, mailto: bytes | None, env: Mapping[bytes, bytes]) -> bool:
        """Whether a run's output would be mailed (someone to mail, a sendmail)."""
        return bool(recipients(mailto, self.user)) and self.sendmail(env) is not None

    def send(
        self,
        task_id: int,
        argv: Sequence[bytes],
        mailto: bytes | None,
        env: dict[bytes, bytes],
        output: bytes,
    ) -> None:
        """Mail a run's `output` as cron does, if `wants` said so; P5 does not wait."""
        program = self.sendmail(env)
        to = recipients(mailto, self.user)
        if program is None or not to:
            return
        text = message(self.user, self.host, mailto, argv, env, output)
        try:
            pid = send(program, to, text, env)
        except OSError as error:
            if self.log is not None:
                self.log.error("task %d: cannot mail its output: %s", task_id, error)
            return
        if self.log is not None:
            self.log.info(
                "task %d: output mailed to %s (%s pid %d)",
                task_id,
                b", ".join(to).decode(errors="replace"),
                program.decode(errors="replace"),
                pid,
            )


def find_sendmail(fixed: Sequence[bytes], path: bytes | None) -> bytes | None:
    """The first of `fixed`, then of `sendmail` in `path`, that is an executable
    file; None when there is none."""
    candidates = list(fixed)
    if path is not None:
        candidates.extend(os.path.join(d, b"sendmail") for d in path.split(b":") if d)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def send(program: bytes, to: Sequence[bytes], text: bytes, env: dict[bytes, bytes]) -> int:
    """Start sendmail with `text` on its standard input (an anonymous file: no pipe
    to fill), its output to /dev/null; its pid. Raises OSError when it cannot start."""
    stdin = input_fd(text)
    try:
        return os.posix_spawn(
            program,
            sendmail_argv(program, to),
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_OPEN, 1, _DEV_NULL, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=CATCHABLE_SIGNALS,
        )
    finally:
        os.close(stdin)
