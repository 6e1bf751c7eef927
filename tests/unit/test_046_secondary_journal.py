# The secondary journal of an async consistency group (controller/sjournal.py): what a
# restart finds in it decides what is written again and what still waits for C.
from __future__ import annotations

import os
from pathlib import Path

from remcopy.controller.sjournal import SecondaryJournal, Waiting


def _update(seq: int, device: int, stamp: int, data: bytes = b"x" * 8) -> Waiting:
    return Waiting(
        seq=seq, source=64015, device=device, flags=0, stamp_ns=stamp, offset=seq * 8, data=data
    )


def test_replay_gives_the_last_c_and_every_update_in_arrival_order(tmp_path: Path) -> None:
    journal = SecondaryJournal(tmp_path / "g.jnl")
    for seq, stamp in ((1, 100), (2, 150), (3, 120)):
        journal.append(_update(seq, 0x0A00, stamp))
    journal.cut(130)
    journal.append(_update(4, 0x0A01, 200))
    journal.close()
    replayed = SecondaryJournal(tmp_path / "g.jnl").replay()
    assert replayed.applied_ns == 130
    assert [w.seq for w in replayed.waiting] == [1, 2, 3, 4]
    assert replayed.next_seq == 5


def test_a_drop_forgets_the_earlier_updates_of_that_device_only(tmp_path: Path) -> None:
    journal = SecondaryJournal(tmp_path / "g.jnl")
    journal.append(_update(1, 0x0A00, 100))
    journal.append(_update(2, 0x0A01, 110))
    journal.drop(0x0A00)
    journal.append(_update(3, 0x0A00, 120))
    journal.close()
    replayed = SecondaryJournal(tmp_path / "g.jnl").replay()
    assert [(w.seq, w.device) for w in replayed.waiting] == [(2, 0x0A01), (3, 0x0A00)]


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "g.jnl"
    journal = SecondaryJournal(path)
    journal.append(_update(1, 0x0A00, 100))
    journal.append(_update(2, 0x0A00, 110, data=b"y" * 4096))
    journal.close()
    os.truncate(path, path.stat().st_size - 100)  # a kill -9 inside the second append
    replayed = SecondaryJournal(path).replay()
    assert [w.seq for w in replayed.waiting] == [1]


def test_compaction_keeps_c_and_what_still_waits(tmp_path: Path) -> None:
    path = tmp_path / "g.jnl"
    journal = SecondaryJournal(path)
    for seq in range(1, 50):
        journal.append(_update(seq, 0x0A00, 100 + seq))
    waiting = [_update(7, 0x0A00, 300, data=b"z" * 16)]
    journal.compact(250, waiting)
    journal.append(_update(8, 0x0A01, 400))
    journal.close()
    replayed = SecondaryJournal(path).replay()
    assert replayed.applied_ns == 250
    assert [(w.seq, w.data) for w in replayed.waiting] == [(7, b"z" * 16), (8, b"x" * 8)]
