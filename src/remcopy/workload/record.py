# The workload's records: self-describing blocks, encoded and decoded without any I/O.
#
# Why: a consistency checker can only be as good as what it can see on a volume. Every record
# the workload writes says what it is and where it belongs, in every 4 KiB block (as nbdkit's
# `pattern` plugin stamps every block with its offset), so a misplaced, stale, torn or foreign
# block is obvious from the bytes alone, without the log.
#
# Format (all integers big-endian; docs/consistency.md has the table):
#   block 0, bytes 0..127   the head: HEADER (magic "RCWK", version, kind, blocks, run id,
#                           chain, seq, stamp ns, primary address, offset, volser, payload
#                           CRC-32), the header's own CRC-32, then for an index record the
#                           data record it names (address, offset, seq, CRC-32, blocks)
#   the rest of the record  the payload: each block is its 64-byte block stamp (magic
#                           "RCWB", run id, chain, seq, block number, address, offset of the
#                           block, volser, stamp ns) repeated to fill the block (block 0's
#                           stamps start after the head)
# The record's checksum is the CRC-32 of its payload: the log keeps it, an index record names
# its data record by it, and the checker recomputes it.
#
# Rules this module keeps:
# - Decoding never raises: any bytes come back as a `Slot` in one of five states, with the
#   reason in words when it is not a valid record of this run.
# - Addresses in a record are the *primary* (logical) ones, as the workload wrote them; the
#   checker reads a secondary or a shadow copy and compares against the primary address.
from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from remcopy.errors import InvalidIdentifier
from remcopy.ids import HardwareAddress

BLOCK_BYTES: Final = 4096
# Block 0 begins with the head; 128 bytes hold the header, its CRC and an index body.
HEAD_BYTES: Final = 128
# A record is at most 1 MiB (256 blocks): larger writes add nothing to a consistency proof.
RECORD_BYTES_MAX: Final = 1024 * 1024
VERSION: Final = 1
MAGIC: Final = b"RCWK"
BLOCK_MAGIC: Final = b"RCWB"

_HEADER = struct.Struct("!4sBBHQIQQIHBBQ6sI")
_HEADER_CRC = struct.Struct("!I")
_INDEX = struct.Struct("!IHBBQQIH")
_STAMP = struct.Struct("!4sQIQHIHBBQ6sQ8x")
assert _HEADER.size + _HEADER_CRC.size + _INDEX.size <= HEAD_BYTES
assert _STAMP.size == 64 and BLOCK_BYTES % _STAMP.size == 0


class RecordKind(enum.Enum):
    DATA = 1
    INDEX = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRef:
    """What an index record names: the data record it points at."""

    address: HardwareAddress
    offset: int
    seq: int
    checksum: int
    blocks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """A record's head as decoded from a volume (or built by the workload)."""

    kind: RecordKind
    run_id: int
    chain: int
    seq: int
    stamp_ns: int
    address: HardwareAddress
    """The primary volume the workload wrote it to."""
    offset: int
    volser: str
    blocks: int
    checksum: int
    names: DataRef | None = None
    """For an index record: the data record it names."""

    @property
    def length(self) -> int:
        return self.blocks * BLOCK_BYTES


class SlotState(enum.Enum):
    EMPTY = "empty"
    """Block 0 is all zero: nothing was written here."""
    FOREIGN = "foreign"
    """A valid record of another workload run: for this run, nothing was written here."""
    DAMAGED = "damaged"
    """Non-zero bytes without a valid record header."""
    CORRUPT = "corrupt"
    """A valid header whose payload does not match its checksum (torn or damaged)."""
    VALID = "valid"


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """What one location of a volume holds."""

    state: SlotState
    record: Record | None = None
    detail: str = ""
    ours: bool = False
    """Bytes of this run are there (always for CORRUPT; for DAMAGED, a stray block stamp)."""

    def describe(self) -> str:
        if self.record is not None and self.state is SlotState.VALID:
            return f"seq {self.record.seq}"
        if self.state is SlotState.EMPTY:
            return "nothing"
        return f"a {self.state.value} record ({self.detail})" if self.detail else self.state.value


# Encoding...


def build_record(
    *,
    kind: RecordKind,
    run_id: int,
    chain: int,
    seq: int,
    stamp_ns: int,
    address: HardwareAddress,
    volser: str,
    offset: int,
    length: int,
    names: DataRef | None = None,
) -> tuple[bytes, int]:
    """The bytes of one record and its checksum (the CRC-32 of its payload)."""
    assert length % BLOCK_BYTES == 0 and 0 < length <= RECORD_BYTES_MAX, length
    assert (names is not None) == (kind is RecordKind.INDEX)
    blocks = length // BLOCK_BYTES
    label = volser.encode("ascii", "replace")[:6].ljust(6)
    parts = []
    for block in range(blocks):
        stamp = _STAMP.pack(
            BLOCK_MAGIC,
            run_id,
            chain,
            seq,
            block,
            address.serial,
            address.ssid,
            address.lss,
            address.cca,
            offset + block * BLOCK_BYTES,
            label,
            stamp_ns,
        )
        repeated = stamp * (BLOCK_BYTES // _STAMP.size)
        parts.append(repeated[HEAD_BYTES:] if block == 0 else repeated)
    payload = b"".join(parts)
    checksum = zlib.crc32(payload)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        kind.value,
        blocks,
        run_id,
        chain,
        seq,
        stamp_ns,
        address.serial,
        address.ssid,
        address.lss,
        address.cca,
        offset,
        label,
        checksum,
    )
    head = header + _HEADER_CRC.pack(zlib.crc32(header))
    if names is not None:
        head += _INDEX.pack(
            names.address.serial,
            names.address.ssid,
            names.address.lss,
            names.address.cca,
            names.offset,
            names.seq,
            names.checksum,
            names.blocks,
        )
    head = head.ljust(HEAD_BYTES, b"\0")
    return head + payload, checksum


# Decoding...


def decode_slot(data: bytes, *, run_id: int) -> Slot:
    """What the bytes at one location hold (`data` may extend past the record)."""
    if len(data) < BLOCK_BYTES:
        return Slot(state=SlotState.DAMAGED, detail=f"only {len(data)} bytes")
    if data.count(0, 0, BLOCK_BYTES) == BLOCK_BYTES:
        return Slot(state=SlotState.EMPTY)
    header = data[: _HEADER.size]
    if header[:4] != MAGIC:
        detail, ours = _stray(data, run_id)
        return Slot(state=SlotState.DAMAGED, detail=detail, ours=ours)
    (crc,) = _HEADER_CRC.unpack_from(data, _HEADER.size)
    if zlib.crc32(header) != crc:
        return Slot(state=SlotState.DAMAGED, detail="record header fails its CRC")
    record = _record(data, header)
    if record is None:
        return Slot(state=SlotState.DAMAGED, detail="record header holds impossible values")
    if record.run_id != run_id:
        return Slot(state=SlotState.FOREIGN, record=record, detail=f"run {record.run_id:016x}")
    if record.length > len(data):
        return Slot(
            state=SlotState.CORRUPT,
            record=record,
            detail=f"seq {record.seq} claims {record.blocks} blocks, past the slot",
            ours=True,
        )
    payload = data[HEAD_BYTES : record.length]
    if zlib.crc32(payload) != record.checksum:
        detail = _first_bad_block(data, record)
        return Slot(state=SlotState.CORRUPT, record=record, detail=detail, ours=True)
    return Slot(state=SlotState.VALID, record=record)


def _record(data: bytes, header: bytes) -> Record | None:
    (
        _magic,
        version,
        kind,
        blocks,
        run,
        chain,
        seq,
        stamp_ns,
        serial,
        ssid,
        lss,
        cca,
        offset,
        label,
        checksum,
    ) = _HEADER.unpack(header)
    if version != VERSION or kind not in (1, 2) or not 0 < blocks <= RECORD_BYTES_MAX // 4096:
        return None
    try:
        address = HardwareAddress.of(serial=serial, ssid=ssid, lss=lss, cca=cca)
        names = None
        if kind == RecordKind.INDEX.value:
            fields = _INDEX.unpack_from(data, _HEADER.size + _HEADER_CRC.size)
            n_serial, n_ssid, n_lss, n_cca, n_offset, n_seq, n_checksum, n_blocks = fields
            names = DataRef(
                address=HardwareAddress.of(serial=n_serial, ssid=n_ssid, lss=n_lss, cca=n_cca),
                offset=n_offset,
                seq=n_seq,
                checksum=n_checksum,
                blocks=n_blocks,
            )
    except InvalidIdentifier:
        return None
    return Record(
        kind=RecordKind(kind),
        run_id=run,
        chain=chain,
        seq=seq,
        stamp_ns=stamp_ns,
        address=address,
        offset=offset,
        volser=label.decode("ascii", "replace").rstrip(),
        blocks=blocks,
        checksum=checksum,
        names=names,
    )


def _stamp_at(data: bytes, position: int) -> tuple[int, int, int, int] | None:
    """(run, chain, seq, block) of the block stamp at `position`, if one is there."""
    if position + _STAMP.size > len(data) or data[position : position + 4] != BLOCK_MAGIC:
        return None
    fields = _STAMP.unpack_from(data, position)
    return fields[1], fields[2], fields[3], fields[4]


def _stray(data: bytes, run_id: int) -> tuple[str, bool]:
    """Name what a block without a header holds (often a block of another record), and
    whether it is this run's."""
    stamp = _stamp_at(data, 0)
    if stamp is None:
        return "no record header", False
    run, chain, seq, block = stamp
    whose = "this run" if run == run_id else f"run {run:016x}"
    text = f"no record header: holds block {block} of chain {chain} seq {seq} ({whose})"
    return text, run == run_id


def _first_bad_block(data: bytes, record: Record) -> str:
    """Say which block of a corrupt record is not what its header promises."""
    for block in range(record.blocks):
        start = block * BLOCK_BYTES + (HEAD_BYTES if block == 0 else 0)
        stamp = _stamp_at(data, start)
        expected = (record.run_id, record.chain, record.seq, block)
        if stamp != expected:
            if stamp is None:
                return f"seq {record.seq} block {block} holds other bytes (torn or damaged)"
            _run, chain, seq, other = stamp
            return (
                f"seq {record.seq} block {block} holds block {other} of chain {chain} seq {seq} "
                "(torn write)"
            )
    return f"seq {record.seq} fails its checksum {record.checksum:08x}"
