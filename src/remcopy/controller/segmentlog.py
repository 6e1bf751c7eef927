# An append-only log kept as numbered segment files, each deleted whole once nothing in it
# is needed any more.
#
# Why: the async journals (journal.py at a primary, sjournal.py at a secondary) are written
# all the time under load and are never empty under a steady stream, so a single file either
# grows without end or must be rewritten (compacted), and rewriting copies every byte that
# still waits, again and again. With segments, an old segment is unlinked once every record
# in it is settled: nothing is copied, and pages of a segment deleted before writeback never
# reach the disk at all.
#
# Files: `FOLDER/STEM.NNNNNNNN.jnl`, numbered upwards; records never span two segments. A file
# `FOLDER/STEM.jnl` (the single-file journal of earlier versions) is taken over at open as
# segment 0, so a controller upgraded with updates waiting replays them.
#
# Rules this module keeps:
# - `append` returns once the record is in the current segment (page cache: survives kill -9).
# - `sync` makes every segment written since the last sync durable (fdatasync), and the
#   folder when a segment was created since (fsync), so a record is on disk with its name.
# - Only the owner decides what is retired; the current segment is never retired.
# - `sync` may run on a writer thread while the loop appends; `retire` and `close` must not
#   run while a `sync` runs (the owners call them while the writer thread is held).
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from remcopy.controller import atrest
from remcopy.errors import VolumeIOError

SEGMENT_BYTES_DEFAULT: Final = 32 * 1024 * 1024
_SUFFIX: Final = ".jnl"


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    fd: int
    size: int
    dirty: bool = False


class SegmentLog:
    """One log's segment files: append to the newest, sync, retire old ones whole."""

    def __init__(
        self, folder: Path, stem: str, what: str, *, segment_bytes: int = SEGMENT_BYTES_DEFAULT
    ) -> None:
        self.folder = folder
        self.stem = stem
        self.what = what
        self.segment_bytes = segment_bytes
        self._segments: dict[int, _Segment] = {}
        self._lock = threading.Lock()
        self._folder_dirty = False
        try:
            atrest.make_folder(folder)
            legacy = folder / f"{stem}{_SUFFIX}"
            if legacy.exists():
                os.replace(legacy, self._path(0))
                self._folder_dirty = True
            for number in segment_numbers(folder, stem):
                self._open(number)
            if not self._segments:
                self._open(1)
        except OSError as exc:
            raise VolumeIOError(f"{what} {folder / stem}: cannot open: {exc.strerror}") from exc
        self.current = max(self._segments)

    def __repr__(self) -> str:
        return f"<SegmentLog {self.stem} segments={sorted(self._segments)} bytes={self.size_bytes}>"

    def _path(self, number: int) -> Path:
        return self.folder / f"{self.stem}.{number:08d}{_SUFFIX}"

    def _open(self, number: int) -> _Segment:
        path = self._path(number)
        fd = atrest.open_private(path, os.O_RDWR | os.O_APPEND)
        segment = _Segment(number=number, path=path, fd=fd, size=os.fstat(fd).st_size)
        with self._lock:
            self._segments[number] = segment
        return segment

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments.values())

    @property
    def numbers(self) -> list[int]:
        return sorted(self._segments)

    def read(self) -> list[tuple[int, bytes]]:
        """Every segment's bytes, oldest first (at start, before appending)."""
        out = []
        for number in self.numbers:
            segment = self._segments[number]
            try:
                raw = os.pread(segment.fd, segment.size, 0) if segment.size else b""
            except OSError as exc:
                raise VolumeIOError(
                    f"{self.what} {segment.path}: cannot read: {exc.strerror}"
                ) from exc
            out.append((number, raw))
        return out

    def append(self, parts: Sequence[bytes]) -> int:
        """Write one record (its parts as they are: no copy) to the current segment; its
        number."""
        segment = self._segments[self.current]
        size = sum(len(p) for p in parts)
        try:
            written = (
                os.write(segment.fd, parts[0]) if len(parts) == 1 else os.writev(segment.fd, parts)
            )
        except OSError as exc:
            raise VolumeIOError(
                f"{self.what} {segment.path}: append failed: {exc.strerror}"
            ) from exc
        if written != size:
            raise VolumeIOError(f"{self.what} {segment.path}: short append ({written} bytes)")
        segment.size += written
        segment.dirty = True
        return segment.number

    def full(self) -> bool:
        return self._segments[self.current].size >= self.segment_bytes

    def roll(self) -> int:
        """Start a new current segment; its number."""
        try:
            segment = self._open(self.current + 1)
        except OSError as exc:
            raise VolumeIOError(
                f"{self.what} {self._path(self.current + 1)}: cannot create: {exc.strerror}"
            ) from exc
        self._folder_dirty = True
        self.current = segment.number
        return segment.number

    def sync(self) -> None:
        """fdatasync what was written since the last sync (any thread)."""
        with self._lock:
            dirty = [s for s in self._segments.values() if s.dirty]
            for segment in dirty:
                segment.dirty = False
            folder, self._folder_dirty = self._folder_dirty, False
        try:
            for segment in dirty:
                os.fdatasync(segment.fd)
            if folder:
                atrest.fsync_folder(self.folder)
        except OSError as exc:
            raise VolumeIOError(
                f"{self.what} {self.folder / self.stem}: fdatasync failed: {exc.strerror}"
            ) from exc

    def retire(self, numbers: Sequence[int]) -> int:
        """Delete these old segments (never the current one); bytes freed."""
        freed = 0
        gone = []
        with self._lock:
            for number in numbers:
                if number == self.current or number not in self._segments:
                    continue
                gone.append(self._segments.pop(number))
        try:
            for segment in gone:
                os.close(segment.fd)
                os.unlink(segment.path)
                freed += segment.size
            if gone:
                atrest.fsync_folder(self.folder)
        except OSError as exc:
            raise VolumeIOError(
                f"{self.what} {self.folder / self.stem}: cannot delete a segment: {exc.strerror}"
            ) from exc
        return freed

    def empty_current(self) -> None:
        """Truncate the current segment to nothing (every record in it is settled)."""
        segment = self._segments[self.current]
        if not segment.size:
            return
        try:
            os.ftruncate(segment.fd, 0)
        except OSError as exc:
            raise VolumeIOError(
                f"{self.what} {segment.path}: truncate failed: {exc.strerror}"
            ) from exc
        segment.size = 0

    def close(self) -> None:
        with self._lock:
            segments, self._segments = list(self._segments.values()), {}
        for segment in segments:
            os.close(segment.fd)


def segment_numbers(folder: Path, stem: str) -> list[int]:
    """The numbers of the segment files of `stem` in `folder`, oldest first."""
    numbers = []
    prefix = f"{stem}."
    for path in folder.glob(f"{stem}.*{_SUFFIX}"):
        middle = path.name[len(prefix) : -len(_SUFFIX)]
        if middle.isdigit():
            numbers.append(int(middle))
    return sorted(numbers)


def has_records(folder: Path, stem: str) -> bool:
    """Whether a log of `stem` exists in `folder` with any bytes in it (without opening it)."""
    paths = [folder / f"{stem}{_SUFFIX}"]
    paths += [folder / f"{stem}.{n:08d}{_SUFFIX}" for n in segment_numbers(folder, stem)]
    return any(p.exists() and p.stat().st_size for p in paths)
