"""Cron schedules for data operations: known fire times, cron's day-of-month/day-of-week OR rule, errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shipyard.data.operations.cron import CronError, next_fire, parse


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# 2026-01-01 is a Thursday; 2026-01-02 a Friday; 2026-01-04 a Sunday; 2026-01-05 a Monday.
@pytest.mark.parametrize("schedule, after, expected", [
    ("*/15 * * * *", "2026-01-01T10:07:30", "2026-01-01T10:15:00"),
    ("0 * * * *", "2026-01-01T10:00:00", "2026-01-01T11:00:00"),          # strictly after
    ("0 * * * *", "2026-01-01T10:00:30", "2026-01-01T11:00:00"),
    ("* * * * *", "2026-01-01T10:00:59.999", "2026-01-01T10:01:00"),
    ("0 9 * * MON-FRI", "2026-01-02T09:00:00", "2026-01-05T09:00:00"),    # Friday -> Monday
    ("30 2 1 * *", "2026-01-15T00:00:00", "2026-02-01T02:30:00"),
    ("0 12 1 JAN,jul *", "2026-02-01T00:00:00", "2026-07-01T12:00:00"),   # names, any case
    ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),         # the next leap day
    ("0 0 * * 7", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),          # 7 is Sunday too
    ("0 0 * * sun", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),
    ("0 8-18/5 * * *", "2026-01-01T13:00:00", "2026-01-01T18:00:00"),     # 8, 13, 18
    ("0 8-18/5 * * *", "2026-01-01T18:00:00", "2026-01-02T08:00:00"),
    ("5/20 * * * *", "2026-01-01T10:45:00", "2026-01-01T11:05:00"),       # 5, 25, 45
    ("1,2,30-31 * * * *", "2026-01-01T10:02:00", "2026-01-01T10:30:00"),
    ("59 23 31 12 *", "2026-12-31T23:59:00", "2027-12-31T23:59:00"),
    ("0 0 31 * *", "2026-01-31T00:00:00", "2026-03-31T00:00:00"),         # February has no 31st
    ("@hourly", "2026-01-01T10:59:59", "2026-01-01T11:00:00"),
    ("@daily", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),
    ("@midnight", "2026-01-01T23:59:00", "2026-01-02T00:00:00"),
    ("@weekly", "2026-01-01T08:00:00", "2026-01-04T00:00:00"),
    ("@monthly", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
    ("@yearly", "2026-01-01T00:00:00", "2027-01-01T00:00:00"),
    ("@annually", "2026-06-01T00:00:00", "2027-01-01T00:00:00"),
])
def test_known_fire_times(schedule: str, after: str, expected: str) -> None:
    assert next_fire(schedule, at(after)) == at(expected)


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # "the 13th, or any Friday": Fri 2, Fri 9, Tue 13, Fri 16 in January 2026
    fires, t = [], at("2026-01-01T00:00:00")
    for _ in range(4):
        t = next_fire("0 0 13 * FRI", t)
        fires.append(t.day)
    assert fires == [2, 9, 13, 16]


def test_a_star_field_makes_it_and() -> None:
    # day-of-month "*/2" starts with "*", so (as in cron) both fields must match: odd days that are Mondays
    t1 = next_fire("0 0 */2 * MON", at("2026-01-01T00:00:00"))
    t2 = next_fire("0 0 */2 * MON", t1)
    assert (t1, t2) == (at("2026-01-05T00:00:00"), at("2026-01-19T00:00:00"))
    assert next_fire("0 0 1-7 * *", at("2026-01-07T00:00:00")) == at("2026-02-01T00:00:00")


def test_every_is_an_interval_after_the_given_time() -> None:
    t = at("2026-01-01T10:00:07")
    assert next_fire("@every 30s", t) == t + timedelta(seconds=30)
    assert next_fire("@every 5m", t) == t + timedelta(minutes=5)
    assert next_fire("@every 1h30m", t) == t + timedelta(minutes=90)
    assert next_fire("@every 250ms", t) == t + timedelta(milliseconds=250)


def test_timezone_is_kept() -> None:
    after = datetime(2026, 1, 1, 10, 7, tzinfo=timezone.utc)
    fire = next_fire("*/10 * * * *", after)
    assert fire == datetime(2026, 1, 1, 10, 10, tzinfo=timezone.utc) and fire.tzinfo is timezone.utc


def test_whitespace_and_parse() -> None:
    schedule = parse("  0   9 * *  1-5 ")
    assert schedule.minutes == {0} and schedule.hours == {9} and schedule.weekdays == {1, 2, 3, 4, 5}
    assert schedule.dom_star and not schedule.dow_star


@pytest.mark.parametrize("schedule, words", [
    ("61 * * * *", ["minute", "61", "0-59"]),
    ("* 24 * * *", ["hour", "24", "0-23"]),
    ("* * 0 * *", ["day-of-month", "0", "1-31"]),
    ("* * * 13 *", ["month", "13", "1-12"]),
    ("* * * * FUNDAY", ["day-of-week", "FUNDAY", "SUN"]),
    ("* * * FOO *", ["month", "FOO", "JAN"]),
    ("*/0 * * * *", ["minute", "step"]),
    ("5-1 * * * *", ["minute", "backwards"]),
    ("1,,2 * * * *", ["minute", "empty"]),
    ("* * * *", ["5 fields", "got 4"]),
    ("* * * * * *", ["5 fields", "got 6"]),
    ("@fortnightly", ["unknown macro", "@every"]),
    ("@daily 3", ["unknown macro"]),
    ("@every", ["@every", "30s"]),
    ("@every 10x", ["@every", "10x"]),
    ("@every 0s", ["@every", "positive"]),
    ("", ["schedule", "expected a cron expression"]),
    ("0 0 30 2 *", ["never fires"]),
])
def test_errors_name_the_field(schedule: str, words: list[str]) -> None:
    with pytest.raises(CronError) as info:
        next_fire(schedule, at("2026-01-01T00:00:00"))
    for word in words:
        assert word in str(info.value)
