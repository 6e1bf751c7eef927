# When a prospective suspend happens: the operator's words for T, turned into ns since the epoch.
#
# Why: the CLI (`--at`, `--in`) and the TUI's 5E panel take the same words, so both accept the
# same things and refuse the same things with the same message. T is the host's wall clock, as
# the timestamps the host stamps on its writes are (DESIGN.md, consistency): an absolute T is
# read in the local time zone unless it names one.
#
# Accepted:
# - `--in`: a duration from now, `50ms`, `2s`, `1.5s`, `15m`, `3h` (a scheduled suspend, hours
#   ahead, is armed at once and waited for: docs/groups.md).
# - `--at`: nanoseconds since the epoch (digits only); an ISO date and time
#   (`2026-11-26T14:05:00.250`, with or without a zone); or a time of day today
#   (`14:05`, `14:05:00`, `14:05:00.250`).
from __future__ import annotations

import re
import time
from datetime import date, datetime
from datetime import time as time_of_day
from typing import Final

from remcopy.errors import InputError

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_S: Final = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME_OF_DAY: Final = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")
AT_EXPECTED: Final = (
    "an ISO date and time (2026-11-26T14:05:00.250), a time of day today (14:05:00.250) "
    "or nanoseconds since the epoch"
)


def parse_within(text: str, *, now_ns: int | None = None) -> int:
    """T for `--in DURATION`: now plus the duration, in ns since the epoch."""
    match = _DURATION.match(text)
    if not match:
        raise InputError(f"--in: expected a duration such as 50ms, 2s, 15m or 3h (got {text!r})")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    return (time.time_ns() if now_ns is None else now_ns) + int(seconds * 1e9)


def parse_at(text: str, *, today: date | None = None) -> int:
    """T for `--at TIME`, in ns since the epoch."""
    raw = text.strip()
    if raw.isdigit():
        return int(raw)
    try:
        if _TIME_OF_DAY.match(raw):
            moment = datetime.combine(
                today or date.today(),
                time_of_day.fromisoformat(raw.zfill(len(raw) + (raw.index(":") == 1))),
            )
        else:
            moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InputError(f"--at: expected {AT_EXPECTED} (got {text!r})") from None
    return int(moment.timestamp() * 1_000_000) * 1000  # microseconds are exact in a float


SINCE_EXPECTED: Final = (
    "an age such as 90s, 30m or 2h, an ISO date and time (2026-11-26T14:05:00), a time of day "
    "today (14:05) or nanoseconds since the epoch"
)


def parse_since(text: str, *, now_ns: int | None = None) -> int:
    """A moment in the past for `--since`: an age (now minus a duration) or a time as `--at`
    takes it, in ns since the epoch."""
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        return (time.time_ns() if now_ns is None else now_ns) - int(seconds * 1e9)
    try:
        return parse_at(text)
    except InputError:
        raise InputError(f"--since: expected {SINCE_EXPECTED} (got {text!r})") from None


def suspend_at_ns(at: str | None, within: str | None) -> int | None:
    """T from `--at` or `--in` (not both); None lets the suspend pick now + margin."""
    if at and within:
        raise InputError("suspend: give --at or --in, not both")
    if within:
        return parse_within(within)
    if at:
        return parse_at(at)
    return None
