"""What cassini's two ways to the daemon share: time limits, errors, and how to wait.

This module owns the constants and errors of `transport` and `fifos`: nothing waits for
ever (OPEN_TIMEOUT for a daemon to read the FIFO, LOCK_TIMEOUT for the lock,
REPLY_TIMEOUT for the reply), and after WAIT_NOTICE seconds a client whose stderr is a
terminal says what it waits for (`Notice`); `retry` polls with a back-off; `ours` refuses
a path another user made. Every failure is a `TransportError` whose message is one line
without the program name.
"""

from __future__ import annotations

import os
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    _T = TypeVar("_T")

__all__ = [
    "LOCK_TIMEOUT",
    "OPEN_TIMEOUT",
    "READ_SIZE",
    "REOPEN_GRACE",
    "REPLY_TIMEOUT",
    "STOP_TIMEOUT",
    "WAIT_NOTICE",
    "NoReplyError",
    "NoSocketError",
    "Notice",
    "TransportError",
    "check_dir",
    "ours",
    "retry",
]

OPEN_TIMEOUT = 2.0
"""Seconds to wait for a daemon to hold the request FIFO open for reading."""
REPLY_TIMEOUT = 30.0
"""Seconds to wait for the whole reply once the request is sent (or being sent)."""
LOCK_TIMEOUT = REPLY_TIMEOUT + OPEN_TIMEOUT + 8.0
"""Seconds to wait for another cassini's exchange to end: longer than any exchange."""
STOP_TIMEOUT = 15.0
"""Seconds to wait, after TERMINATE's OK, for the daemon to let go of its directory."""
WAIT_NOTICE = 2.0
"""Seconds of waiting after which a client on a terminal says what it waits for."""
REOPEN_GRACE = 1.0
"""Seconds a reply may take to begin after a hang-up that may have been the answer or a
late writer of the previous reply going (fifos.py): past them, it was the answer."""
READ_SIZE = 1 << 16
_RETRY_FIRST = 0.001
_RETRY_MAX = 0.02


class TransportError(Exception):
    """The exchange failed; the message is one line, without the program name."""


class NoReplyError(TransportError):
    """The daemon closed or reset the socket connection without a byte of reply: a
    saturnd older than the request drops one it does not know that way."""


class NoSocketError(TransportError):
    """The request needs the daemon's socket (an extension, or CASSINI_TRANSPORT=socket),
    and there is none to use."""


class Notice:
    """Says once on stderr, if it is a terminal, what we wait for after WAIT_NOTICE."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.at = time.monotonic() + WAIT_NOTICE
        self.said = False

    def check(self) -> None:
        if not self.said and time.monotonic() >= self.at:
            self.said = True
            self.say()

    def say(self) -> None:
        try:
            if os.isatty(2):
                os.write(2, f"cassini: waiting for {self.what}...\n".encode())
        except OSError:
            pass


def retry(attempt: Callable[[], _T | None], timeout: float, what: str) -> _T | None:
    """Call `attempt` until it returns something, for up to `timeout` seconds; None when
    time is up. Exponential back-off (a daemon about to open its FIFO is caught within a
    millisecond or two); after WAIT_NOTICE, a client on a terminal says it waits for `what`.
    """
    deadline = time.monotonic() + timeout
    notice = Notice(what)
    tries = 0
    while True:
        result = attempt()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            return None
        notice.check()
        delay = min(_RETRY_FIRST * (1 << min(tries, 16)), _RETRY_MAX)
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        tries += 1


def check_dir(pipes_dir: str) -> None:
    try:
        info = os.stat(pipes_dir)
    except FileNotFoundError:
        raise TransportError(
            f"pipes directory {pipes_dir} does not exist (is saturnd running?)"
        ) from None
    except OSError as error:
        raise TransportError(f"cannot use pipes directory {pipes_dir}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise TransportError(f"pipes directory {pipes_dir} is not a directory")


def ours(path: str, kind: int, what: str) -> bool:
    """Whether `path` is there; a TransportError if it is not a `kind` of ours."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise TransportError(f"cannot use {path}: {error.strerror}") from None
    if stat.S_IFMT(info.st_mode) != kind:
        raise TransportError(f"{path} is not a {what}")
    # One that someone else made could be read or answered by them: refuse it.
    if info.st_uid != os.geteuid():
        raise TransportError(f"{path} belongs to uid {info.st_uid}, not to you")
    return True
