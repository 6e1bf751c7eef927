# The consistency checker: is an image of the group's volumes a consistent cut of the
# workload's dependent writes?
#
# Why: a remote copy is worth only as much as the proof that the secondary is consistent
# (seed section B.1: a copy that holds the index record but not its data record is not). The
# workload writes chains of dependent writes; this module reads an image (the primaries, the
# secondaries, or a shadow copy) and decides, from the records and the log alone.
#
# Theory of operation (docs/consistency.md says it for operators):
# 1. Read: every slot of every chain's region of every volume (`read_image`), decoded into
#    `Slot`s. Reads are bounded in size and in number at once.
# 2. Per chain (`_ChainJudge`), with the chain's plan replayed from the run's seed:
#    - a valid record of this run must be the write the plan puts at that location, written
#      for that volume and offset (else MISPLACED), with the acknowledged checksum and stamp
#      when the log has it (else NOT_AS_ACKNOWLEDGED);
#    - the prefix P is the highest seq of the accepted records;
#    - every location must hold exactly the latest write of seqs 1..P to it (else MISSING if
#      it holds nothing of this run, STALE if it holds an older write, CORRUPT if it holds a
#      damaged record of this run). One exception: the location of write P+1 may hold a torn
#      record when write P+1 was never acknowledged (DESIGN.md section 2: writes that were
#      never acknowledged may be torn);
#    - every index record present must find its data record, or a later data write of its
#      chain, at the location it names (else INDEX_WITHOUT_DATA). This needs no log;
#    - with `require_all_acked`, P must reach the last logged seq (else ACKED_MISSING).
# 3. Across chains (`_cross_chain`): the image is a cut at one time T only if some T is after
#    the issue of every chain's last present write and no later than the acknowledgement of
#    every chain's first absent one: T in (max stamp(P_c), min acked(P_c + 1)]. If that window
#    is empty, a write acknowledged before another was issued is missing while the later one
#    is present: NO_COMMON_TIME. The stricter timestamp cut of a prospective suspend (every
#    write stamped < T present, none stamped >= T) is reported as a window on its own, and
#    checked against a given `at_ns` (else NOT_CUT_AT_T).
#
# Rules this module keeps:
# - Never a bare False: every violation has a named reason and a sentence with the chain,
#   volume, offset and seqs involved.
# - Judging is pure (`judge`): slots in, report out. Only `read_image` does I/O, through the
#   `read` function it is given, so the checker runs on hand-made images in unit tests.
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from remcopy.errors import InputError
from remcopy.ids import HardwareAddress
from remcopy.workload.layout import Layout, PlannedWrite, plan_prefix
from remcopy.workload.log import LoggedWrite, WorkloadLog
from remcopy.workload.record import Record, RecordKind, Slot, SlotState, decode_slot
from remcopy.workload.report import PRIORITY, ChainReport, CheckReport, Reason, Violation

Read = Callable[[HardwareAddress, int, int], Awaitable[bytes]]
"""Read `length` bytes at `offset` of the image of the primary volume at `address`."""
Name = Callable[[HardwareAddress], str]
"""How a message names the image of a primary volume (e.g. its secondary's address)."""
SlotKey = tuple[int, int, int]
"""(chain, volume index, slot)."""
Location = tuple[int, int]
"""(volume index, slot) within one chain's region."""

READ_CHUNK_BYTES: Final = 1024 * 1024
READS_IN_FLIGHT_MAX: Final = 16
VIOLATIONS_PER_CHAIN_MAX: Final = 100


async def check_image(
    read: Read,
    log: WorkloadLog,
    *,
    require_all_acked: bool,
    at_ns: int | None = None,
    name: Name = str,
    image: str = "image",
    reads_in_flight_max: int = READS_IN_FLIGHT_MAX,
) -> CheckReport:
    """Read the image of every volume of the run through `read` and judge it."""
    slots, bytes_read = await read_image(read, log.layout, reads_in_flight_max=reads_in_flight_max)
    report = judge(
        log, slots, require_all_acked=require_all_acked, at_ns=at_ns, name=name, image=image
    )
    return replace(report, bytes_read=bytes_read)


# Reading...


async def read_image(
    read: Read, layout: Layout, *, reads_in_flight_max: int = READS_IN_FLIGHT_MAX
) -> tuple[dict[SlotKey, Slot], int]:
    """Every slot of every chain's region on every volume, decoded; and the bytes read."""
    limit = asyncio.Semaphore(reads_in_flight_max)
    slots: dict[SlotKey, Slot] = {}
    total = 0

    async def region(chain: int, index: int) -> None:
        nonlocal total
        address = layout.volumes[index].address
        start, size = layout.region_offset(chain), layout.region_bytes
        parts = []
        for offset in range(0, size, READ_CHUNK_BYTES):
            length = min(READ_CHUNK_BYTES, size - offset)
            async with limit:
                data = await read(address, start + offset, length)
            if len(data) != length:
                raise InputError(
                    f"verify: volume {address}: read of {length} bytes at offset "
                    f"{start + offset} returned {len(data)}: the image is smaller than the run"
                )
            parts.append(data)
        data = b"".join(parts)
        total += len(data)
        step = layout.slot_bytes
        for slot in range(layout.ring_slots):
            piece = data[slot * step : (slot + 1) * step]
            slots[(chain, index, slot)] = decode_slot(piece, run_id=layout.run_id)

    try:
        async with asyncio.TaskGroup() as tasks:
            for chain in range(layout.chains):
                for index in range(len(layout.volumes)):
                    tasks.create_task(region(chain, index))
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None
    return slots, total


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# Judging (pure)...


def judge(
    log: WorkloadLog,
    slots: Mapping[SlotKey, Slot],
    *,
    require_all_acked: bool,
    at_ns: int | None = None,
    name: Name = str,
    image: str = "image",
) -> CheckReport:
    """Decide whether the slots form a consistent cut of the logged run."""
    layout = log.layout
    chains = tuple(
        _ChainJudge(layout, chain, log.chain(chain), slots, name).run(require_all_acked)
        for chain in range(layout.chains)
    )
    cut_window, stamp_window, cross = _cross_chain(chains, log, at_ns)
    violations = tuple(v for c in chains for v in c.violations) + tuple(cross)
    return CheckReport(
        image=image,
        consistent=not violations,
        require_all_acked=require_all_acked,
        chains=chains,
        violations=violations,
        cut_window_ns=cut_window,
        stamp_window_ns=stamp_window,
        at_ns=at_ns,
        locations=len(slots),
    )


class _ChainJudge:
    """The checks of one chain, in the order of the theory of operation above."""

    def __init__(
        self,
        layout: Layout,
        chain: int,
        logged: list[LoggedWrite],
        slots: Mapping[SlotKey, Slot],
        name: Name,
    ) -> None:
        self.layout, self.chain, self.logged, self.name = layout, chain, logged, name
        self.here: dict[Location, Slot] = {
            (volume, slot): slots[(chain, volume, slot)]
            for volume in range(len(layout.volumes))
            for slot in range(layout.ring_slots)
        }
        self.accepted: dict[Location, Record] = {}
        self.reported: set[Location] = set()
        self.violations: list[Violation] = []
        self.notes: list[str] = []
        self.plan: list[PlannedWrite] = []

    def where(self, location: Location) -> str:
        volume, slot = location
        address = self.layout.volumes[volume].address
        return f"volume {self.name(address)} offset {self.layout.slot_offset(self.chain, slot)}"

    def violation(
        self, reason: Reason, location: Location, seq: int, text: str, *, mark: bool = True
    ) -> None:
        """Record a violation found at `location`; `mark` stops later checks reporting it."""
        volume = self.layout.volumes[location[0]].address
        offset = self.layout.slot_offset(self.chain, location[1])
        if mark:
            self.reported.add(location)
        self.violations.append(
            Violation(
                reason=reason, message=text, chain=self.chain, seq=seq, volume=volume, offset=offset
            )
        )

    def run(self, require_all_acked: bool) -> ChainReport:
        self._accept_records()
        prefix = max((r.seq for r in self.accepted.values()), default=0)
        in_flight = self._in_flight(prefix)
        self._check_locations(prefix, in_flight)
        self._check_indexes(in_flight)
        acked_missing = max(0, len(self.logged) - prefix)
        if require_all_acked and acked_missing:
            write = self.logged[prefix]
            location = (self.layout.volume_of(write.volume) or 0, self._slot_of(write.offset))
            self.violation(
                Reason.ACKED_MISSING,
                location,
                write.seq,
                f"chain {self.chain}: acknowledged seq {write.seq} at {self.where(location)} "
                f"is missing: the image's prefix ends at seq {prefix}; {acked_missing} "
                "acknowledged writes missing",
            )
        unlogged = max(0, prefix - len(self.logged))
        if unlogged:
            self.notes.append(
                f"seqs {len(self.logged) + 1}..{prefix} are present but not in the log "
                "(acknowledged after its last flush, or in flight)"
            )
        stamp = next((r.stamp_ns for r in self.accepted.values() if r.seq == prefix), 0)
        self.violations.sort(key=lambda v: (v.seq, PRIORITY[v.reason]))
        return ChainReport(
            chain=self.chain,
            indexed=self.layout.indexed(self.chain),
            logged=len(self.logged),
            prefix=prefix,
            prefix_stamp_ns=stamp,
            unlogged=unlogged,
            acked_missing=acked_missing,
            violations=tuple(self.violations[:VIOLATIONS_PER_CHAIN_MAX]),
            notes=tuple(self.notes),
        )

    def _slot_of(self, offset: int) -> int:
        return (offset - self.layout.region_offset(self.chain)) // self.layout.slot_bytes

    # Valid records must be where the plan puts them, as acknowledged...

    def _accept_records(self) -> None:
        layout, chain = self.layout, self.chain
        for location, slot in self.here.items():
            record = slot.record
            if slot.state is not SlotState.VALID or record is None:
                continue
            volume, index = location
            address, offset = layout.volumes[volume].address, layout.slot_offset(chain, index)
            if record.chain != chain or record.address != address or record.offset != offset:
                self.violation(
                    Reason.MISPLACED,
                    location,
                    record.seq,
                    f"chain {chain}: {self.where(location)} holds chain {record.chain} "
                    f"seq {record.seq}, written for volume {record.address} offset "
                    f"{record.offset}",
                )
                continue
            self.accepted[location] = record
        top = max((r.seq for r in self.accepted.values()), default=0)
        self.plan = plan_prefix(layout, chain, max(top, len(self.logged)) + 1)
        for location, record in list(self.accepted.items()):
            planned = self.plan[record.seq - 1]
            if (
                planned.location != location
                or planned.kind is not record.kind
                or planned.length != record.length
            ):
                del self.accepted[location]
                self.violation(
                    Reason.MISPLACED,
                    location,
                    record.seq,
                    f"chain {chain}: seq {record.seq} ({_kind(record.kind)}, {record.length} "
                    f"bytes) belongs at {self.where(planned.location)} "
                    f"({_kind(planned.kind)}, {planned.length} bytes) but is at "
                    f"{self.where(location)}",
                )
                continue
            if record.seq <= len(self.logged):
                write = self.logged[record.seq - 1]
                if (record.checksum, record.stamp_ns) != (write.checksum, write.stamp_ns):
                    del self.accepted[location]
                    self.violation(
                        Reason.NOT_AS_ACKNOWLEDGED,
                        location,
                        record.seq,
                        f"chain {chain}: seq {record.seq} at {self.where(location)} has "
                        f"checksum {record.checksum:08x} stamped {record.stamp_ns}, but the "
                        f"acknowledged write had checksum {write.checksum:08x} stamped "
                        f"{write.stamp_ns}",
                    )

    def _in_flight(self, prefix: int) -> PlannedWrite | None:
        """Write prefix+1 when it was never acknowledged: its location may be torn."""
        if prefix + 1 <= len(self.logged) or prefix >= len(self.plan):
            return None
        return self.plan[prefix]

    # Every location holds the latest write of the prefix to it...

    def _check_locations(self, prefix: int, in_flight: PlannedWrite | None) -> None:
        latest: dict[Location, PlannedWrite] = {}
        for planned in self.plan[:prefix]:
            latest[planned.location] = planned
        chain = self.chain
        for location in sorted(self.here):
            if location in self.reported:
                continue
            slot, expected = self.here[location], latest.get(location)
            record = self.accepted.get(location)
            if record is not None:
                if expected is not None and record.seq == expected.seq:
                    continue
                seq = expected.seq if expected is not None else record.seq
                self.violation(
                    Reason.STALE,
                    location,
                    seq,
                    f"chain {chain} stale at {self.where(location)}: holds seq {record.seq}, "
                    f"but the prefix up to seq {prefix} puts seq {seq} there",
                )
                continue
            damaged_ours = slot.state in (SlotState.CORRUPT, SlotState.DAMAGED) and slot.ours
            if in_flight is not None and location == in_flight.location and damaged_ours:
                self.notes.append(
                    f"seq {in_flight.seq} (never acknowledged) is torn at "
                    f"{self.where(location)}: allowed for the write in flight"
                )
                continue
            if damaged_ours:
                seq = expected.seq if expected is not None else 0
                self.violation(
                    Reason.CORRUPT,
                    location,
                    seq,
                    f"chain {chain}: {self.where(location)} holds {slot.describe()}"
                    + (f" where seq {seq} belongs" if expected is not None else ""),
                )
                continue
            if expected is not None:
                self.violation(
                    Reason.MISSING,
                    location,
                    expected.seq,
                    f"chain {chain} broken at {self.where(location)}: seq {prefix} present "
                    f"but seq {expected.seq} missing (the location holds {slot.describe()})",
                )

    # No index record without its data record...

    def _check_indexes(self, in_flight: PlannedWrite | None) -> None:
        layout, chain = self.layout, self.chain
        for location, record in sorted(self.accepted.items()):
            names = record.names
            if record.kind is not RecordKind.INDEX or names is None:
                continue
            volume = layout.volume_of(names.address)
            start = layout.region_offset(chain)
            inside = (
                volume is not None
                and start <= names.offset < start + layout.region_bytes
                and (names.offset - start) % layout.slot_bytes == 0
            )
            if volume is None or not inside:
                held = "a location outside the chain's region"
            else:
                target = (volume, self._slot_of(names.offset))
                data = self.accepted.get(target)
                if data is not None and data.seq > names.seq:
                    continue  # overwritten later by the chain itself (data or index): the
                    # prefix has both, so the data record was there before it was replaced
                if (
                    data is not None
                    and data.kind is RecordKind.DATA
                    and data.seq == names.seq
                    and data.checksum == names.checksum
                ):
                    continue
                slot = self.here[target]
                torn = slot.state in (SlotState.CORRUPT, SlotState.DAMAGED) and slot.ours
                if in_flight is not None and target == in_flight.location and torn:
                    continue  # being overwritten by the write in flight
                held = f"{self.where(target)}, which holds {slot.describe()}"
                if data is not None and data.seq == names.seq:
                    held += f" with checksum {data.checksum:08x}"
            self.violation(
                Reason.INDEX_WITHOUT_DATA,
                location,
                names.seq,
                f"chain {chain}: index seq {record.seq} at {self.where(location)} names data "
                f"seq {names.seq} (checksum {names.checksum:08x}) at {held}",
                mark=False,
            )


def _kind(kind: RecordKind) -> str:
    return kind.name.lower()


# Across chains: one time T...


@dataclass(frozen=True, slots=True)
class _Edge:
    chain: int
    seq: int
    ns: int


def _cross_chain(
    chains: tuple[ChainReport, ...], log: WorkloadLog, at_ns: int | None
) -> tuple[tuple[int, int | None] | None, tuple[int, int | None] | None, list[Violation]]:
    violations: list[Violation] = []
    present = [_Edge(c.chain, c.prefix, c.prefix_stamp_ns) for c in chains if c.prefix]
    absent = [(c.chain, log.chain(c.chain)[c.prefix]) for c in chains if c.prefix < c.logged]
    lo = max(present, key=lambda e: e.ns, default=_Edge(-1, 0, 0))
    first_acked = min(absent, key=lambda a: a[1].acked_ns, default=None)
    first_stamped = min(absent, key=lambda a: a[1].stamp_ns, default=None)
    cut_window: tuple[int, int | None] | None = (
        lo.ns,
        None if first_acked is None else first_acked[1].acked_ns,
    )
    if first_acked is not None and lo.ns >= first_acked[1].acked_ns:
        cut_window = None
        chain_b, write = first_acked
        violations.append(
            Violation(
                reason=Reason.NO_COMMON_TIME,
                chain=chain_b,
                seq=write.seq,
                volume=write.volume,
                offset=write.offset,
                message=(
                    f"chain {lo.chain} holds seq {lo.seq} issued at {lo.ns}, but chain "
                    f"{chain_b} lacks seq {write.seq}, acknowledged "
                    f"{(lo.ns - write.acked_ns) / 1e6:.3f} ms before that: no single time "
                    "explains both"
                ),
            )
        )
    stamp_window: tuple[int, int | None] | None = (
        lo.ns,
        None if first_stamped is None else first_stamped[1].stamp_ns,
    )
    if first_stamped is not None and lo.ns >= first_stamped[1].stamp_ns:
        stamp_window = None
    if at_ns is not None:
        for c in chains:
            if c.prefix and c.prefix_stamp_ns >= at_ns:
                violations.append(
                    Violation(
                        reason=Reason.NOT_CUT_AT_T,
                        chain=c.chain,
                        seq=c.prefix,
                        message=(
                            f"chain {c.chain} holds seq {c.prefix} stamped "
                            f"{(c.prefix_stamp_ns - at_ns) / 1e6:.3f} ms at or after T={at_ns}"
                        ),
                    )
                )
            if c.prefix < c.logged:
                write = log.chain(c.chain)[c.prefix]
                if write.stamp_ns < at_ns:
                    violations.append(
                        Violation(
                            reason=Reason.NOT_CUT_AT_T,
                            chain=c.chain,
                            seq=write.seq,
                            volume=write.volume,
                            offset=write.offset,
                            message=(
                                f"chain {c.chain} lacks seq {write.seq} at volume "
                                f"{write.volume} offset {write.offset}, stamped "
                                f"{(at_ns - write.stamp_ns) / 1e6:.3f} ms before T={at_ns}"
                            ),
                        )
                    )
    return cut_window, stamp_window, violations
