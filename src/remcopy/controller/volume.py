# A volume: a sparse file of N fixed-size tracks behind a label track that holds its volser.
#
# Why: a controller owns volumes and must read and write them at any byte offset, make
# acknowledged writes durable on request, and know each volume's identity (volser) from the
# volume itself, the way a disk's label travels with the disk.
#
# File layout (all integers big-endian):
#   track 0      the label: magic "RMCPYVOL", format u16, track size u32, data tracks u64,
#                volser (6 bytes, space padded), created ns u64, CRC-32 of the above u32;
#                the rest of the track is zero.
#   tracks 1..N  the volume's data; volume offset 0 is file offset `track_size_bytes`.
#
# Rules this module keeps:
# - Every I/O is checked against the volume's bounds before the file is touched; a request
#   outside is refused with OutOfRange and changes nothing.
# - A write returns only after the bytes are in the file (page cache): a controller killed
#   with SIGKILL afterwards still has them. `flush` adds fdatasync for power loss.
# - Failures of the backing file surface as VolumeIOError naming the volume, never a bare
#   OSError, so one bad volume cannot take down a controller.
# - The verbs are nbdkit's small set (pread, pwrite, flush, zero) so the native protocol and
#   NBD share one backend.
# - TESTING ONLY: a volume named in the config key controller.volume_faults fails its writes
#   after the n-th one (the fault campaigns' full disk and bad disk; docs/consistency.md).
from __future__ import annotations

import errno
import os
import re
import struct
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from remcopy.controller import atrest
from remcopy.errors import InputError, OutOfRange, VolumeIOError
from remcopy.ids import Volser

TRACK_SIZE_DEFAULT_BYTES: Final = 64 * 1024
# Tracks are at least a page and at most 16 MiB, powers of two so offsets split cheaply.
TRACK_SIZE_MIN_BYTES: Final = 4096
TRACK_SIZE_MAX_BYTES: Final = 16 * 1024 * 1024
# 2**32 tracks of 64 KiB is 256 TiB, past any volume a file system here will hold.
TRACKS_MAX: Final = 2**32
LABEL_FORMAT: Final = 1
_MAGIC: Final = b"RMCPYVOL"
_LABEL = struct.Struct("!8sHIQ6sQ")
_CRC = struct.Struct("!I")
_ZERO_CHUNK_BYTES: Final = 1024 * 1024


# --- TESTING ONLY: the in-process I/O fault layer (config controller.volume_faults) ---
# {VOLSER = "eio_after:N" | "enospc_after:N"}: after N writes to that volume, every later write
# fails with EIO (a bad disk) or ENOSPC (a full one) until the controller restarts. Armed by
# loading a config that names it; the volumes of a config without the key never fail this way.
_VOLUME_FAULT = re.compile(r"(eio|enospc)_after:(\d{1,9})")
_FAULT_ERRNOS: Final = {"eio": errno.EIO, "enospc": errno.ENOSPC}
_armed_faults: dict[str, tuple[int, int]] = {}  # volser -> (errno, writes that still succeed)


def parse_volume_fault(spec: object) -> tuple[int, int]:
    """TESTING ONLY: (errno, writes before the fault) of "eio_after:N" or "enospc_after:N"."""
    match = _VOLUME_FAULT.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"volume fault must be 'eio_after:N' or 'enospc_after:N' (got {spec!r})")
    return _FAULT_ERRNOS[match.group(1)], int(match.group(2))


def arm_volume_faults(faults: Mapping[str, str]) -> None:
    """TESTING ONLY: the faults of the volumes opened from now on, by volser (replaces all)."""
    armed = {volser: parse_volume_fault(spec) for volser, spec in faults.items()}
    _armed_faults.clear()
    _armed_faults.update(armed)


# --- end TESTING ONLY ---


class BadVolumeFile(InputError):
    """the backing file is not a remcopy volume"""

    code = 13


def _check_track_size(track_size_bytes: int) -> None:
    if not (TRACK_SIZE_MIN_BYTES <= track_size_bytes <= TRACK_SIZE_MAX_BYTES) or (
        track_size_bytes & (track_size_bytes - 1)
    ):
        raise InputError(
            f"track size must be a power of two from {TRACK_SIZE_MIN_BYTES} to "
            f"{TRACK_SIZE_MAX_BYTES} bytes (got {track_size_bytes})"
        )


def _label_bytes(volser: Volser, tracks: int, track_size_bytes: int, created_ns: int) -> bytes:
    head = _LABEL.pack(
        _MAGIC, LABEL_FORMAT, track_size_bytes, tracks, str(volser).ljust(6).encode(), created_ns
    )
    return head + _CRC.pack(zlib.crc32(head))


class Volume:
    """An open volume file. Create one with `Volume.create`, open one with `Volume.open`."""

    def __init__(
        self,
        *,
        path: Path,
        fd: int,
        volser: Volser,
        tracks: int,
        track_size_bytes: int,
        created_ns: int,
        read_only: bool,
    ) -> None:
        self.path = path
        self._fd = fd
        self.volser = volser
        self.tracks = tracks
        self.track_size_bytes = track_size_bytes
        self.capacity_bytes = tracks * track_size_bytes
        self.created_ns = created_ns
        self.read_only = read_only
        self._base = track_size_bytes
        self.bytes_written = 0
        self.bytes_read = 0
        self._fault = _armed_faults.get(str(volser))  # TESTING ONLY: volume_faults
        self._fault_writes = 0

    def __repr__(self) -> str:
        return (
            f"<Volume {self.volser} {self.path} tracks={self.tracks} "
            f"track_size={self.track_size_bytes} written={self.bytes_written}>"
        )

    # Creating and opening...

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        volser: Volser,
        tracks: int,
        track_size_bytes: int = TRACK_SIZE_DEFAULT_BYTES,
        overwrite: bool = False,
        durable: bool = True,
    ) -> Volume:
        """Make a new sparse volume file with its label, durable before returning.

        `durable=False` skips the fsyncs: for tools that create many scratch volumes at once
        (benchmarks), where a crash only means creating them again."""
        _check_track_size(track_size_bytes)
        if not 1 <= tracks <= TRACKS_MAX:
            raise InputError(f"tracks must be from 1 to {TRACKS_MAX} (got {tracks})")
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # atrest.FOLDER_MODE
            fd = os.open(path, flags, 0o600)  # atrest.FILE_MODE: the hosts' data is private
        except FileExistsError:
            raise InputError(
                f"volume file {path}: already exists: remove it or pass overwrite"
            ) from None
        except OSError as exc:
            raise VolumeIOError(f"volume file {path}: cannot create: {exc.strerror}") from exc
        created_ns = time.time_ns()
        try:
            label = _label_bytes(volser, tracks, track_size_bytes, created_ns)
            os.ftruncate(fd, track_size_bytes * (tracks + 1))
            os.pwrite(fd, label, 0)
            if durable:
                os.fsync(fd)
                atrest.fsync_folder(path.parent)
        except OSError as exc:
            os.close(fd)
            raise VolumeIOError(f"volume file {path}: cannot create: {exc.strerror}") from exc
        return cls(
            path=path,
            fd=fd,
            volser=volser,
            tracks=tracks,
            track_size_bytes=track_size_bytes,
            created_ns=created_ns,
            read_only=False,
        )

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> Volume:
        """Open an existing volume file and read its label."""
        try:
            fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except OSError as exc:
            raise VolumeIOError(f"volume file {path}: cannot open: {exc.strerror}") from exc
        try:
            raw = os.pread(fd, _LABEL.size + _CRC.size, 0)
            size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise VolumeIOError(f"volume file {path}: cannot read label: {exc.strerror}") from exc
        try:
            volume = cls._from_label(path, fd, raw, size, read_only)
        except Exception:
            os.close(fd)
            raise
        return volume

    @classmethod
    def _from_label(cls, path: Path, fd: int, raw: bytes, size: int, read_only: bool) -> Volume:
        if len(raw) < _LABEL.size + _CRC.size or raw[:8] != _MAGIC:
            raise BadVolumeFile(f"volume file {path}: no remcopy label: expected magic {_MAGIC!r}")
        head = raw[: _LABEL.size]
        (crc,) = _CRC.unpack_from(raw, _LABEL.size)
        if zlib.crc32(head) != crc:
            raise BadVolumeFile(f"volume file {path}: label checksum mismatch: label is damaged")
        _magic, fmt, track_size, tracks, volser_raw, created_ns = _LABEL.unpack(head)
        if fmt != LABEL_FORMAT:
            raise BadVolumeFile(f"volume file {path}: label format {fmt}: expected {LABEL_FORMAT}")
        _check_track_size(track_size)
        if size < track_size * (tracks + 1):
            raise BadVolumeFile(
                f"volume file {path}: file is {size} bytes: label says "
                f"{track_size * (tracks + 1)}: the file was truncated"
            )
        volser = Volser.parse(volser_raw.decode("ascii", errors="replace").strip())
        return cls(
            path=path,
            fd=fd,
            volser=volser,
            tracks=tracks,
            track_size_bytes=track_size,
            created_ns=created_ns,
            read_only=read_only,
        )

    def relabel(self, volser: Volser) -> None:
        """Write a new volser into the label, durably."""
        label = _label_bytes(volser, self.tracks, self.track_size_bytes, self.created_ns)
        try:
            os.pwrite(self._fd, label, 0)
            os.fsync(self._fd)
        except OSError as exc:
            raise self._io_error("relabel", exc) from exc
        self.volser = volser

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # I/O (nbdkit's verbs)...

    def check_range(self, verb: str, offset: int, length: int) -> None:
        """Refuse an I/O that reaches outside the volume, before anything is touched."""
        if offset < 0 or length < 0 or offset + length > self.capacity_bytes:
            raise OutOfRange(
                f"invalid request: {verb} {self.volser}: offset and length are out of range: "
                f"offset={offset} length={length} capacity={self.capacity_bytes}"
            )

    def pread(self, offset: int, length: int) -> bytes:
        self.check_range("read", offset, length)
        try:
            data = os.pread(self._fd, length, self._base + offset)
        except OSError as exc:
            raise self._io_error("read", exc) from exc
        if len(data) < length:  # sparse tail past the end of a short file reads as zeros
            data += bytes(length - len(data))
        self.bytes_read += length
        return data

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        length = len(data)
        self.check_range("write", offset, length)
        try:
            if self._fault is not None:
                self._fault_due()
            done = os.pwrite(self._fd, data, self._base + offset)
            while done < length:  # short writes happen on signals and full disks
                step = os.pwrite(self._fd, data[done:], self._base + offset + done)
                if step == 0:
                    raise OSError(28, "no space left on device")
                done += step
        except OSError as exc:
            raise self._io_error("write", exc) from exc
        self.bytes_written += length

    def _fault_due(self) -> None:
        """TESTING ONLY (volume_faults): refuse this write once the armed fault is due."""
        assert self._fault is not None
        code, writes_ok = self._fault
        self._fault_writes += 1
        if self._fault_writes > writes_ok:
            raise OSError(code, os.strerror(code))

    def zero(self, offset: int, length: int) -> None:
        self.check_range("zero", offset, length)
        chunk = bytes(min(length, _ZERO_CHUNK_BYTES))
        done = 0
        while done < length:
            step = min(len(chunk), length - done)
            self.pwrite(offset + done, chunk[:step])
            done += step

    def flush(self) -> None:
        """Make every completed write durable (fdatasync)."""
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise self._io_error("flush", exc) from exc

    def read_track(self, track: int) -> bytes:
        return self.pread(track * self.track_size_bytes, self.track_size_bytes)

    def _io_error(self, verb: str, exc: OSError) -> VolumeIOError:
        return VolumeIOError(
            f"volume {self.volser}: {verb} failed: {exc.strerror} "
            f"(errno {exc.errno}) file={self.path}"
        )
