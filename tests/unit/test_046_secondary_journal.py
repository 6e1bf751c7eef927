# The secondary journal of an async consistency group (controller/sjournal.py): what a
# restart finds in it decides what is written again and what still waits for C.
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from remcopy.controller.sjournal import JournalSyncer, SecondaryJournal, Waiting, tail_records


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
    """Journals queued while one fdatasync runs share the next; `exclusive` (a compaction)
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


def test_a_compaction_written_meanwhile_keeps_what_happened_during_it(tmp_path: Path) -> None:
    """The new file is prepared from a snapshot; the tail adds the drops, the updates that
    arrived meanwhile and C as it is now: a replay of the installed file sees all of it."""
    journal = SecondaryJournal(tmp_path / "g.jnl")
    snapshot = [_update(2, 0x0A01, 160), _update(1, 0x0A00, 140)]
    for w in sorted(snapshot, key=lambda w: w.seq):
        journal.append(w)
    prepared = journal.prepare_compaction(130, snapshot)
    late = _update(3, 0x0A01, 170)
    journal.append(late)  # meanwhile, to the old file
    journal.drop(0x0A00)
    journal.install_compaction(prepared, tail_records([0x0A00], [late], 150))
    journal.append(_update(4, 0x0A01, 180))  # after: to the new file
    journal.close()
    replayed = SecondaryJournal(tmp_path / "g.jnl").replay()
    assert replayed.applied_ns == 150
    assert [w.seq for w in replayed.waiting] == [2, 3, 4]  # 1's device was dropped
    assert replayed.next_seq == 5
