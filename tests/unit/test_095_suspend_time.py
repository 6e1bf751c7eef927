# The words for a prospective suspend's T (groups/when.py), shared by the CLI and the TUI.
from __future__ import annotations

from datetime import date, datetime

import pytest

from remcopy.errors import InputError
from remcopy.groups.when import parse_at, parse_within, suspend_at_ns

TODAY = date(2026, 11, 26)


def local_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1_000_000) * 1000


def test_in_is_now_plus_a_duration() -> None:
    assert parse_within("50ms", now_ns=1_000) == 1_000 + 50_000_000
    assert parse_within(" 2s ", now_ns=0) == 2_000_000_000
    assert parse_within("1.5s", now_ns=0) == 1_500_000_000
    assert parse_within("15m", now_ns=0) == 900_000_000_000
    assert parse_within("2h", now_ns=5) == 5 + 7_200_000_000_000


@pytest.mark.parametrize("text", ["50", "ms", "-5ms", "5 minutes", "2d", "1h30m", ""])
def test_in_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(InputError, match=r"--in: expected a duration such as 50ms, 2s, 15m or 3h"):
        parse_within(text)


def test_at_takes_ns_iso_and_a_time_of_day_today() -> None:
    assert parse_at("1795701900250000000") == 1795701900250000000
    assert parse_at("2026-11-26T14:05:00.250") == local_ns("2026-11-26T14:05:00.250")
    assert parse_at("2026-11-26T14:05:00+00:00") == 1795701900 * 10**9  # 2026-11-26 14:05 UTC
    assert parse_at("14:05", today=TODAY) == local_ns("2026-11-26T14:05:00")
    assert parse_at("14:05:00.250", today=TODAY) == local_ns("2026-11-26T14:05:00.250")
    assert parse_at("9:05:07", today=TODAY) == local_ns("2026-11-26T09:05:07")


@pytest.mark.parametrize("text", ["soon", "25:00", "14:61:00", "2026-13-01T00:00", "14:05:00.", ""])
def test_at_refuses_naming_what_it_expected(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_at(text)
    message = str(caught.value)
    assert message.startswith("--at: expected an ISO date and time")
    assert "a time of day today" in message and repr(text) in message


def test_at_and_in_together_are_refused_and_neither_means_the_margin() -> None:
    with pytest.raises(InputError, match="give --at or --in, not both"):
        suspend_at_ns("14:05", "50ms")
    assert suspend_at_ns(None, None) is None
    assert suspend_at_ns("1000", None) == 1000
