# The async journal: updates a primary acknowledged to hosts but the secondary has not yet
# confirmed, kept in a file so a killed primary still ships them after a restart.
#
# Why: in async mode the host is acknowledged after the local write (DESIGN.md section 2).
# The update must then reach the secondary even if the primary process dies before shipping
# it, or the secondary would silently miss an acknowledged write while the pair still says
# DUPLEX. So every async update is appended here (page cache: it survives kill -9) before the
# host is acknowledged, and a restarted controller replays the file, in order.
#
# Format: segment files (segmentlog.py: `journal/SERIAL.NNNNNNNN.jnl`) of records `seq u64 |
# device u16 | timestamp_ns u64 | offset u64 | length u32 | data`, appended in the order the
# updates were pushed on the link. Replaying them all in order is safe even if some records
# were applied already: block writes applied again in the same order leave the same bytes.
#
# Rules this module keeps:
# - `append` returns only after the record is in the file; it says which segment.
# - A segment is deleted whole once every record in it was settled (confirmed, or its tracks
#   change-recorded), and the current one is emptied when every record is: under a steady
#   stream the journal holds about what is unconfirmed, not everything since the link was
#   last idle, and a segment deleted before writeback never reaches the disk.
# - A journal over JOURNAL_SIZE_MAX_BYTES refuses more appends (the controller answers busy):
#   lag is bounded by design, not by memory.
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from remcopy.controller.segmentlog import SEGMENT_BYTES_DEFAULT, SegmentLog
from remcopy.errors import DeviceBusy
from remcopy.wire.native import Update

# 1 GiB of unshipped updates: minutes of lag at the rates a link here sustains.
JOURNAL_SIZE_MAX_BYTES: Final = 1024 * 1024 * 1024
_RECORD = struct.Struct("!QHQQI")


@dataclass(frozen=True, slots=True)
class Record:
    """A journaled update and the segment it is in (settle it with that)."""

    segment: int
    update: Update


class Journal:
    """The segment files of unconfirmed async updates for one replication link."""

    def __init__(self, path: Path, *, segment_bytes: int = SEGMENT_BYTES_DEFAULT) -> None:
        # `path` names the link's journal (`journal/SERIAL.jnl`); its segments sit beside it.
        self.path = path
        self.log = SegmentLog(path.parent, path.stem, "journal", segment_bytes=segment_bytes)
        self._next_seq = 1
        self._unsettled: dict[int, int] = {}
        """Per segment: its records not yet settled."""
        self.unconfirmed = 0
        self.appended = 0

    def __repr__(self) -> str:
        return f"<Journal {self.path.name} bytes={self.size_bytes} unconfirmed={self.unconfirmed}>"

    @property
    def size_bytes(self) -> int:
        return self.log.size_bytes

    def replay(self) -> list[Record]:
        """Every record in the files, in order (call once, at start, before appending)."""
        records = []
        for number, raw in self.log.read():
            at = 0
            while at + _RECORD.size <= len(raw):
                seq, device, stamp, offset, length = _RECORD.unpack_from(raw, at)
                data = raw[at + _RECORD.size : at + _RECORD.size + length]
                if len(data) < length:
                    break  # a torn last record: its write was never acknowledged
                update = Update(device=device, timestamp_ns=stamp, offset=offset, data=data)
                records.append(Record(segment=number, update=update))
                self._next_seq = seq + 1
                at += _RECORD.size + length
            if at < len(raw):
                break
        self.unconfirmed = len(records)
        self._unsettled = {}
        for record in records:
            self._unsettled[record.segment] = self._unsettled.get(record.segment, 0) + 1
        return records

    def check_room(self) -> None:
        """Refuse (busy) before a write is done locally if its update could not be journaled."""
        if self.size_bytes >= JOURNAL_SIZE_MAX_BYTES:
            raise DeviceBusy(
                f"journal {self.path.name} holds {self.size_bytes} bytes of unconfirmed "
                "updates: the secondary is too far behind: retry"
            )

    def append(self, update: Update) -> int:
        """Journal an update; the segment it is in."""
        self.check_room()
        head = _RECORD.pack(
            self._next_seq, update.device, update.timestamp_ns, update.offset, len(update.data)
        )
        if self.log.full():
            self.log.roll()
        segment = self.log.append((head, update.data))  # the data as it is: no copy
        self._unsettled[segment] = self._unsettled.get(segment, 0) + 1
        self._next_seq += 1
        self.unconfirmed += 1
        self.appended += 1
        return segment

    def settled(self, segment: int) -> None:
        """One record of `segment` was confirmed (or its tracks were change-recorded after a
        failure)."""
        self.unconfirmed -= 1
        assert self.unconfirmed >= 0, "journal settled more records than it holds"
        left = self._unsettled[segment] - 1
        if left:
            self._unsettled[segment] = left
            return
        del self._unsettled[segment]
        if segment != self.log.current:
            self.log.retire([segment])
        elif not self.unconfirmed:
            self.log.empty_current()

    def flush(self) -> None:
        self.log.sync()

    def close(self) -> None:
        self.log.close()
