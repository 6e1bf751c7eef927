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
# Rules this module keeps:
# - `mark(offset, length)` is called *before* the volume write it covers (write-intent).
# - A bit is cleared only by the copier, after the secondary confirmed the track's copy, and
#   only if no newer write marked it again meanwhile (the generation check in `clear_if`).
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
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
        self.path = path
        self.tracks = tracks
        self.track_size_bytes = track_size_bytes
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
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._view = memoryview(self._mm)[_HEADER_BYTES : _HEADER_BYTES + bitmap_bytes]
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
        if self._mm.closed:
            return
        del self._bits
        self._view.release()
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
        """msync: the bits survive power loss, not only a killed process."""
        try:
            self._mm.flush()
        except OSError as exc:
            raise VolumeIOError(f"change map {self.path}: msync failed: {exc.strerror}") from exc

    def _invariants(self) -> bool:
        return len(self._bits) >= self.tracks
