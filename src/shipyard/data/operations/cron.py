"""Cron schedules for ``policy: Cron`` operations: the next fire time after a moment.

Standard 5 fields ``minute hour day-of-month month day-of-week`` with ``*``, lists ``1,5``, ranges
``1-5``, steps ``*/15`` / ``1-30/2`` / ``5/15`` (from 5 to the field's end), names ``JAN``-``DEC`` and
``SUN``-``SAT`` (day-of-week 0 and 7 are both Sunday); the macros ``@yearly`` (``@annually``),
``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and ``@hourly``; and a Shipyard extension
``@every 30s`` / ``5m`` / ``1h`` / ``1h30m`` (a fixed interval after ``after``, handy in tests).

As in Vixie cron, when both day-of-month and day-of-week are restricted (neither starts with ``*``)
a day matches if EITHER matches; otherwise both must. Times are wall-clock times in ``after``'s
timezone (naive stays naive).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shipyard.quantity import parse_duration

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_RANGES = {"minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31), "month": (1, 12), "day-of-week": (0, 7)}
_NAMES = {
    "month": {m: i + 1 for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])},
    "day-of-week": {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])},
}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_SEARCH_YEARS = 8  # a schedule with no fire time in 8 years (e.g. "0 0 30 2 *") never fires


class CronError(ValueError):
    """A schedule that does not parse; the message names the schedule and the wrong field."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: either an interval (``every``) or the allowed values of the 5 fields."""

    text: str
    every: timedelta | None = None
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()   # 0 = Sunday
    dom_star: bool = True
    dow_star: bool = True

    def day_matches(self, moment: datetime) -> bool:
        """Whether ``moment``'s date matches day-of-month / day-of-week with cron's OR rule."""
        dom = moment.day in self.days
        dow = (moment.isoweekday() % 7) in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow


def parse(schedule: str) -> Schedule:
    """Parse a schedule; CronError names the field that is wrong and what was expected."""
    if not isinstance(schedule, str) or not schedule.strip():
        raise CronError(f"schedule: expected a cron expression such as '*/5 * * * *' or '@every 30s', got {schedule!r}")
    text = " ".join(schedule.split())
    if text.startswith("@"):
        word, _, rest = text.partition(" ")
        word = word.lower()
        if word == "@every":
            return Schedule(text=text, every=_parse_every(text, rest))
        if word not in _MACROS or rest:
            raise CronError(f"schedule {schedule!r}: unknown macro {text!r}; expected one of "
                            f"{', '.join(sorted(_MACROS))} or '@every 30s|5m|1h'")
        text_fields = _MACROS[word].split()
    else:
        text_fields = text.split()
        if len(text_fields) != 5:
            raise CronError(f"schedule {schedule!r}: expected 5 fields (minute hour day-of-month month "
                            f"day-of-week), got {len(text_fields)}")
    values = [_parse_field(schedule, name, value) for name, value in zip(FIELDS, text_fields)]
    weekdays = frozenset(0 if d == 7 else d for d in values[4])
    return Schedule(text=text, minutes=values[0], hours=values[1], days=values[2], months=values[3],
                    weekdays=weekdays, dom_star=text_fields[2].startswith("*"),
                    dow_star=text_fields[4].startswith("*"))


def next_fire(schedule: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (seconds dropped for 5-field schedules)."""
    parsed = parse(schedule)
    if parsed.every is not None:
        return after + parsed.every
    return _next_time(parsed, after)


def _parse_every(schedule: str, rest: str) -> timedelta:
    try:
        seconds = parse_duration(rest.replace(" ", "").lower())
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise CronError(f"schedule {schedule!r}: @every expects a positive duration such as 30s, 5m, 1h or "
                        f"1h30m, got {rest!r}")
    return timedelta(seconds=seconds)


def _parse_field(schedule: str, name: str, text: str) -> frozenset[int]:
    low, high = _RANGES[name]

    def fail(why: str) -> CronError:
        return CronError(f"schedule {schedule!r}: {name} field {text!r}: {why}")

    def number(token: str) -> int:
        names = _NAMES.get(name, {})
        if token.upper() in names:
            return names[token.upper()]
        if not token.isdigit():
            hint = f" or a name ({'/'.join(names)})" if names else ""
            raise fail(f"{token!r} is not a number{hint}")
        value = int(token)
        if not low <= value <= high:
            raise fail(f"{value} is out of range {low}-{high}")
        return value

    result: set[int] = set()
    for part in text.split(","):
        if not part:
            raise fail("empty list item")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise fail(f"step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = number(first), number(last)
            if start > end:
                raise fail(f"range {base!r} goes backwards")
        else:
            start = number(base)
            end = high if slash else start
        result.update(range(start, end + 1, step))
    return frozenset(result)


def _next_time(s: Schedule, after: datetime) -> datetime:
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = after.replace(tzinfo=None) + timedelta(days=366 * _SEARCH_YEARS)
    while t.replace(tzinfo=None) <= limit:
        if t.month not in s.months:
            t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
        elif not s.day_matches(t):
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
        elif t.hour not in s.hours:
            t = t.replace(minute=0) + timedelta(hours=1)
        elif t.minute not in s.minutes:
            t = t + timedelta(minutes=1)
        else:
            return t
    raise CronError(f"schedule {s.text!r}: never fires (no matching time in {_SEARCH_YEARS} years)")
