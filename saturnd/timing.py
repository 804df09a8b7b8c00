"""The `timing` of a task: three bit sets (minutes, hours, days of week).

This module owns:
- parsing crontab fields (`*`, `N`, `A-B`, comma lists, steps `*/15` and `10-50/20`,
  day names `sun`..`sat` and `sunday`..`saturday` in any case, `7` for Sunday) into bit
  sets; a name is only ever input: the canonical text is always numbers;
- formatting bit sets back to the canonical text of PROTOCOL.md (`*`, or maximal runs
  `N` / `A-B` joined by commas);
- matching a wall-clock datetime and finding the next matching minute;
- `Frozen`, the base of the immutable value classes here and in `protocol`.

Rules: pure code, standard library only. The field grammar is expanded here rather than
by `croniter.expand`, because croniter accepts what we must refuse (`5-3` wraps around,
`3/5` means just 3); the tests use croniter as an independent oracle for every form both
accept. Every malformed field raises `TimingError`, whose message names the field and
the bad text.

Start-up cost: cassini imports this module and `protocol` for every request, and
`cassini -l` must cost at most 1.3 times a bare `python -c pass`
(bench/cassini_roundtrip.py). With frozen dataclasses, `import saturnd.protocol` took
about 26 ms in a regular install (`python -X importtime`, bytecode cached), where the
interpreter itself starts in about 11 ms: `dataclasses` pulls in `inspect`, `re`,
`enum` and `typing`, and each of the 17 classes of the two modules compiled its methods
with `exec()`. Without them it takes about 1.5 ms. So at import time this module uses
only what a bare interpreter has already loaded: no `typing` (type-only names come in
under `TYPE_CHECKING`), no `re` (the field grammar is small enough for the hand-written
scanner below), no `datetime` (imported by the functions that compute with it), no
`dataclasses`: `Frozen` derives what the dataclasses gave (immutability, equality,
hash, repr, pattern matching) from `__slots__`, at no import cost.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from typing import ClassVar, Final

__all__ = [
    "FIELDS",
    "FULL_DAYSOFMONTH",
    "FULL_DAYSOFWEEK",
    "FULL_HOURS",
    "FULL_MINUTES",
    "FULL_MONTHS",
    "Field",
    "Frozen",
    "REBOOT",
    "SPECIALS",
    "Timing",
    "TimingError",
    "format_field",
    "field_value",
    "parse_field",
]


class Frozen:
    """Base of small immutable value classes, in place of `@dataclass(frozen=True)`.

    A subclass names its fields in a `__slots__` tuple (and `__match_args__`, for
    positional patterns), in the order of its `__init__` parameters, after those of its
    bases; declares their types in the class body; and sets them in `__init__` with
    `object.__setattr__`. Like a frozen dataclass, an instance then compares equal to an
    instance of the same class with equal fields, hashes and prints by its fields, can
    be copied and pickled, and refuses to have a field set or deleted. Type checkers do
    not see the immutability: they accept an assignment that fails at run time.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    """Every field of the class, those of its bases first."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._fields = cls._fields + tuple(cls.__dict__.get("__slots__", ()))

    def _values(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self._fields])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Frozen) and other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[Frozen], tuple[object, ...]]:
        # copy and pickle rebuild through __init__: the default restores slots with setattr.
        return self.__class__, self._values()


class TimingError(ValueError):
    """A crontab field that cannot be parsed; the message names the field and the text."""

    def __init__(self, field: str, text: str, reason: str) -> None:
        super().__init__(f"invalid {field} field {text!r}: {reason}")
        self.field = field
        self.text = text
        self.reason = reason


class Field(Frozen):
    """The value range of one timing field and the names it accepts."""

    __slots__ = __match_args__ = ("name", "low", "high", "names")
    name: str
    low: int
    high: int
    names: tuple[str, ...]

    def __init__(self, name: str, low: int, high: int, names: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "names", names)

    @property
    def full(self) -> int:
        """The bit set with every value of the field (bits low..high)."""
        return ((1 << (self.high + 1)) - 1) & ~((1 << self.low) - 1)


MINUTES: Final = Field("minutes", 0, 59)
HOURS: Final = Field("hours", 0, 23)
DAYSOFWEEK: Final = Field("day-of-week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
DAYSOFMONTH: Final = Field("day-of-month", 1, 31)
MONTHS: Final = Field(
    "month",
    1,
    12,
    ("", "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
)
FIELDS: Final = {
    "minutes": MINUTES,
    "hours": HOURS,
    "daysofweek": DAYSOFWEEK,
    "daysofmonth": DAYSOFMONTH,
    "months": MONTHS,
}
# The full day names, by value. cron(5) documents only the three-letter ones, but
# `-d monday` is what people type, and a full name cannot mean anything else.
_FULL_DAY_NAMES: Final = (
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
)
_FULL_MONTH_NAMES: Final = (
    "",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
# The `@` names of cron(5) (and cronie/Debian), as the five fields they stand for.
SPECIALS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
REBOOT: Final = "@reboot"

FULL_MINUTES: Final = MINUTES.full
FULL_HOURS: Final = HOURS.full
FULL_DAYSOFWEEK: Final = DAYSOFWEEK.full
FULL_DAYSOFMONTH: Final = DAYSOFMONTH.full
FULL_MONTHS: Final = MONTHS.full

# The characters of the item grammar: a value or a day name is a run of _WORD, a step
# a run of _DIGITS (ASCII only: str.isdigit() would accept fullwidth and other digits).
_DIGITS = frozenset("0123456789")
_WORD = _DIGITS | frozenset("abcdefghijklmnopqrstuvwxyz")
# More significant digits than any value or step can have; int() refuses over 4300 digits.
_MAX_DIGITS = 4


def _number(digits: str) -> int:
    """The value of a digit string; an absurdly long one counts as 10**_MAX_DIGITS."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else 10**_MAX_DIGITS


def field_value(field: Field, token: str, text: str) -> int:
    """One value of a field: a number in range, or (days of week) a name, short or full;
    7 is Sunday.

    Day of week accepts 7 here and callers fold bit 7 into bit 0, so `5-7` is
    Friday to Sunday as in crontab.
    """
    if _DIGITS.issuperset(token):
        number = _number(token)
        high = 7 if field is DAYSOFWEEK else field.high
        if not field.low <= number <= high:
            raise TimingError(field.name, text, f"{token} is out of range {field.low}-{field.high}")
        return number
    if token and token in field.names:
        return field.names.index(token)
    if field is DAYSOFWEEK and token in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(token)
    if field is MONTHS and token and token in _FULL_MONTH_NAMES:
        return _FULL_MONTH_NAMES.index(token)
    kind = "a number" if not field.names else f"a number or a {field.name[:5]} name"
    kind = "a number or a day name" if field is DAYSOFWEEK else kind
    raise TimingError(field.name, text, f"{token!r} is not {kind}")


def _run_end(item: str, start: int, chars: frozenset[str]) -> int:
    """The index just past the run of `chars` that begins at `start` (`start`: no run)."""
    end = start
    while end < len(item) and item[end] in chars:
        end += 1
    return end


def _split_item(item: str) -> tuple[str, str | None, str | None] | None:
    """An item's parts (first, last, step), or None when it is not of the item grammar.

    The grammar: `*` or WORD or WORD-WORD, then optionally /DIGITS, and nothing else;
    `first` is "*" for a star.
    """
    last = step = None
    if item.startswith("*"):
        first, end = "*", 1
    else:
        end = _run_end(item, 0, _WORD)
        if end == 0:
            return None
        first = item[:end]
        if item.startswith("-", end):
            start, end = end + 1, _run_end(item, end + 1, _WORD)
            if end == start:
                return None
            last = item[start:end]
    if item.startswith("/", end):
        start, end = end + 1, _run_end(item, end + 1, _DIGITS)
        if end == start:
            return None
        step = item[start:end]
    return (first, last, step) if end == len(item) else None


def _parse_item(field: Field, item: str, text: str) -> int:
    parts = _split_item(item)
    if parts is None:
        raise TimingError(field.name, text, f"{item!r} is not a value, range or step")
    first, last, step = parts
    if first == "*":
        low, high = field.low, field.high
    else:
        low = field_value(field, first, text)
        if last is not None:
            high = field_value(field, last, text)
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
    return moment.isoweekday() % 7  # isoweekday: Monday 1 .. Sunday 7


def _day_rule_or(daysofmonth: str, daysofweek: str) -> bool:
    """cron's rule: the two day fields are OR-ed when neither text starts with `*`."""
    return not daysofmonth.startswith("*") and not daysofweek.startswith("*")


class Timing(Frozen):
    """When a task runs: bit n of each set is value n (0 = Sunday for days of week).

    The course's TIMING is the first three sets. Beyond it (socket and store only):
    `daysofmonth` (bits 1-31), `months` (bits 1-12), `days_or` (cron's rule: when both
    day fields were written restricted, a day matches if either does), `reboot`
    (@reboot: once per daemon start, never by the clock) and `zone` (an IANA zone the
    fields are read in; "" is the daemon's own zone).

    Invariants, so that equal meanings compare equal: `days_or` is set only when both
    day sets are restricted and not empty (an OR with a full set is every day, one with
    an empty set is the other set alone, stored as such); a reboot timing has every set
    empty and `days_or` False.
    """

    __slots__ = __match_args__ = (
        "minutes",
        "hours",
        "daysofweek",
        "daysofmonth",
        "months",
        "days_or",
        "reboot",
        "zone",
    )
    minutes: int
    hours: int
    daysofweek: int
    daysofmonth: int
    months: int
    days_or: bool
    reboot: bool
    zone: str

    def __init__(
        self,
        minutes: int = FULL_MINUTES,
        hours: int = FULL_HOURS,
        daysofweek: int = FULL_DAYSOFWEEK,
        daysofmonth: int = FULL_DAYSOFMONTH,
        months: int = FULL_MONTHS,
        days_or: bool = False,
        reboot: bool = False,
        zone: str = "",
    ) -> None:
        if reboot:
            minutes = hours = daysofweek = daysofmonth = months = 0
            days_or = False
        elif days_or and (daysofmonth == FULL_DAYSOFMONTH or daysofweek == FULL_DAYSOFWEEK):
            daysofmonth, daysofweek, days_or = FULL_DAYSOFMONTH, FULL_DAYSOFWEEK, False
        elif days_or and not daysofmonth:  # OR with nothing: the other set alone
            daysofmonth, days_or = FULL_DAYSOFMONTH, False
        elif days_or and not daysofweek:
            daysofweek, days_or = FULL_DAYSOFWEEK, False
        object.__setattr__(self, "minutes", minutes)
        object.__setattr__(self, "hours", hours)
        object.__setattr__(self, "daysofweek", daysofweek)
        object.__setattr__(self, "daysofmonth", daysofmonth)
        object.__setattr__(self, "months", months)
        object.__setattr__(self, "days_or", bool(days_or))
        object.__setattr__(self, "reboot", bool(reboot))
        object.__setattr__(self, "zone", zone)

    @classmethod
    def parse(
        cls,
        minutes: str = "*",
        hours: str = "*",
        daysofweek: str = "*",
        daysofmonth: str = "*",
        months: str = "*",
        zone: str = "",
        *,
        read: Callable[[Field, str], int] = parse_field,
    ) -> Timing:
        """Build a timing from crontab fields; raises `TimingError`.

        Whether the day fields are OR-ed is read from their text, as cron does: `*/2`
        counts as a star (`0 0 */2 * 1`: odd days that are Mondays), `1-31` does not.
        `read` reads each field (`cronfields.CronReading` for a crontab's lines).
        """
        return cls(
            read(MINUTES, minutes),
            read(HOURS, hours),
            read(DAYSOFWEEK, daysofweek),
            read(DAYSOFMONTH, daysofmonth),
            read(MONTHS, months),
            _day_rule_or(daysofmonth, daysofweek),
            False,
            zone,
        )

    @classmethod
    def cron(
        cls, text: str, zone: str = "", *, read: Callable[[Field, str], int] = parse_field
    ) -> Timing:
        """A timing from a crontab schedule: five fields `M H DOM MON DOW`, or an `@`
        name (`@daily`, `@reboot`, ...). Raises `TimingError`."""
        words = text.split()
        if len(words) == 1 and words[0].startswith("@"):
            name = words[0].lower()
            if name == REBOOT:
                return cls(reboot=True, zone=zone)
            if name not in SPECIALS:
                raise TimingError("schedule", text, f"unknown name {words[0]!r}")
            words = SPECIALS[name].split()
        if len(words) != 5:
            raise TimingError("schedule", text, f"{len(words)} fields, expected 5 or an @name")
        minute, hour, dom, month, dow = words
        return cls.parse(minute, hour, dow, dom, month, zone, read=read)

    def is_valid(self) -> bool:
        """True when no bit outside the fields' ranges is set (PROTOCOL.md)."""
        return (
            0 <= self.minutes <= FULL_MINUTES
            and 0 <= self.hours <= FULL_HOURS
            and 0 <= self.daysofweek <= FULL_DAYSOFWEEK
            and 0 <= self.daysofmonth <= FULL_DAYSOFMONTH
            and not self.daysofmonth & 1
            and 0 <= self.months <= FULL_MONTHS
            and not self.months & 1
        )

    @property
    def is_course(self) -> bool:
        """True when the course's TIMING says all of it (a CREATE a C daemon takes)."""
        return (
            self.daysofmonth == FULL_DAYSOFMONTH
            and self.months == FULL_MONTHS
            and not self.days_or
            and not self.reboot
            and not self.zone
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

    def format_cron(self) -> str:
        """The five fields `M H DOM MON DOW` (or `@reboot`) that cron reads as this timing,
        in cron's compact form (`*/15`, `1-59/2`, `9-17`); the zone is not part of it.
        ValueError when no crontab text means it (see `saturnd.cronform`)."""
        from saturnd.cronform import format_cron

        return format_cron(self)

    @property
    def is_wildcard(self) -> bool:
        """A task whose minute or hour set is full (the clock-jump rule of DESIGN.md)."""
        return self.minutes == FULL_MINUTES or self.hours == FULL_HOURS

    def day_matches(self, moment: datetime) -> bool:
        """True if the day (month, day of month, day of week) of `moment` is one."""
        if not self.months >> moment.month & 1:
            return False
        dow = self.daysofweek >> moment.isoweekday() % 7 & 1
        dom = self.daysofmonth >> moment.day & 1
        return bool(dow or dom) if self.days_or else bool(dow and dom)

    def never_day(self) -> bool:
        """True when no day of any year matches (`0 0 31 2 *`, or an empty set): the
        day of month is AND-ed and falls in none of the months' lengths (a day and
        month that exist fall on every day of the week within the 400-year cycle)."""
        if not self.months or self.reboot:
            return True
        if self.days_or:
            return not (self.daysofweek or self.daysofmonth & _days_in(self.months))
        return not (self.daysofweek and self.daysofmonth & _days_in(self.months))

    def matches(self, moment: datetime) -> bool:
        """True if the wall-clock minute of `moment` is one of the timing's."""
        if not (self.minutes >> moment.minute & 1 and self.hours >> moment.hour & 1):
            return False
        if self.daysofmonth == FULL_DAYSOFMONTH and self.months == FULL_MONTHS:
            return bool(self.daysofweek >> moment.isoweekday() % 7 & 1)  # the course's: hot
        return self.day_matches(moment)

    def next_after(self, moment: datetime) -> datetime | None:
        """The first matching wall-clock minute strictly after `moment`, or None.

        Works on naive wall-clock values (the tzinfo, if any, is kept but ignored):
        daylight saving is the scheduler's business, not this arithmetic's. None when no
        day ever matches (`0 0 31 2 *`) or a set is empty.
        """
        from datetime import timedelta

        if self.reboot or not (self.minutes and self.hours) or self.never_day():
            return None
        candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        # 400 years is the Gregorian cycle: a day that matches at all matches within it.
        limit_year = candidate.year + 401
        while candidate.year < limit_year:
            if not self.months >> candidate.month & 1:
                year, month = divmod(candidate.month, 12)  # to the 1st of the next month
                candidate = candidate.replace(
                    year=candidate.year + year, month=month + 1, day=1, hour=0, minute=0
                )
                continue
            if not self.day_matches(candidate):
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
        return None


# The most days each month can have (February 29), and the bit set of days 1..N.
_MONTH_DAYS: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DAYS_UP_TO: Final = tuple((1 << (days + 1)) - 2 for days in _MONTH_DAYS)


def _days_in(months: int) -> int:
    """The days of month (bits 1-31) that exist in at least one month of `months`."""
    days = 0
    for month in range(1, 13):
        if months >> month & 1:
            days |= _DAYS_UP_TO[month]
    return days
