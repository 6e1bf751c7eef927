# The async journal: updates a primary acknowledged to hosts but the secondary has not yet
# confirmed, kept in a file so a killed primary still ships them after a restart.
#
# Why: in async mode the host is acknowledged after the local write (DESIGN.md section 2).
# The update must then reach the secondary even if the primary process dies before shipping
# it, or the secondary would silently miss an acknowledged write while the pair still says
# DUPLEX. So every async update is appended here (page cache: it survives kill -9) before the
# host is acknowledged, and a restarted controller replays the file, in order.
#
# Format: records of `seq u64 | device u16 | timestamp_ns u64 | offset u64 | length u32 |
# data`, appended in the order the updates were pushed on the link. Replaying the whole file
# in order is safe even if some records were applied already: block writes applied again in
# the same order leave the same bytes.
#
# Rules this module keeps:
# - `append` returns only after the record is in the file.
# - The file is emptied (truncated) only when every record in it was confirmed.
# - A journal over JOURNAL_SIZE_MAX_BYTES refuses more appends (the controller answers busy):
#   lag is bounded by design, not by memory.
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Final

from remcopy.controller import atrest
from remcopy.errors import DeviceBusy, VolumeIOError
from remcopy.wire.native import Update

# 1 GiB of unshipped updates: minutes of lag at the rates a link here sustains.
JOURNAL_SIZE_MAX_BYTES: Final = 1024 * 1024 * 1024
_RECORD = struct.Struct("!QHQQI")


def open_append(path: Path, what: str) -> tuple[int, int]:
    """Open (create) an append-only file only the controller may read: (fd, size now)."""
    try:
        atrest.make_folder(path.parent)
        fd = atrest.open_private(path, os.O_RDWR | os.O_APPEND)
        return fd, os.fstat(fd).st_size
    except OSError as exc:
        raise VolumeIOError(f"{what} {path}: cannot open: {exc.strerror}") from exc


class Journal:
    """An append-only file of unconfirmed async updates for one replication link."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd, self.size_bytes = open_append(path, "journal")
        self._next_seq = 1
        self.unconfirmed = 0
        self.appended = 0

    def __repr__(self) -> str:
        return f"<Journal {self.path.name} bytes={self.size_bytes} unconfirmed={self.unconfirmed}>"

    def replay(self) -> list[Update]:
        """Every record in the file, in order (call once, at start, before appending)."""
        try:
            raw = os.pread(self._fd, self.size_bytes, 0) if self.size_bytes else b""
        except OSError as exc:
            raise VolumeIOError(f"journal {self.path}: cannot read: {exc.strerror}") from exc
        updates, at = [], 0
        while at + _RECORD.size <= len(raw):
            seq, device, stamp, offset, length = _RECORD.unpack_from(raw, at)
            data = raw[at + _RECORD.size : at + _RECORD.size + length]
            if len(data) < length:
                break  # a torn last record: its write was never acknowledged
            updates.append(Update(device=device, timestamp_ns=stamp, offset=offset, data=data))
            self._next_seq = seq + 1
            at += _RECORD.size + length
        self.unconfirmed = len(updates)
        return updates

    def check_room(self) -> None:
        """Refuse (busy) before a write is done locally if its update could not be journaled."""
        if self.size_bytes >= JOURNAL_SIZE_MAX_BYTES:
            raise DeviceBusy(
                f"journal {self.path.name} holds {self.size_bytes} bytes of unconfirmed "
                "updates: the secondary is too far behind: retry"
            )

    def append(self, update: Update) -> None:
        if self.size_bytes >= JOURNAL_SIZE_MAX_BYTES:
            raise DeviceBusy(
                f"journal {self.path.name} holds {self.size_bytes} bytes of "
                "unconfirmed updates: the secondary is too far behind: retry"
            )
        head = _RECORD.pack(
            self._next_seq, update.device, update.timestamp_ns, update.offset, len(update.data)
        )
        try:  # the header and the data as they are: no copy of the data
            written = os.writev(self._fd, (head, update.data))
        except OSError as exc:
            raise VolumeIOError(f"journal {self.path}: append failed: {exc.strerror}") from exc
        if written != len(head) + len(update.data):
            raise VolumeIOError(f"journal {self.path}: short append ({written} bytes)")
        self._next_seq += 1
        self.size_bytes += written
        self.unconfirmed += 1
        self.appended += 1

    def settled(self) -> None:
        """One record was confirmed (or its tracks were change-recorded after a failure)."""
        self.unconfirmed -= 1
        assert self.unconfirmed >= 0, "journal settled more records than it holds"
        if self.unconfirmed == 0 and self.size_bytes:
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                raise VolumeIOError(
                    f"journal {self.path}: truncate failed: {exc.strerror}"
                ) from exc
            self.size_bytes = 0

    def flush(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise VolumeIOError(f"journal {self.path}: fdatasync failed: {exc.strerror}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
