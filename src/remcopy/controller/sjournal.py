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
# Format: an append-only file of records, each `kind u8 | ...`:
# - `U`: `seq u64 | source u32 | device u16 | flags u8 | stamp u64 | offset u64 | length u32 |
#   data` — an update from primary controller `source`, in arrival order.
# - `C`: `at_ns u64` — the consistency time C. Written before the updates stamped < C are
#   written to the volumes, so a restart applies them again, in the same order, and C never
#   goes back.
# - `D`: `device u16` — every earlier update of this device was applied (or its tracks
#   recorded) outside the order of C: when the pair left DUPLEX, or at a recover. A replay
#   forgets them (the volume may have newer data since).
# Compaction rewrites the file to one `C` record and the updates still waiting (write to a
# temporary file, fsync, rename): the file holds only what a restart needs.
#
# Durability: an update batch is acknowledged to its primary only once its records are on
# disk (fdatasync): the primary then forgets them, and a power loss here must not take back an
# update that C may already cover at a sibling secondary. `JournalSyncer` does the fdatasyncs
# on one writer thread with group commit (groupcommit.py, the same shape as the pair-state
# commits): batches that arrive while one fdatasync runs share the next.
#
# Rules this module keeps:
# - `append` returns once the record is in the file (page cache: it survives kill -9); the
#   syncer's future for it is done once it survives power loss.
# - Replay is pure reading: what waits, and the last C.
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from remcopy.controller import atrest
from remcopy.controller.groupcommit import GroupCommit
from remcopy.controller.journal import open_append
from remcopy.errors import VolumeIOError

_UPDATE = struct.Struct("!cQIHBQQI")
_CUT = struct.Struct("!cQ")
_DROP = struct.Struct("!cH")
# Rewrite the file once it holds this much more than what still waits.
COMPACT_SLACK_BYTES: Final = 64 * 1024 * 1024


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

    def record(self) -> bytes:
        return self.header() + self.data


@dataclass(slots=True)
class Replayed:
    """What a journal file says at start: the last C and the updates still waiting."""

    applied_ns: int
    waiting: list[Waiting]
    next_seq: int


class SecondaryJournal:
    """The append-only file of one group's arrived, not yet applied updates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd, self.size_bytes = open_append(path, "secondary journal")

    def __repr__(self) -> str:
        return f"<SecondaryJournal {self.path.name} bytes={self.size_bytes}>"

    def replay(self) -> Replayed:
        """The last C written and every update after the last drop of its device, in order."""
        try:
            raw = os.pread(self._fd, self.size_bytes, 0) if self.size_bytes else b""
        except OSError as exc:
            raise VolumeIOError(
                f"secondary journal {self.path}: cannot read: {exc.strerror}"
            ) from exc
        applied_ns, waiting, next_seq, at = 0, [], 1, 0
        while at < len(raw):
            kind = raw[at : at + 1]
            if kind == b"U" and at + _UPDATE.size <= len(raw):
                _, seq, source, device, flags, stamp, offset, length = _UPDATE.unpack_from(raw, at)
                start = at + _UPDATE.size
                if start + length > len(raw):
                    break  # torn last record: it was never acknowledged to the primary
                data = raw[start : start + length]
                waiting.append(
                    Waiting(
                        seq=seq,
                        source=source,
                        device=device,
                        flags=flags,
                        stamp_ns=stamp,
                        offset=offset,
                        data=data,
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
        return Replayed(applied_ns=applied_ns, waiting=waiting, next_seq=next_seq)

    def _write(self, record: bytes) -> None:
        try:
            written = os.write(self._fd, record)
        except OSError as exc:
            raise VolumeIOError(
                f"secondary journal {self.path}: append failed: {exc.strerror}"
            ) from exc
        if written != len(record):
            raise VolumeIOError(f"secondary journal {self.path}: short append ({written} bytes)")
        self.size_bytes += len(record)

    def append(self, waiting: Waiting) -> None:
        head = waiting.header()
        try:  # the header and the data as they are: no copy of the data
            written = os.writev(self._fd, (head, waiting.data))
        except OSError as exc:
            raise VolumeIOError(
                f"secondary journal {self.path}: append failed: {exc.strerror}"
            ) from exc
        if written != len(head) + len(waiting.data):
            raise VolumeIOError(f"secondary journal {self.path}: short append ({written} bytes)")
        self.size_bytes += written

    def cut(self, at_ns: int) -> None:
        """Record C (after every update before it): before anything < C is applied."""
        self._write(_CUT.pack(b"C", at_ns))

    def drop(self, device: int) -> None:
        self._write(_DROP.pack(b"D", device))

    def sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise VolumeIOError(
                f"secondary journal {self.path}: fdatasync failed: {exc.strerror}"
            ) from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def compact(self, applied_ns: int, waiting: list[Waiting]) -> None:
        """Rewrite the file as C and the updates still waiting (crash: old or new file)."""
        self.install_compaction(self.prepare_compaction(applied_ns, waiting), b"")

    # Compaction in two steps, so the bulk of it runs off the event loop: `prepare` writes
    # and fsyncs the new file (any thread; it touches nothing of this object's), then
    # `install`, on the loop, appends what changed meanwhile (`tail`), makes it durable and
    # puts the new file in place of the old.

    def prepare_compaction(self, applied_ns: int, waiting: list[Waiting]) -> tuple[Path, int]:
        """The new file (C, then `waiting` in arrival order: a replay numbers what arrives
        next after the last), written and fsync'd under a temporary name."""
        waiting = sorted(waiting, key=lambda w: w.seq)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = atrest.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                data = b"".join([_CUT.pack(b"C", applied_ns), *(w.record() for w in waiting)])
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise VolumeIOError(
                f"secondary journal {self.path}: compaction failed: {exc.strerror}"
            ) from exc
        return tmp, len(data)

    def install_compaction(self, prepared: tuple[Path, int], tail: bytes) -> None:
        """Append `tail` to the prepared file, fdatasync it, and put it in place."""
        tmp, size = prepared
        try:
            if tail:
                fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, tail)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            os.close(self._fd)
            self._fd = atrest.open_private(self.path, os.O_RDWR | os.O_APPEND)
        except OSError as exc:
            raise VolumeIOError(
                f"secondary journal {self.path}: compaction failed: {exc.strerror}"
            ) from exc
        self.size_bytes = size + len(tail)


def tail_records(dropped: list[int], late: list[Waiting], applied_ns: int) -> bytes:
    """What a compaction appends for what happened while its file was written: the drops
    first (they forget the snapshot's updates of those devices), the updates that arrived
    meanwhile, and C as it is now."""
    return b"".join(
        [
            *(_DROP.pack(b"D", device) for device in dropped),
            *(w.record() for w in late),
            _CUT.pack(b"C", applied_ns),
        ]
    )


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
