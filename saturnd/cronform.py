"""Cron's compact text of a timing: the five fields `M H DOM MON DOW` a user would write.

This module owns `format_cron` (behind `Timing.format_cron`): each set becomes the shortest
list of cron items that means exactly it (`*`, `*/15`, `1-59/2`, `9-17`, `5`), numbers
only, never names nor `7` for Sunday; and the day fields are written so that cron's rule
gives back the timing's `days_or`: OR-ed exactly when neither field's text starts with `*`.

Invariant: `Timing.cron(format_cron(t)) == t` (zone aside) for every timing a crontab
can say; for the others `ValueError` (bits out of range; both day sets restricted and
AND-ed while neither holds its first value, so no `*/N` can start it). An empty set is
a range that goes backwards (`1-0`), which cron reads as no value (cronfields.py).

Pure and standard library only. `timing` imports it on first use, so cassini pays for it
only when it writes crontab text.
"""

from __future__ import annotations

from saturnd.timing import (
    DAYSOFMONTH,
    DAYSOFWEEK,
    HOURS,
    MINUTES,
    MONTHS,
    REBOOT,
    Field,
    Timing,
)

__all__ = ["format_cron", "format_compact"]

# (length of the text, number of items, items): smaller is better, then fewer items.
_Choice = tuple[int, int, tuple[str, ...]]


def _values(field: Field, bits: int) -> list[int]:
    return [value for value in range(field.low, field.high + 1) if bits >> value & 1]


def _star_bits(field: Field, step: int) -> int:
    """The set `*/step` means for `field`."""
    bits = 0
    for value in range(field.low, field.high + 1, step):
        bits |= 1 << value
    return bits


def _cover(field: Field, values: list[int], star: bool) -> _Choice:
    """The best list of items that are runs of `values` (sorted): each item a single
    value, a range `A-B`, or a stepped range `A-B/S` (`*/S` when `star` allows and it
    reaches both ends of the field). Dynamic programming over where each item ends."""
    count = len(values)
    best: list[_Choice] = [(0, 0, ())] * (count + 1)
    for start in range(count - 1, -1, -1):
        first = values[start]
        choice: _Choice | None = None
        step = 0
        for end in range(start, count):
            if end == start + 1:
                step = values[end] - first
            elif end > start + 1 and values[end] - values[end - 1] != step:
                break  # no longer one arithmetic progression
            last = values[end]
            if end == start:
                item = str(first)
            elif step == 1:
                item = f"{first}-{last}"
            elif end - start < 2:
                continue  # two values a step apart: `0,30` reads better than `*/30`
            elif star and first == field.low and last + step > field.high:
                item = f"*/{step}"
            else:
                item = f"{first}-{last}/{step}"
            rest = best[end + 1]
            candidate = (len(item) + rest[0] + (1 if rest[1] else 0), 1 + rest[1], (item, *rest[2]))
            if choice is None or candidate < choice:
                choice = candidate
        assert choice is not None  # the single value is always a candidate
        best[start] = choice
    return best[0]


def _with_star(field: Field, bits: int, smallest: int) -> list[_Choice]:
    """Every text for `bits` that starts with a `*/S` item of at least `smallest` values
    (the rest may then be any values of the set, beside and between the progression's)."""
    choices: list[_Choice] = []
    for step in range(2, field.high - field.low + 2):
        star = _star_bits(field, step)
        if star & ~bits or star.bit_count() < smallest:
            continue
        rest = _cover(field, _values(field, bits & ~star), True)
        item = f"*/{step}"
        length = len(item) + rest[0] + (1 if rest[1] else 0)
        choices.append((length, 1 + rest[1], (item, *rest[2])))
    return choices


def format_compact(field: Field, bits: int, *, star: bool = True, need_star: bool = False) -> str:
    """The shortest text cron reads as exactly `bits` for `field`.

    `star`: the text may use `*` (a day field of an OR-ed timing may not: its text
    would then start with a star and turn the OR into an AND). `need_star`: the text
    must start with `*` (one day field of an AND-ed timing whose two day sets are
    restricted). Raises ValueError when no text qualifies.
    """
    if bits & ~field.full or (not bits and need_star):
        raise ValueError(f"no {field.name} text means the set {bits:#x}")
    if not bits:
        return f"{field.low + 1}-{field.low}"  # a range backwards: cron reads no value
    if need_star:
        choices = _with_star(field, bits, 1)
        if not choices:
            raise ValueError(f"no {field.name} text starting with '*' means the set {bits:#x}")
        return ",".join(min(choices)[2])
    if bits == field.full and star:
        return "*"
    choices = [_cover(field, _values(field, bits), star)]
    if star:
        choices += _with_star(field, bits, 3)
    return ",".join(min(choices)[2])


def format_cron(timing: Timing) -> str:
    """The five fields `M H DOM MON DOW` (or `@reboot`) that cron reads as `timing`, the
    zone aside; ValueError when no crontab text means it (see the module docstring)."""
    if timing.reboot:
        return REBOOT
    dom_bits, dow_bits = timing.daysofmonth, timing.daysofweek
    if timing.days_or:
        dom = format_compact(DAYSOFMONTH, dom_bits, star=False)
        dow = format_compact(DAYSOFWEEK, dow_bits, star=False)
    elif dom_bits == DAYSOFMONTH.full or dow_bits == DAYSOFWEEK.full:
        dom = format_compact(DAYSOFMONTH, dom_bits)
        dow = format_compact(DAYSOFWEEK, dow_bits)
    else:
        # Both restricted and AND-ed: cron reads an AND only when one of the two texts
        # starts with `*`; put it where the whole is shorter, on the day of month if equal.
        texts: list[tuple[int, int, str, str]] = []
        for rank, need_dom in enumerate((True, False)):
            try:
                dom = format_compact(DAYSOFMONTH, dom_bits, need_star=need_dom)
                dow = format_compact(DAYSOFWEEK, dow_bits, need_star=not need_dom)
            except ValueError:
                continue
            texts.append((len(dom) + len(dow), rank, dom, dow))
        if not texts:
            raise ValueError(f"no crontab text means {timing!r}")
        _length, _rank, dom, dow = min(texts)
    minute = format_compact(MINUTES, timing.minutes)
    hour = format_compact(HOURS, timing.hours)
    month = format_compact(MONTHS, timing.months)
    return f"{minute} {hour} {dom} {month} {dow}"
