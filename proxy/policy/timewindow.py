"""``time: {days, between, tz}``: a weekly window of local time in an IANA time zone.

A window is a set of days of the week and a span of the day, ``between: "HH:MM-HH:MM"``
(start included, end excluded; ``24:00`` is allowed as the end). A span whose end is before
its start runs over midnight: ``"22:00-06:00"`` with ``days: [fri]`` is Friday 22:00 to
Saturday 06:00, i.e. the day named is the day the span starts on. Without ``days`` every day
counts; without ``between`` the whole day.

Local time is what the wall clock of the zone shows at the instant (``zoneinfo``, the
standard library's IANA database): on the day clocks go forward an hour that does not exist
locally never matches, and on the day they go back the repeated hour matches twice. The
instant comes in as ``wall`` (Unix seconds, UTC); this module reads no clock.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

__all__ = ["DAY_NAMES", "MINUTES_PER_DAY", "TimeWindow", "format_minutes"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
ALL_DAYS = (1 << 7) - 1


def format_minutes(minutes: int) -> str:
    """``510`` -> ``"08:30"``; ``1440`` -> ``"24:00"``."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class TimeWindow:
    """Days (bit ``i`` set: ``DAY_NAMES[i]``), a span ``start..end`` in minutes of the local
    day (``0 <= start < 1440``, ``0 < end <= 1440``, ``start != end``) and a zone.

    :meth:`contains` remembers its last answer for the minute it was asked about (UTC
    minutes are local minutes in every zone whose offset is whole minutes, i.e. every zone
    since the 1970s): a busy proxy converts the time once a minute per window, not per call.
    """

    __slots__ = ("days", "start", "end", "tz_name", "zone", "_minute", "_answer")

    def __init__(self, days: int, start: int, end: int, tz_name: str, zone: tzinfo) -> None:
        self.days = days
        self.start = start
        self.end = end
        self.tz_name = tz_name
        self.zone = zone
        self._minute = -1
        self._answer = False

    def contains(self, wall: float) -> bool:
        """Whether the instant ``wall`` (Unix seconds) falls in the window."""
        minute = int(wall // 60)
        if minute == self._minute:
            return self._answer
        local = datetime.fromtimestamp(wall, self.zone)
        answer = self.contains_local(local.weekday(), local.hour * 60 + local.minute)
        self._minute = minute
        self._answer = answer
        return answer

    def contains_local(self, weekday: int, minute: int) -> bool:
        """``weekday`` 0 (Monday) .. 6, ``minute`` of the local day 0..1439."""
        if self.start < self.end:
            return self.start <= minute < self.end and bool(self.days >> weekday & 1)
        # Over midnight: the evening part on a day named, the morning part on the day after.
        if minute >= self.start:
            return bool(self.days >> weekday & 1)
        return minute < self.end and bool(self.days >> ((weekday - 1) % 7) & 1)

    def same_as(self, other: TimeWindow) -> bool:
        return (self.days, self.start, self.end, self.tz_name) == (
            other.days, other.start, other.end, other.tz_name)

    def text(self) -> str:
        """``mon-fri 08:00-18:00 Europe/Berlin``, as :func:`describe_days` writes days."""
        parts = []
        if self.days != ALL_DAYS:
            parts.append(describe_days(self.days))
        if (self.start, self.end) != (0, MINUTES_PER_DAY):
            parts.append(f"{format_minutes(self.start)}-{format_minutes(self.end)}")
        parts.append(self.tz_name)
        return " ".join(parts)


def describe_days(days: int) -> str:
    """A day mask as ``mon-fri``, ``sat, sun`` or ``mon, wed-fri``."""
    runs: list[str] = []
    i = 0
    while i < 7:
        if not days >> i & 1:
            i += 1
            continue
        j = i
        while j + 1 < 7 and days >> (j + 1) & 1:
            j += 1
        if j - i >= 2:
            runs.append(f"{DAY_NAMES[i]}-{DAY_NAMES[j]}")
        else:
            runs.extend(DAY_NAMES[k] for k in range(i, j + 1))
        i = j + 1
    return ", ".join(runs)
