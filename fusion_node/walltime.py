"""UTC wall time for consumers: nanoseconds since the epoch to ISO 8601 and back.

The node times everything on its monotonic clock; people and security systems want the date.
Each record and lifecycle event carries both: the monotonic nanoseconds for arithmetic, and the
UTC time as ``2026-11-22T14:03:07.123456Z`` (microseconds, always ``Z``) for people and logs.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["utc_iso", "parse_utc_ns", "mono_to_wall_ns"]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def utc_iso(wall_ns: int) -> str:
    """``wall_ns`` (ns since the Unix epoch) as ISO 8601 UTC with microseconds and a ``Z``."""
    t = _EPOCH + _dt.timedelta(microseconds=int(wall_ns) // 1000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc_ns(text: str) -> int:
    """An ISO 8601 date or date-time (no zone: UTC) as ns since the epoch; ValueError otherwise."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    t = _dt.datetime.fromisoformat(value)
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def mono_to_wall_ns(t_mono_ns: int, now_mono_ns: int, now_wall_ns: int) -> int:
    """A monotonic time as wall time, through one (monotonic, wall) reading taken together."""
    return int(now_wall_ns - (now_mono_ns - t_mono_ns))
