"""How cron reads a time field that our grammar refuses but cron accepts.

This module owns `CronReading`, the field reader a crontab import uses in place of
`timing.parse_field`. Debian's cron (3.0pl1, whose `crontab -n` is the verdict) accepts
fields our grammar refuses, and means something exact by them, which an import keeps:
- a range that goes backwards (`5-3`, `fri-mon`, `mon-sun`: Sunday is 0) holds no value;
- a step larger than the field (`*/61`) holds the first value of its range only;
- after a whole item, a character that is neither `,` nor a letter or digit (`5#1`,
  `1-2-3`, `*-5`, `1.5`) ends the field: cron ignores it and all that follows.
What our grammar accepts reads the same in cron where cron accepts it; where neither
accepts a field, our grammar's reason is given. Each such reading leaves a note of what
cron made of the text, for the import to warn. Pure and standard library only.
"""

from __future__ import annotations

from saturnd.timing import DAYSOFWEEK, Field, TimingError, field_value, parse_field

__all__ = ["CronReading"]

_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _NotCron(Exception):
    """cron refuses the field too."""


class CronReading:
    """A field reader (`Timing.cron(..., read=)`) that reads as cron does; `notes` says,
    field by field, where that is not what the text seems to say."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def __call__(self, field: Field, text: str) -> int:
        try:
            return parse_field(field, text)
        except TimingError as error:
            refused = error
        try:
            bits, notes = _read(field, text)
        except _NotCron:
            raise refused from None
        self.notes += [f"{field.name}: {note}" for note in notes]
        return bits


def _token(field: Field, text: str, pos: int) -> tuple[int, int]:
    """The value of the letters and digits at `pos` (a number or a name) and where they end."""
    end = pos
    while end < len(text) and text[end] in _ALNUM:
        end += 1
    if end == pos:
        raise _NotCron
    try:
        return field_value(field, text[pos:end].lower(), text), end
    except TimingError:
        raise _NotCron from None


def _read(field: Field, text: str) -> tuple[int, list[str]]:
    """cron's reading of `text` for `field`: its bit set and what differs from the text."""
    bits, notes, pos = 0, [], 0
    size = field.high - field.low + 1
    while True:
        start = pos
        if text.startswith("*", pos):
            first, last, pos, ranged = field.low, field.high, pos + 1, True
        else:
            first, pos = _token(field, text, pos)
            last, ranged = first, text.startswith("-", pos)
            if ranged:
                last, pos = _token(field, text, pos + 1)
            elif text.startswith("/", pos):
                raise _NotCron  # cron takes no step after a single value
        stride = 1
        if ranged and text.startswith("/", pos):
            end = pos + 1
            while end < len(text) and text[end] in _ALNUM:
                end += 1
            digits = text[pos + 1 : end].lstrip("0")
            if not (digits.isascii() and digits.isdigit()):
                raise _NotCron  # none, 0, or not a number
            stride, pos = (int(digits) if len(digits) <= 4 else 10**4), end
        item = text[start:pos]
        if last < first:
            notes.append(f"the range {item!r} goes backwards: cron reads no value from it")
        elif stride > size:
            notes.append(f"the step of {item!r} is larger than the field: cron reads {first}")
        for value in range(first, last + 1, stride):
            bits |= 1 << value
        if pos == len(text):
            break
        if text[pos] != ",":
            notes.append(f"cron ignores {text[pos:]!r} after {text[:pos]!r}")
            break
        pos += 1
    if field is DAYSOFWEEK and bits >> 7:
        bits = (bits | 1) & DAYSOFWEEK.full  # 7 is Sunday
    return bits, notes
