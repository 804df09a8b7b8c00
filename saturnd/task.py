"""What a task is beyond the course's TIMING and COMMANDLINE: `Extras`, and `Task`.

This module owns the model, not its bytes (those are in `protocol`, written once):
- `Extras`: the task's own environment variables (in the order given; a later one
  wins), the bytes its command reads on standard input (cron's `%` rule), MAILTO
  (None: not set, mail goes to the user when a sendmail exists; b"": no mail), and its
  run policies: `timeout` and `jitter` (seconds, 0: none), `no_overlap`, `catch_up`,
  `on_failure` (a command for /bin/sh -c, b"": none) and `paused`;
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

__all__ = ["MAX_DURATION", "NO_EXTRAS", "Extras", "Task", "check_extras"]

Env = tuple[tuple[bytes, bytes], ...]

MAX_DURATION: Final = 0xFFFF_FFFF
"""Longest timeout or jitter in seconds (what a uint32 holds: 136 years)."""


class Extras(Frozen):
    """A task's environment, standard input, MAILTO and run policies (see the module
    docstring)."""

    __slots__ = __match_args__ = (
        "env",
        "stdin",
        "mailto",
        "timeout",
        "jitter",
        "no_overlap",
        "catch_up",
        "on_failure",
        "paused",
    )
    env: Env
    stdin: bytes
    mailto: bytes | None
    timeout: int
    jitter: int
    no_overlap: bool
    catch_up: bool
    on_failure: bytes
    paused: bool

    def __init__(
        self,
        env: Env = (),
        stdin: bytes = b"",
        mailto: bytes | None = None,
        timeout: int = 0,
        jitter: int = 0,
        no_overlap: bool = False,
        catch_up: bool = False,
        on_failure: bytes = b"",
        paused: bool = False,
    ) -> None:
        object.__setattr__(self, "env", tuple(env))
        object.__setattr__(self, "stdin", stdin)
        object.__setattr__(self, "mailto", mailto)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "jitter", jitter)
        object.__setattr__(self, "no_overlap", bool(no_overlap))
        object.__setattr__(self, "catch_up", bool(catch_up))
        object.__setattr__(self, "on_failure", on_failure)
        object.__setattr__(self, "paused", bool(paused))

    @property
    def is_empty(self) -> bool:
        """True when the task says nothing beyond the course's fields."""
        return self == NO_EXTRAS

    def replace(self, **changes: object) -> Extras:
        """A copy with the fields named in `changes` changed."""
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return Extras(**values)

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
    if not 0 <= extras.timeout <= MAX_DURATION or not 0 <= extras.jitter <= MAX_DURATION:
        return f"a timeout or jitter beyond {MAX_DURATION} seconds"
    if b"\0" in extras.on_failure:
        return "the on-failure command has a NUL byte"
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
