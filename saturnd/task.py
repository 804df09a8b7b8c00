"""What a task is beyond the course's TIMING and COMMANDLINE: `Extras`, and `Task`.

This module owns the model, not its bytes (those are in `protocol`, written once):
- `Extras`: the task's own environment variables (in the order given; a later one
  wins), the bytes its command reads on standard input (cron's `%` rule), and MAILTO
  (None: not set, mail goes to the user when a sendmail exists; b"": no mail);
- `Task`: timing + argv + extras, a task without its id (what CREATE-EX carries, what
  `--import` compares to decide which lines are unchanged).

Rules: pure, and as cheap to import as `timing` (cassini loads it for every request).
An environment name is non-empty, has no `=` and no NUL; no value has a NUL (execve
could not pass it). `check_extras` says why an `Extras` is not one.
"""

from __future__ import annotations

from saturnd.timing import Frozen, Timing

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from typing import Final

__all__ = ["NO_EXTRAS", "Extras", "Task", "check_extras"]

Env = tuple[tuple[bytes, bytes], ...]


class Extras(Frozen):
    """A task's environment, standard input and MAILTO (see the module docstring)."""

    __slots__ = __match_args__ = ("env", "stdin", "mailto")
    env: Env
    stdin: bytes
    mailto: bytes | None

    def __init__(self, env: Env = (), stdin: bytes = b"", mailto: bytes | None = None) -> None:
        object.__setattr__(self, "env", tuple(env))
        object.__setattr__(self, "stdin", stdin)
        object.__setattr__(self, "mailto", mailto)

    @property
    def is_empty(self) -> bool:
        """True when the task says nothing beyond the course's fields."""
        return not self.env and not self.stdin and self.mailto is None

    def variables(self) -> dict[bytes, bytes]:
        """The task's own variables as a mapping (a later one wins)."""
        return dict(self.env)


NO_EXTRAS: Final = Extras()


def check_extras(extras: Extras) -> str | None:
    """Why `extras` cannot be a task's (a one-line reason), or None when it can."""
    for name, value in extras.env:
        if not name or b"=" in name or b"\0" in name:
            return f"invalid environment variable name {name!r}"
        if b"\0" in value:
            return f"the value of {name.decode(errors='replace')} has a NUL byte"
    if extras.mailto is not None and b"\0" in extras.mailto:
        return "MAILTO has a NUL byte"
    return None


class Task(Frozen):
    """A whole task without its id: when, what, and with what around it."""

    __slots__ = __match_args__ = ("timing", "argv", "extras")
    timing: Timing
    argv: tuple[bytes, ...]
    extras: Extras

    def __init__(self, timing: Timing, argv: tuple[bytes, ...], extras: Extras = NO_EXTRAS) -> None:
        object.__setattr__(self, "timing", timing)
        object.__setattr__(self, "argv", tuple(argv))
        object.__setattr__(self, "extras", extras)

    @property
    def is_course(self) -> bool:
        """True when the course's CREATE says all of it."""
        return self.timing.is_course and self.extras.is_empty
