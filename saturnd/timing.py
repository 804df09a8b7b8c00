"""The `timing` of a task: three bit sets (minutes, hours, days of week).

This module owns:
- parsing crontab fields (`*`, `N`, `A-B`, comma lists, steps `*/15` and `10-50/20`,
  day names `sun`..`sat` in any case, `7` for Sunday) into bit sets;
- formatting bit sets back to the canonical text of PROTOCOL.md (`*`, or maximal runs
  `N` / `A-B` joined by commas);
- matching a wall-clock datetime and finding the next matching minute.

Rules: pure code, standard library only (cassini imports this module and must start
fast). The field grammar is expanded here rather than by `croniter.expand`, because
croniter accepts what we must refuse (`5-3` wraps around, `3/5` means just 3); the
tests use croniter as an independent oracle for every form both accept. Every malformed
field raises `TimingError`, whose message names the field and the bad text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

__all__ = [
    "FIELDS",
    "FULL_DAYSOFWEEK",
    "FULL_HOURS",
    "FULL_MINUTES",
    "Field",
    "Timing",
    "TimingError",
    "format_field",
    "parse_field",
]


class TimingError(ValueError):
    """A crontab field that cannot be parsed; the message names the field and the text."""

    def __init__(self, field: str, text: str, reason: str) -> None:
        super().__init__(f"invalid {field} field {text!r}: {reason}")
        self.field = field
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class Field:
    """The value range of one timing field and the names it accepts."""

    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()

    @property
    def full(self) -> int:
        """The bit set with every value of the field."""
        return (1 << (self.high + 1)) - 1


MINUTES: Final = Field("minutes", 0, 59)
HOURS: Final = Field("hours", 0, 23)
DAYSOFWEEK: Final = Field("day-of-week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
FIELDS: Final = {"minutes": MINUTES, "hours": HOURS, "daysofweek": DAYSOFWEEK}

FULL_MINUTES: Final = MINUTES.full
FULL_HOURS: Final = HOURS.full
FULL_DAYSOFWEEK: Final = DAYSOFWEEK.full

# One item of a comma list: `*` or a value or a range, then an optional step.
# Matched with `fullmatch`: `$` would also match before a trailing newline ("1\n,2").
_ITEM = re.compile(r"(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?")
_NUMBER = re.compile(r"[0-9]+")
# More significant digits than any value or step can have; int() refuses over 4300 digits.
_MAX_DIGITS = 4


def _number(digits: str) -> int:
    """The value of a digit string; an absurdly long one counts as 10**_MAX_DIGITS."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _value(field: Field, token: str, text: str) -> int:
    """One value of a field: a number in range, or (days of week) a name; 7 is Sunday.

    Day of week accepts 7 here and callers fold bit 7 into bit 0, so `5-7` is
    Friday to Sunday as in crontab.
    """
    if _NUMBER.fullmatch(token):
        number = _number(token)
        high = 7 if field is DAYSOFWEEK else field.high
        if not field.low <= number <= high:
            raise TimingError(field.name, text, f"{token} is out of range {field.low}-{field.high}")
        return number
    if token in field.names:
        return field.names.index(token)
    kind = "a number or a day name" if field.names else "a number"
    raise TimingError(field.name, text, f"{token!r} is not {kind}")


def _parse_item(field: Field, item: str, text: str) -> int:
    match = _ITEM.fullmatch(item)
    if match is None:
        raise TimingError(field.name, text, f"{item!r} is not a value, range or step")
    star, first, last, step = match.groups()
    if star:
        low, high = field.low, field.high
    else:
        low = _value(field, first, text)
        if last is not None:
            high = _value(field, last, text)
            if high < low:
                raise TimingError(field.name, text, f"range {item!r} goes backwards")
        elif step is not None:
            high = max(field.high, low)  # `N/S` is `N-max/S`, as in cronie
        else:
            high = low
    stride = 1
    if step is not None:
        stride = _number(step)
        if stride == 0:
            raise TimingError(field.name, text, "a step must be at least 1")
        if stride > field.high - field.low + 1:
            raise TimingError(field.name, text, f"step {step} is larger than the field")
    bits = 0
    for value in range(low, high + 1, stride):
        bits |= 1 << value
    if field is DAYSOFWEEK and bits >> 7:
        bits = (bits | 1) & DAYSOFWEEK.full  # 7 is Sunday
    return bits


def parse_field(field: Field | str, text: str) -> int:
    """Parse one crontab field into its bit set, or raise `TimingError`."""
    spec = FIELDS[field] if isinstance(field, str) else field
    if text == "" or text.strip() != text:
        raise TimingError(spec.name, text, "empty field" if not text.strip() else "spaces")
    bits = 0
    for item in text.lower().split(","):
        if item == "":
            raise TimingError(spec.name, text, "empty item in list")
        bits |= _parse_item(spec, item, text)
    return bits


def format_field(field: Field | str, bits: int) -> str:
    """The canonical text of a bit set: `*`, or maximal runs `N` / `A-B`, by commas."""
    spec = FIELDS[field] if isinstance(field, str) else field
    if bits == spec.full:
        return "*"
    runs: list[str] = []
    value = spec.low
    while value <= spec.high:
        if bits >> value & 1:
            start = value
            while value + 1 <= spec.high and bits >> (value + 1) & 1:
                value += 1
            runs.append(str(start) if start == value else f"{start}-{value}")
        value += 1
    return ",".join(runs)


def _next_bit(bits: int, start: int) -> int:
    """The lowest set bit of `bits` at position >= start, or -1."""
    rest = bits >> start
    if rest == 0:
        return -1
    return start + ((rest & -rest).bit_length() - 1)


def _weekday(moment: datetime) -> int:
    """Day of week with 0 = Sunday, as in the protocol."""
    return (moment.weekday() + 1) % 7


@dataclass(frozen=True, slots=True)
class Timing:
    """When a task runs: bit n of each set is value n (0 = Sunday for days of week)."""

    minutes: int = FULL_MINUTES
    hours: int = FULL_HOURS
    daysofweek: int = FULL_DAYSOFWEEK

    @classmethod
    def parse(cls, minutes: str = "*", hours: str = "*", daysofweek: str = "*") -> Timing:
        """Build a timing from three crontab fields; raises `TimingError`."""
        return cls(
            parse_field(MINUTES, minutes),
            parse_field(HOURS, hours),
            parse_field(DAYSOFWEEK, daysofweek),
        )

    def is_valid(self) -> bool:
        """True when no bit outside the fields' ranges is set (PROTOCOL.md)."""
        return (
            0 <= self.minutes <= FULL_MINUTES
            and 0 <= self.hours <= FULL_HOURS
            and 0 <= self.daysofweek <= FULL_DAYSOFWEEK
        )

    def format(self) -> str:
        """`MIN HOUR DOW` in canonical form, as cassini lists it."""
        return " ".join(
            (
                format_field(MINUTES, self.minutes),
                format_field(HOURS, self.hours),
                format_field(DAYSOFWEEK, self.daysofweek),
            )
        )

    @property
    def is_wildcard(self) -> bool:
        """A task whose minute or hour set is full (the clock-jump rule of DESIGN.md)."""
        return self.minutes == FULL_MINUTES or self.hours == FULL_HOURS

    def matches(self, moment: datetime) -> bool:
        """True if the wall-clock minute of `moment` is in all three sets."""
        return bool(
            self.minutes >> moment.minute & 1
            and self.hours >> moment.hour & 1
            and self.daysofweek >> _weekday(moment) & 1
        )

    def next_after(self, moment: datetime) -> datetime | None:
        """The first matching wall-clock minute strictly after `moment`, or None.

        Works on naive wall-clock values (the tzinfo, if any, is kept but ignored):
        daylight saving is the scheduler's business, not this arithmetic's.
        """
        if not (self.minutes and self.hours and self.daysofweek):
            return None
        candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        # Eight days always reach a matching day; each step moves to a later boundary.
        limit = candidate + timedelta(days=8)
        while candidate < limit:
            if not self.daysofweek >> _weekday(candidate) & 1:
                candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            hour = _next_bit(self.hours, candidate.hour)
            if hour < 0:
                candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if hour != candidate.hour:
                candidate = candidate.replace(hour=hour, minute=0)
            minute = _next_bit(self.minutes, candidate.minute)
            if minute < 0:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
                continue
            return candidate.replace(minute=minute)
        return None  # pragma: no cover - unreachable with non-empty sets
