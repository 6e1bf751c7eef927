# Change maps: one persistent bit per track, set before the write that changes the track.
#
# Why: while a pair is not mirroring (SUSPENDED, SUSPENDED_ERROR, PENDING copies, RECOVERED
# on the secondary) the controller must remember which tracks may differ between the two
# volumes, so a resume or failback copies only those (DESIGN.md section 2, "Change recording
# is write-intent"). A crash must never lose a bit: after any kill -9, every track that may
# differ is in the map.
#
# How: the bits live in a file mapped into memory (MAP_SHARED) and are used through bitarray.
# Setting a bit writes the page cache of the map file, so it survives the process being
# killed the instant after; `flush()` adds msync for power loss, and a host flush calls it.
# The file holds a small header (magic, track count) and then the bitmap, one bit per track:
# 1 TiB of 64 KiB tracks is 2 MiB of map.
#
# Layout (docs/replication.md 7.1): every device's map lives in one file per controller,
# `DATA_DIR/changemaps/controller.map` (`ChangeMapFile`), mapped once: a header page, a
# directory of (device key, tracks, offset) in whole pages, then each device's bitmap starting
# on its own page. One map per file held one file descriptor per device (CPython's mmap keeps
# a dup), which stops a controller at about 1,020 devices under the default limit of 1,024,
# and a host FLUSH of every device cost one msync each (seconds at 10,000 devices) instead of
# one. A `ChangeMap` is a view over its device's slice; `ChangeMap(path, ...)` still opens a
# map in its own file: the older layout, read once to migrate it.
#
# Rules this module keeps:
# - `mark(offset, length)` is called *before* the volume write it covers (write-intent).
# - A bit is cleared only by the copier, after the secondary confirmed the track's copy, and
#   only if no newer write marked it again meanwhile (the generation check in `clear_if`).
# - The file changes shape (devices added, maps migrated from their own files) only by
#   writing a new file with every bit carried over, fsync, rename, fsync of the folder; the
#   old files go only after that. A device configured no more keeps its slot (and bits), so
#   configuring it again finds them. A map that does not match its volume's track count is
#   refused, as before.
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from bitarray import bitarray

from remcopy.controller import atrest
from remcopy.errors import VolumeIOError

_MAGIC: Final = b"RMCPYMAP"
_HEADER = struct.Struct("!8sQ")  # magic, tracks
_HEADER_BYTES: Final = 4096  # the bitmap starts on its own page


class ChangeMap:
    """A persistent bitmap of tracks that may differ from the other side of the pair."""

    def __init__(self, path: Path, tracks: int, track_size_bytes: int) -> None:
        """The map in its own file at `path` (the layout before ChangeMapFile)."""
        bitmap_bytes = (tracks + 7) // 8
        size = _HEADER_BYTES + max(bitmap_bytes, 1)
        try:
            atrest.make_folder(path.parent)
            fd = atrest.open_private(path, os.O_RDWR)
        except OSError as exc:
            raise VolumeIOError(f"change map {path}: cannot open: {exc.strerror}") from exc
        try:
            current = os.fstat(fd).st_size
            if current == 0:
                os.ftruncate(fd, size)
                os.pwrite(fd, _HEADER.pack(_MAGIC, tracks), 0)
            elif current != size or os.pread(fd, _HEADER.size, 0) != _HEADER.pack(_MAGIC, tracks):
                raise VolumeIOError(
                    f"change map {path}: does not match a volume of {tracks} "
                    "tracks: remove it only if the pair is re-established"
                )
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._attach(path, mm, _HEADER_BYTES, tracks, track_size_bytes, own=True)

    @classmethod
    def in_slot(
        cls, path: Path, mm: mmap.mmap, offset: int, tracks: int, track_size_bytes: int
    ) -> ChangeMap:
        """The map of one device in a ChangeMapFile's mapping, its bitmap at `offset` (on a
        page boundary)."""
        self = cls.__new__(cls)
        self._attach(path, mm, offset, tracks, track_size_bytes, own=False)
        return self

    def _attach(
        self,
        path: Path,
        mm: mmap.mmap,
        offset: int,
        tracks: int,
        track_size_bytes: int,
        *,
        own: bool,
    ) -> None:
        self.path = path
        self.tracks = tracks
        self.track_size_bytes = track_size_bytes
        bitmap_bytes = (tracks + 7) // 8
        self._mm = mm
        self._own = own  # the mapping is this map's alone (closed with it)
        self._offset = offset
        self._span = _pages(max(bitmap_bytes, 1))  # what flush msyncs (slots: its own pages)
        self._view: memoryview | None = memoryview(mm)[offset : offset + bitmap_bytes]
        self._bits = bitarray(buffer=self._view, endian="big")
        # Generation per marked track since the copier read it: see clear_if.
        self._marks = 0
        self._marked_at: dict[int, int] = {}
        # Outstanding write-intents per track, and the tracks they alone made dirty.
        self._intents: dict[int, int] = {}
        self._intent_only: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<ChangeMap {self.path.name} tracks={self.tracks} dirty={self.count()}>"

    def close(self) -> None:
        if self._view is None:
            return
        del self._bits
        self._view.release()
        self._view = None
        if self._own:
            self._mm.close()

    # Marking and clearing...

    def mark(self, offset: int, length: int) -> None:
        """Set the bits of every track the byte range touches (before writing it)."""
        if length <= 0:
            return
        first = offset // self.track_size_bytes
        last = (offset + length - 1) // self.track_size_bytes
        self._marks += 1
        if first == last:
            self._bits[first] = 1
            self._marked_at[first] = self._marks
        else:
            self._bits[first : last + 1] = 1
            for track in range(first, last + 1):
                self._marked_at[track] = self._marks
        assert self._invariants()

    def mark_intent(self, offset: int, length: int) -> list[int]:
        """Set the bits of a range before a mirrored write (write-intent) and return its
        tracks, to hand back to `release` once the secondary confirmed the update.

        A track that was clean before its first outstanding intent is cleared again when the
        last intent on it is released, unless a real change (`mark`) came in between; a track
        that was already marked stays marked: it still needs its copy."""
        first = offset // self.track_size_bytes
        last = (offset + max(length, 1) - 1) // self.track_size_bytes
        tracks = list(range(first, last + 1))
        bits = self._bits
        for track in tracks:
            count = self._intents.get(track, 0)
            if count == 0 and not bits[track]:
                self._intent_only[track] = self._marks
                bits[track] = 1
            self._intents[track] = count + 1
        return tracks

    def release(self, tracks: list[int]) -> None:
        """The write of an intent is on the secondary."""
        for track in tracks:
            count = self._intents.get(track, 0) - 1
            if count > 0:
                self._intents[track] = count
                continue
            self._intents.pop(track, None)
            since = self._intent_only.pop(track, None)
            if since is not None and self._marked_at.get(track, 0) <= since:
                self._bits[track] = 0

    def mark_all(self) -> None:
        self._bits[0 : self.tracks] = 1
        self._marks += 1
        self._marked_at.clear()

    def generation(self) -> int:
        """A counter that grows with every mark; read it before copying a track."""
        return self._marks

    def clear_if(self, track: int, generation: int) -> bool:
        """Clear a track copied at `generation`, unless a write marked it again since."""
        if self._marked_at.get(track, 0) > generation or self._intents.get(track):
            return False  # re-marked since the copy was read, or a write to it is in flight
        self._bits[track] = 0
        self._marked_at.pop(track, None)
        return True

    def clear_all(self) -> None:
        self._bits.setall(0)
        self._marked_at.clear()
        self._intent_only.clear()

    def merge(self, other_bits: bytes) -> None:
        """OR in another map's bits (failback: tracks changed on either side)."""
        incoming = bitarray(endian="big")
        incoming.frombytes(other_bits)
        if len(incoming) != len(self._bits):
            raise VolumeIOError(
                f"change map {self.path}: merge of {len(incoming)} bits into {len(self._bits)}"
            )
        incoming[self.tracks :] = 0
        self._bits |= incoming
        self._marks += 1

    # Reading...

    def is_set(self, track: int) -> bool:
        return bool(self._bits[track])

    def count(self) -> int:
        return int(self._bits.count(1, 0, self.tracks))

    def dirty_tracks(self, start: int = 0) -> Iterator[int]:
        """Set tracks in ascending order from `start`."""
        position = start
        while position < self.tracks:
            try:
                track = self._bits.index(1, position, self.tracks)
            except ValueError:
                return
            yield track
            position = track + 1

    def copy_tracks(self) -> list[int]:
        """Tracks a copy must send: set, and not only marked by a write still in flight (that
        write's own update carries it, and its bit clears when the update is confirmed)."""
        return [t for t in self.dirty_tracks() if t not in self._intent_only]

    def copy_count(self) -> int:
        return self.count() - sum(1 for t in self._intent_only if self._bits[t])

    def to_bytes(self) -> bytes:
        return self._bits.tobytes()

    def flush(self) -> None:
        """msync of this map's pages: the bits survive power loss, not only a killed
        process."""
        try:
            if self._own:
                self._mm.flush()
            else:
                self._mm.flush(self._offset, self._span)
        except OSError as exc:
            raise VolumeIOError(f"change map {self.path}: msync failed: {exc.strerror}") from exc

    def _invariants(self) -> bool:
        return len(self._bits) >= self.tracks


# One file per controller...

FILE_NAME: Final = "controller.map"
_FILE_MAGIC: Final = b"RMCPYCMF"
_FILE_VERSION: Final = 1
_FILE_HEADER = struct.Struct("!8sII")  # magic, version, devices
_ENTRY = struct.Struct("!IQQ")  # device key, tracks, offset of its bitmap
_PAGE: Final = mmap.PAGESIZE


def _pages(size: int) -> int:
    return -(-size // _PAGE) * _PAGE


def _layout(tracks_of: Mapping[int, int]) -> tuple[bytes, dict[int, int], int]:
    """The header and directory (whole pages), each device's bitmap offset, the file size."""
    keys = sorted(tracks_of)
    directory_bytes = _pages(_FILE_HEADER.size + len(keys) * _ENTRY.size)
    offsets: dict[int, int] = {}
    position = directory_bytes
    for key in keys:
        offsets[key] = position
        position += _pages(max((tracks_of[key] + 7) // 8, 1))
    table = bytearray(_FILE_HEADER.pack(_FILE_MAGIC, _FILE_VERSION, len(keys)))
    for key in keys:
        table += _ENTRY.pack(key, tracks_of[key], offsets[key])
    return bytes(table), offsets, position


class ChangeMapFile:
    """Every device's change map of one controller in one file, mapped once."""

    def __init__(self, folder: Path, devices: Mapping[int, tuple[int, int]]) -> None:
        """Open (creating, extending or migrating first when needed) the maps of `devices`:
        device key -> (tracks, track size in bytes)."""
        self.path = folder / FILE_NAME
        try:
            atrest.make_folder(folder)
            stored = self._directory()
            tracks_of = {**stored, **{key: tracks for key, (tracks, _) in devices.items()}}
            for key, (tracks, _size) in devices.items():
                if key in stored and stored[key] != tracks:
                    raise VolumeIOError(
                        f"change maps {self.path}: device {key:04X} has {stored[key]} tracks "
                        f"there, its volume {tracks}: remove the file only if every pair is "
                        "re-established"
                    )
            present = set(os.listdir(folder))
            legacy = {
                key: folder / f"{key:04X}.map"
                for key in devices
                if key not in stored and f"{key:04X}.map" in present
            }
            table, offsets, size = _layout(tracks_of)
            if tracks_of != stored or not self.path.exists():
                self._rebuild(table, offsets, size, stored, legacy, devices)
            fd = atrest.open_private(self.path, os.O_RDWR)
            try:
                if os.fstat(fd).st_size != size or os.pread(fd, len(table), 0) != table:
                    raise VolumeIOError(f"change maps {self.path}: damaged: its directory")
                self._mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise VolumeIOError(f"change maps {self.path}: {exc.strerror}") from exc
        self.maps = {
            key: ChangeMap.in_slot(
                self.path,
                self._mm,
                offsets[key],
                tracks,
                track_size,
            )
            for key, (tracks, track_size) in devices.items()
        }
        self.migrated = len(legacy)

    def __repr__(self) -> str:
        return f"<ChangeMapFile {self.path} devices={len(self.maps)}>"

    def _directory(self) -> dict[int, int]:
        """The stored directory: device key -> tracks (empty when there is no file)."""
        try:
            with self.path.open("rb") as stored:
                head = stored.read(_FILE_HEADER.size)
                if len(head) < _FILE_HEADER.size:
                    raise VolumeIOError(f"change maps {self.path}: damaged: too short")
                magic, version, count = _FILE_HEADER.unpack(head)
                if magic != _FILE_MAGIC or version != _FILE_VERSION:
                    raise VolumeIOError(
                        f"change maps {self.path}: not a change-map file of version {_FILE_VERSION}"
                    )
                raw = stored.read(count * _ENTRY.size)
        except FileNotFoundError:
            return {}
        if len(raw) != count * _ENTRY.size:
            raise VolumeIOError(f"change maps {self.path}: damaged: its directory is cut")
        entries = [_ENTRY.unpack_from(raw, i * _ENTRY.size) for i in range(count)]
        return {key: tracks for key, tracks, _offset in entries}

    def _rebuild(
        self,
        table: bytes,
        offsets: dict[int, int],
        size: int,
        stored: dict[int, int],
        legacy: dict[int, Path],
        devices: Mapping[int, tuple[int, int]],
    ) -> None:
        """Write the file anew with every bit carried over (from the current file and from
        maps in their own files), durably, then remove the migrated files."""
        carried: dict[int, bytes] = {}
        if stored:
            _table, old_offsets, _size = _layout(stored)
            with self.path.open("rb") as old:
                for key, tracks in stored.items():
                    old.seek(old_offsets[key])
                    carried[key] = old.read((tracks + 7) // 8)
        for key, path in legacy.items():
            tracks, track_size = devices[key]
            one = ChangeMap(path, tracks, track_size)  # refuses a map that does not match
            try:
                carried[key] = one.to_bytes()
            finally:
                one.close()
        new = self.path.with_name(f".{FILE_NAME}.new")
        fd = atrest.open_private(new, os.O_RDWR | os.O_TRUNC)
        try:
            os.ftruncate(fd, size)
            os.pwrite(fd, table, 0)
            for key, bits in carried.items():
                if any(bits):
                    os.pwrite(fd, bits, offsets[key])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(new, self.path)
        folder_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
        for path in legacy.values():
            path.unlink()

    def flush_all(self) -> None:
        """One msync of the whole file: every device's bits survive power loss."""
        try:
            self._mm.flush()
        except OSError as exc:
            raise VolumeIOError(f"change maps {self.path}: msync failed: {exc.strerror}") from exc

    def fsync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._mm.closed:
            return
        for one in self.maps.values():
            one.close()
        self._mm.close()
