"""Weekly opening hours in a local zone: is a moment inside them, and when do they next open.

Kept apart from the policy table because this is where daylight saving bites. Local wall
times become instants one day at a time (so a 23- or 25-hour day moves a window's UTC
edges, never its local hours), and every comparison is made in UTC: Python compares two
datetimes that share a tzinfo by wall time, which is wrong inside a repeated hour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

#: Days searched for the next opening. The strictest week here opens five days in seven,
#: and no calendar closes more than a handful of days in a row, so two months is ample;
#: a policy that never opens answers None instead of looping.
HORIZON_DAYS = 62


@dataclass(frozen=True, slots=True)
class Window:
    """Local opening hours of one day: `start` allowed, `end` already outside."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"a window must start before it ends: {self}")

    def __str__(self) -> str:
        return f"{self.start:%H:%M}–{self.end:%H:%M}"


#: Seven entries, Monday first; an empty entry is a day with no contact at all.
Week = tuple[tuple[Window, ...], ...]


def hours(start: int, end: int) -> tuple[Window, ...]:
    """One window from `start`:00 to `end`:00 local time."""
    return (Window(time(start), time(end)),)


def every_day(windows: tuple[Window, ...]) -> Week:
    return (windows,) * 7


def week(
    *,
    weekdays: tuple[Window, ...],
    saturday: tuple[Window, ...] = (),
    sunday: tuple[Window, ...] = (),
) -> Week:
    """Monday to Friday alike; weekends closed unless given."""
    return (weekdays,) * 5 + (saturday, sunday)


def describe(windows: tuple[Window, ...]) -> str:
    return ", ".join(str(w) for w in windows) if windows else "closed"


def local_instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time (a skipped time lands after the jump)."""
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def next_opening(
    schedule: Week,
    zone: ZoneInfo,
    after: datetime,
    *,
    closed: Callable[[date], bool] = lambda _day: False,
) -> datetime | None:
    """The first instant at or after `after` inside the hours (UTC), or None within the horizon.

    Equal to `after` exactly when `after` is itself inside the hours.
    """
    start_day = after.astimezone(zone).date()
    for offset in range(HORIZON_DAYS):
        day = start_day + timedelta(days=offset)
        if closed(day):
            continue
        for window in schedule[day.weekday()]:
            if after < local_instant(day, window.end, zone):
                return max(after, local_instant(day, window.start, zone))
    return None


def week_start(at: datetime, zone: ZoneInfo) -> datetime:
    """Monday 00:00 local of `at`'s calendar week, as a UTC instant."""
    local = at.astimezone(zone).date()
    return local_instant(local - timedelta(days=local.weekday()), time(0), zone)


def next_week_start(at: datetime, zone: ZoneInfo) -> datetime:
    """The following Monday 00:00 local (computed on dates: a week with a DST change is
    not 168 hours long)."""
    local = at.astimezone(zone).date()
    return local_instant(local + timedelta(days=7 - local.weekday()), time(0), zone)
