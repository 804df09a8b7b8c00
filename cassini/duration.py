"""Durations as cassini's options and its crontab comments write them: `90s`, `5m`, `1h30m`.

This module owns `parse_duration` (text -> seconds) and `format_duration` (seconds ->
the canonical text), used by `-c --timeout/--jitter`, `-x -v` and `--export`.

Rules (a subset of systemd.time(7) that reads back exactly):
- A duration is one or more `NUMBER UNIT` parts, units `d` (86400 s), `h`, `m`, `s`,
  each at most once and from the largest unit to the smallest (`1h30m`, not `30m1h`:
  one way to write each value keeps the export stable). No spaces, no signs, ASCII
  digits only.
- A bare number is seconds, as systemd reads it (`90` is `90s`).
- The total is at most `MAX_DURATION` (what the wire's u32 holds, about 136 years).
- `format_duration` writes the largest units first and leaves out zero parts; 0 is `0s`.
  `parse_duration(format_duration(n)) == n` for every n in range.
Pure, and imports nothing: cassini loads it for `-c` and the history.
"""

from __future__ import annotations

__all__ = ["MAX_DURATION", "UNITS", "DurationError", "format_duration", "parse_duration"]

MAX_DURATION = 0xFFFF_FFFF
"""The longest duration in seconds (saturnd.task.MAX_DURATION, not imported: no cost)."""
UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
"""The units, largest first, and their length in seconds."""
_DIGITS_LIMIT = len(str(MAX_DURATION))


class DurationError(ValueError):
    """Text that is not a duration; the message is one line saying why."""


def parse_duration(text: str) -> int:
    """The seconds `text` says (`1h30m` -> 5400); raises `DurationError`."""
    if text.isascii() and text.isdigit():
        return _bounded(text, _number(text, text))
    if not text:
        raise DurationError("an empty duration: expected for example 90s, 5m, 2h, 1d or 1h30m")
    total = 0
    allowed = 0  # index in UNITS of the largest unit still allowed
    digits = ""
    for char in text:
        if char.isascii() and char.isdigit():
            digits += char
            continue
        position = next((i for i, (unit, _) in enumerate(UNITS) if unit == char), None)
        if position is None:
            raise DurationError(f"invalid duration {text!r}: unknown unit {char!r} (d, h, m, s)")
        if not digits:
            raise DurationError(f"invalid duration {text!r}: a number must come before {char!r}")
        if position < allowed:
            raise DurationError(
                f"invalid duration {text!r}: write each unit once, largest first (1h30m)"
            )
        total += _number(text, digits) * UNITS[position][1]
        # Checked at each step so that a huge text never builds a huge integer.
        _bounded(text, total)
        allowed, digits = position + 1, ""
    if digits:
        raise DurationError(f"invalid duration {text!r}: {digits} has no unit (d, h, m, s)")
    return total


def _number(text: str, digits: str) -> int:
    # Bound the length before int(): leading zeros aside, no more digits than the limit.
    significant = digits.lstrip("0")
    if len(significant) > _DIGITS_LIMIT:
        raise DurationError(f"invalid duration {text!r}: longer than {MAX_DURATION} seconds")
    return int(significant or "0")


def _bounded(text: str, seconds: int) -> int:
    if seconds > MAX_DURATION:
        raise DurationError(f"invalid duration {text!r}: longer than {MAX_DURATION} seconds")
    return seconds


def format_duration(seconds: int) -> str:
    """`seconds` in the canonical form: `1h30m`, `45s`, `0s`; `ValueError` below 0."""
    if seconds < 0:
        raise ValueError(f"a negative duration: {seconds}")
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
