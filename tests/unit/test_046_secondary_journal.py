# The secondary journal of an async consistency group (controller/sjournal.py): what a
# restart finds in it decides what is written again and what still waits for C.
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from remcopy.controller.segmentlog import segment_numbers
from remcopy.controller.sjournal import JournalSyncer, SecondaryJournal, Waiting


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


def _segment(path: Path, number: int) -> Path:
    return path.parent / f"{path.stem}.{number:08d}.jnl"


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "g.jnl"
    journal = SecondaryJournal(path)
    journal.append(_update(1, 0x0A00, 100))
    journal.append(_update(2, 0x0A00, 110, data=b"y" * 4096))
    journal.close()
    segment = _segment(path, 1)
    os.truncate(segment, segment.stat().st_size - 100)  # a kill -9 inside the second append
    replayed = SecondaryJournal(path).replay()
    assert [w.seq for w in replayed.waiting] == [1]


def test_segments_roll_each_begins_with_c_and_old_ones_retire_once_settled(
    tmp_path: Path,
) -> None:
    """A full segment rolls to a new one that starts with the C of then; a segment is
    retirable only when it is old and nothing in it waits, oldest first; a replay after
    retiring still finds C and exactly what waits."""
    path = tmp_path / "g.jnl"
    journal = SecondaryJournal(path, segment_bytes=200)
    updates = [_update(seq, 0x0A00, 100 + seq, data=bytes([seq]) * 64) for seq in range(1, 9)]
    for w in updates[:4]:
        journal.append(w)
    journal.cut(104)  # 1, 2 and 3 are below C: written to the volumes
    for w in updates[4:]:
        journal.append(w)
    assert len(segment_numbers(tmp_path, "g")) > 2
    assert journal.retirable() == []  # 1 still waits in the oldest segment
    for w in updates[:2]:
        journal.settle(w)
    assert journal.retirable() == [1]  # 3 waits in segment 2
    journal.settle(updates[2])
    retirable = journal.retirable()
    assert retirable and journal.log.current not in retirable
    assert all(w.segment not in retirable for w in updates[3:])
    journal.retire(retirable)
    journal.close()
    reopened = SecondaryJournal(path, segment_bytes=200)
    replayed = reopened.replay()
    assert replayed.applied_ns == 104  # from the head of a later segment
    # What the kept segments hold; the caller writes again what is below C (3, if kept).
    kept = [w.seq for w in updates if w.segment not in retirable]
    assert [w.seq for w in replayed.waiting] == kept
    assert kept[-5:] == [4, 5, 6, 7, 8]
    assert replayed.next_seq == 9
    assert reopened.retirable() == []  # what waits is counted again


def test_a_torn_record_ends_the_replay_even_in_an_older_segment(tmp_path: Path) -> None:
    """Nothing after a torn record was acknowledged: later segments are not read."""
    path = tmp_path / "g.jnl"
    journal = SecondaryJournal(path, segment_bytes=100)
    for seq in range(1, 5):
        journal.append(_update(seq, 0x0A00, 100 + seq, data=b"z" * 64))
    journal.close()
    first = _segment(path, 1)
    os.truncate(first, first.stat().st_size - 10)
    assert SecondaryJournal(path, segment_bytes=100).replay().waiting == []


def test_a_single_file_journal_of_an_earlier_version_is_taken_over(tmp_path: Path) -> None:
    """`GROUP.jnl` (one file, as earlier versions wrote it) becomes segment 0 and replays."""
    path = tmp_path / "g.jnl"
    first = _update(1, 0x0A00, 100)
    path.write_bytes(first.header() + first.data + b"C" + (150).to_bytes(8, "big"))
    journal = SecondaryJournal(path)
    replayed = journal.replay()
    assert not path.exists()
    assert segment_numbers(tmp_path, "g") == [0]
    assert replayed.applied_ns == 150 and [w.seq for w in replayed.waiting] == [1]
    journal.append(_update(2, 0x0A00, 160))  # appends go to segment 0 until it is full
    assert journal.log.current == 0


class _HeldSyncer(JournalSyncer):
    """A JournalSyncer whose first fdatasync waits until the test releases it (threading
    events: it runs on the writer thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.synced: list[list[str]] = []

    def _write(self, items: list[SecondaryJournal]) -> None:
        if not self.synced:
            self.entered.set()
            assert self.release.wait(timeout=60)
        self.synced.append([j.path.name for j in items])
        super()._write(items)


async def test_journal_syncs_queued_during_one_share_the_next_and_exclusive_waits(
    tmp_path: Path,
) -> None:
    """Journals queued while one fdatasync runs share the next; `exclusive` (deleting segments)
    waits for the running fdatasync and holds the next until it is done."""
    a = SecondaryJournal(tmp_path / "a.jnl")
    b = SecondaryJournal(tmp_path / "b.jnl")
    syncer = _HeldSyncer()
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(syncer.run())
        await asyncio.sleep(0)  # the writer task runs: submissions now queue
        a.append(_update(1, 0x0A00, 100))
        first = syncer.submit_item(a)
        assert first is not None
        await asyncio.to_thread(syncer.entered.wait)
        later = []
        for seq in range(2, 12):
            journal = a if seq % 2 else b
            journal.append(_update(seq, 0x0A00, 100 + seq))
            later.append(syncer.submit_item(journal))
        assert syncer.last is later[-1] and not first.done()
        held = tasks.create_task(_hold(syncer))
        await asyncio.sleep(0)
        assert not held.done()  # the fdatasync of `a` still runs
        syncer.release.set()
        await held  # it ran after the first batch, before the second
        await asyncio.gather(*[f for f in later if f is not None])
        running.cancel()
    assert syncer.synced == [
        ["a.jnl"],
        ["b.jnl", "a.jnl", "b.jnl", "a.jnl", "b.jnl", "a.jnl", "b.jnl", "a.jnl", "b.jnl", "a.jnl"],
    ]
    assert (syncer.figures.commits, syncer.figures.transactions) == (11, 2)
    assert syncer.last is None


async def _hold(syncer: JournalSyncer) -> None:
    async with syncer.exclusive():
        assert syncer.figures.transactions == 1  # the first batch is done, the second waits


def test_retiring_the_segment_that_holds_c_keeps_c(tmp_path: Path) -> None:
    """Each new segment begins with the C of then: when the segment C was written in is
    retired, a replay still finds it."""
    path = tmp_path / "g.jnl"
    journal = SecondaryJournal(path, segment_bytes=105)
    first = _update(1, 0x0A00, 100, data=b"a" * 64)
    journal.append(first)
    journal.cut(200)
    journal.settle(first)  # written: C passed it
    later = [_update(seq, 0x0A00, 300 + seq, data=b"b" * 64) for seq in (2, 3, 4)]
    for w in later:
        journal.append(w)
    assert journal.retirable() == [1]  # C was written in segment 1
    journal.retire(journal.retirable())
    assert first.segment not in segment_numbers(tmp_path, "g")
    journal.close()
    replayed = SecondaryJournal(path, segment_bytes=105).replay()
    assert replayed.applied_ns == 200
    assert [w.seq for w in replayed.waiting] == [2, 3, 4]
