# The async journal of a primary (controller/journal.py) in segment files: what a restart
# replays, and that a steady stream keeps only about what is unconfirmed.
from __future__ import annotations

from pathlib import Path

import pytest

from remcopy.controller.journal import Journal
from remcopy.controller.segmentlog import segment_numbers
from remcopy.wire.native import Update


def _update(n: int, size: int = 64) -> Update:
    return Update(device=0x2000, timestamp_ns=1000 + n, offset=n * size, data=bytes([n]) * size)


def test_a_settled_segment_is_deleted_and_a_replay_finds_exactly_the_unsettled(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "1.jnl", segment_bytes=150)  # two 94-byte records each
    segments = [journal.append(_update(n)) for n in range(1, 8)]
    assert segments == [1, 1, 2, 2, 3, 3, 4]
    for n in (1, 2, 3):  # confirmed in order: segment 1 whole, one record of segment 2
        journal.settled(segments[n - 1])
    assert segment_numbers(tmp_path, "1") == [2, 3, 4]
    assert journal.unconfirmed == 4
    journal.close()
    replayed = Journal(tmp_path / "1.jnl", segment_bytes=150).replay()
    # The settled record of segment 2 comes back too: applied again in order, same bytes.
    assert [r.update.offset // 64 for r in replayed] == [3, 4, 5, 6, 7]
    assert [r.segment for r in replayed] == [2, 2, 3, 3, 4]


def test_a_steady_stream_keeps_only_what_is_unconfirmed(tmp_path: Path) -> None:
    """Never idle, never empty: old segments go as their records are confirmed, so the
    journal's size follows the lag, not the bytes sent since the link was last idle."""
    journal = Journal(tmp_path / "1.jnl", segment_bytes=1000)
    in_flight: list[int] = []
    for n in range(1, 200):
        in_flight.append(journal.append(_update(n % 250)))
        if len(in_flight) > 5:
            journal.settled(in_flight.pop(0))
        assert journal.size_bytes <= 1000 + 6 * 94
    assert journal.appended == 199 and journal.unconfirmed == 5
    for segment in in_flight:
        journal.settled(segment)
    assert journal.size_bytes == 0 and journal.unconfirmed == 0


def test_settling_more_than_was_journaled_is_a_bug(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "1.jnl")
    segment = journal.append(_update(1))
    journal.settled(segment)
    with pytest.raises(AssertionError):
        journal.settled(segment)


def test_a_single_file_journal_of_an_earlier_version_replays(tmp_path: Path) -> None:
    """`SERIAL.jnl` (one file, as earlier versions wrote it) is taken over as segment 0."""
    old = Journal(tmp_path / "x" / "1.jnl")
    for n in (1, 2):
        old.append(_update(n))
    old.close()
    (tmp_path / "x" / "1.00000001.jnl").rename(tmp_path / "1.jnl")
    replayed = Journal(tmp_path / "1.jnl").replay()
    assert [(r.segment, r.update.offset) for r in replayed] == [(0, 64), (0, 128)]
    assert not (tmp_path / "1.jnl").exists()
