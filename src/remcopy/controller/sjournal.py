# The secondary journal of one async consistency group: updates that arrived from the
# group's primaries but are not yet written to the secondary volumes, and the consistency
# time C up to which they have been.
#
# Why (DESIGN.md section 2, "Async consistency groups keep a consistency time C"): a secondary
# controller writes an async group's updates to its volumes only once every primary of the
# group has said, by its watermark, that nothing stamped earlier is still to come. Until then
# an update waits here. It must wait durably: the primary was told "arrived" and dropped it
# from its own journal, so after a kill -9 of the secondary it exists nowhere else.
#
# Format: segment files (segmentlog.py: `sjournal/GROUP.NNNNNNNN.jnl`, old ones deleted whole)
# of records, each `kind u8 | ...`:
# - `U`: `seq u64 | source u32 | device u16 | flags u8 | stamp u64 | offset u64 | length u32 |
#   data` — an update from primary controller `source`, in arrival order.
# - `C`: `at_ns u64` — the consistency time C. Written before the updates stamped < C are
#   written to the volumes, so a restart applies them again, in the same order, and C never
#   goes back. Each new segment begins with the C of then, so deleting older segments never
#   takes C back.
# - `D`: `device u16` — every earlier update of this device was applied (or its tracks
#   recorded) outside the order of C: when the pair left DUPLEX, or at a recover. A replay
#   forgets them (the volume may have newer data since).
# Retirement, not compaction: the journal counts, per segment, the updates in it still
# waiting. An old segment whose updates are all settled (written to the volumes, or dropped)
# is deleted whole once the group's volumes are fdatasync'd (consistency.py): nothing that
# waits is ever copied again.
#
# Durability: an update batch is acknowledged to its primary only once its records are on
# disk (fdatasync, and the folder's fsync for a new segment): the primary then forgets them,
# and a power loss here must not take back an update that C may already cover at a sibling
# secondary. `JournalSyncer` does the fdatasyncs on one writer thread with group commit
# (groupcommit.py, the same shape as the pair-state commits): batches that arrive while one
# fdatasync runs share the next.
#
# Rules this module keeps:
# - `append` returns once the record is in the file (page cache: it survives kill -9); the
#   syncer's future for it is done once it survives power loss.
# - Replay is pure reading: what waits, and the last C.
# - Segments are retired only while no fdatasync runs (the syncer is held), oldest first.
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from remcopy.controller.groupcommit import GroupCommit
from remcopy.controller.segmentlog import SEGMENT_BYTES_DEFAULT, SegmentLog

_UPDATE = struct.Struct("!cQIHBQQI")
_CUT = struct.Struct("!cQ")
_DROP = struct.Struct("!cH")


@dataclass(slots=True, kw_only=True)
class Waiting:
    """One update that arrived and waits for C to pass its stamp."""

    seq: int
    source: int
    device: int
    flags: int
    stamp_ns: int
    offset: int
    data: bytes
    segment: int = 0
    """The journal segment its record is in."""

    def header(self) -> bytes:
        return _UPDATE.pack(
            b"U",
            self.seq,
            self.source,
            self.device,
            self.flags,
            self.stamp_ns,
            self.offset,
            len(self.data),
        )


@dataclass(slots=True)
class Replayed:
    """What a journal file says at start: the last C and the updates still waiting."""

    applied_ns: int
    waiting: list[Waiting]
    next_seq: int


class SecondaryJournal:
    """The segment files of one group's arrived, not yet applied updates."""

    def __init__(self, path: Path, *, segment_bytes: int = SEGMENT_BYTES_DEFAULT) -> None:
        # `path` names the group's journal (`sjournal/GROUP.jnl`); its segments sit beside it.
        self.path = path
        self.log = SegmentLog(
            path.parent, path.stem, "secondary journal", segment_bytes=segment_bytes
        )
        self.cut_ns = 0
        """The last C written (or replayed): the head of every new segment."""
        self._live: dict[int, int] = {}
        """Per segment: its updates still waiting (not written, not dropped)."""
        self.retired = 0

    def __repr__(self) -> str:
        return f"<SecondaryJournal {self.path.name} {self.log!r}>"

    @property
    def size_bytes(self) -> int:
        return self.log.size_bytes

    def replay(self) -> Replayed:
        """The last C written and every update after the last drop of its device, in order."""
        applied_ns, waiting, next_seq = 0, [], 1
        for number, raw in self.log.read():
            at = 0
            while at < len(raw):
                kind = raw[at : at + 1]
                if kind == b"U" and at + _UPDATE.size <= len(raw):
                    _, seq, source, device, flags, stamp, offset, length = _UPDATE.unpack_from(
                        raw, at
                    )
                    start = at + _UPDATE.size
                    if start + length > len(raw):
                        break  # torn last record: it was never acknowledged to the primary
                    waiting.append(
                        Waiting(
                            seq=seq,
                            source=source,
                            device=device,
                            flags=flags,
                            stamp_ns=stamp,
                            offset=offset,
                            data=raw[start : start + length],
                            segment=number,
                        )
                    )
                    next_seq = seq + 1
                    at = start + length
                elif kind == b"C" and at + _CUT.size <= len(raw):
                    applied_ns = max(applied_ns, _CUT.unpack_from(raw, at)[1])
                    at += _CUT.size
                elif kind == b"D" and at + _DROP.size <= len(raw):
                    device = _DROP.unpack_from(raw, at)[1]
                    waiting = [w for w in waiting if w.device != device]
                    at += _DROP.size
                else:
                    break  # torn (or unknown) tail
            if at < len(raw):
                break  # nothing after a torn record was acknowledged
        self.cut_ns = applied_ns
        self._live = {}
        for w in waiting:
            self._live[w.segment] = self._live.get(w.segment, 0) + 1
        return Replayed(applied_ns=applied_ns, waiting=waiting, next_seq=next_seq)

    def _roll_if_full(self) -> None:
        if self.log.full():
            self.log.roll()
            if self.cut_ns:
                self.log.append((_CUT.pack(b"C", self.cut_ns),))

    def append(self, waiting: Waiting) -> None:
        """Journal an arrived update (it counts as waiting until `settle`)."""
        self._roll_if_full()
        # The header and the data as they are: no copy of the data.
        waiting.segment = self.log.append((waiting.header(), waiting.data))
        self._live[waiting.segment] = self._live.get(waiting.segment, 0) + 1

    def settle(self, waiting: Waiting) -> None:
        """This update no longer waits: written to its volume, or dropped."""
        left = self._live.get(waiting.segment, 0) - 1
        if left > 0:
            self._live[waiting.segment] = left
        else:
            self._live.pop(waiting.segment, None)

    def cut(self, at_ns: int) -> None:
        """Record C (after every update before it): before anything < C is applied."""
        self._roll_if_full()
        self.log.append((_CUT.pack(b"C", at_ns),))
        self.cut_ns = max(self.cut_ns, at_ns)

    def drop(self, device: int) -> None:
        self._roll_if_full()
        self.log.append((_DROP.pack(b"D", device),))

    def retirable(self) -> list[int]:
        """The oldest segments, not the current one, with nothing waiting in them."""
        out = []
        for number in self.log.numbers:
            if number == self.log.current or self._live.get(number):
                break
            out.append(number)
        return out

    def retire(self, numbers: list[int]) -> None:
        """Delete these segments: call only once what was written from them is on disk in
        the volumes, and while no `sync` runs."""
        self.log.retire(numbers)
        self.retired += len(numbers)

    def sync(self) -> None:
        self.log.sync()

    def close(self) -> None:
        self.log.close()


class JournalSyncer(GroupCommit[SecondaryJournal]):
    """fdatasync of the secondary journals, off the event loop, many batches per call:
    `submit_item(journal)` after appending; its future is done once what was appended to that
    journal before the call is on disk."""

    thread_name = "sjournal"

    def _write(self, items: list[SecondaryJournal]) -> None:
        synced: set[int] = set()
        for journal in items:
            if id(journal) not in synced:
                synced.add(id(journal))
                journal.sync()
