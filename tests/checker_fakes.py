# A fake workload run for the consistency checker's unit tests: it writes records into
# in-memory volumes (dicts of bytearrays) exactly as the workload would, so each test can break
# the image one way and judge it. Pure code: no controller, no socket.
from __future__ import annotations

from dataclasses import dataclass, field

from remcopy.ids import HardwareAddress
from remcopy.workload import (
    CheckReport,
    Layout,
    LoggedWrite,
    PlannedWrite,
    Reason,
    RecordKind,
    Volume,
    WorkloadLog,
    build_record,
    check_image,
    plan_chain,
)
from remcopy.workload.checker import Name
from remcopy.workload.layout import plan_prefix
from remcopy.workload.record import BLOCK_BYTES, DataRef

CAPACITY_BYTES = 256 * 1024
RUN_ID = 0x5EED_0000_0000_0001
VOLUMES = tuple(
    Volume(
        address=HardwareAddress.parse(f"{serial}:1A00:0A:{cca:02X}"),
        volser=f"P{serial - 64015}{cca:04X}",
        controller=f"cntla{serial - 64015}",
        capacity_bytes=CAPACITY_BYTES,
    )
    for serial in (64015, 64016)
    for cca in (0, 1)
)


def make_layout(
    *,
    chains: int = 4,
    ring_slots: int = 4,
    seed: int = 7,
    sizes: tuple[int, ...] = (4096, 8192, 16384),
    volumes: tuple[Volume, ...] = VOLUMES,
) -> Layout:
    return Layout.plan(
        run_id=RUN_ID,
        seed=seed,
        chains=chains,
        volumes=volumes,
        sizes=sizes,
        ring_slots_max=ring_slots,
    )


def names_of(data: LoggedWrite) -> DataRef:
    """The reference an index record holds to the data record `data`."""
    return DataRef(
        address=data.volume,
        offset=data.offset,
        seq=data.seq,
        checksum=data.checksum,
        blocks=data.length // BLOCK_BYTES,
    )


@dataclass
class Issued:
    planned: PlannedWrite
    data: bytes
    logged: LoggedWrite


@dataclass
class FakeRun:
    """Issues the plan's writes into in-memory primaries, as the workload would."""

    layout: Layout
    volumes: dict[HardwareAddress, bytearray] = field(default_factory=dict)
    issued: dict[int, list[Issued]] = field(default_factory=dict)
    clock_ns: int = 1_000_000_000

    def __post_init__(self) -> None:
        self.volumes = {v.address: bytearray(v.capacity_bytes) for v in self.layout.volumes}
        self._plans = {c: plan_chain(self.layout, c) for c in range(self.layout.chains)}
        self.issued = {c: [] for c in range(self.layout.chains)}

    def issue(self, chain: int, *, apply: bool = True) -> Issued:
        """The chain's next write: built, stamped by a fake clock, applied unless told not."""
        planned = next(self._plans[chain])
        volume = self.layout.volumes[planned.volume]
        names = None
        if planned.kind is RecordKind.INDEX:
            names = names_of(self.issued[chain][-1].logged)
        self.clock_ns += 1000
        stamp = self.clock_ns
        raw, checksum = build_record(
            kind=planned.kind,
            run_id=self.layout.run_id,
            chain=chain,
            seq=planned.seq,
            stamp_ns=stamp,
            address=volume.address,
            volser=volume.volser,
            offset=planned.offset,
            length=planned.length,
            names=names,
        )
        self.clock_ns += 400
        logged = LoggedWrite(
            chain=chain,
            seq=planned.seq,
            kind=planned.kind,
            volume=volume.address,
            offset=planned.offset,
            length=planned.length,
            checksum=checksum,
            stamp_ns=stamp,
            acked_ns=self.clock_ns,
        )
        issued = Issued(planned=planned, data=raw, logged=logged)
        self.issued[chain].append(issued)
        if apply:
            self.apply(issued)
        return issued

    def apply(self, issued: Issued, data: bytes | None = None, *, at: PlannedWrite | None = None):
        where = at or issued.planned
        raw = issued.data if data is None else data
        volume = self.volumes[self.layout.volumes[where.volume].address]
        volume[where.offset : where.offset + len(raw)] = raw

    def tear(self, issued: Issued) -> None:
        """Write only the first block of `issued` (a torn write); a one-block record gets a
        damaged payload instead."""
        data = issued.data
        if len(data) > BLOCK_BYTES:
            self.apply(issued, data[:BLOCK_BYTES] + bytes(len(data) - BLOCK_BYTES))
        else:
            damaged = bytearray(data)
            damaged[-1] ^= 0xFF
            self.apply(issued, bytes(damaged))

    def run_round_robin(
        self, writes_per_chain: int, *, skip: frozenset[tuple[int, int]] = frozenset()
    ) -> None:
        """Issue writes chain by chain in turn; the (chain, seq) in `skip` never land."""
        for _ in range(writes_per_chain):
            for chain in range(self.layout.chains):
                seq = len(self.issued[chain]) + 1
                self.issue(chain, apply=(chain, seq) not in skip)

    def log(self, *, drop_last: dict[int, int] | None = None) -> WorkloadLog:
        """The log of every issued write (less the last `n` of the chains named)."""
        drop = drop_last or {}
        writes = [
            i.logged
            for chain, issued in self.issued.items()
            for i in issued[: len(issued) - drop.get(chain, 0)]
        ]
        return WorkloadLog.of(self.layout, writes)

    def snapshot(self) -> dict[HardwareAddress, bytearray]:
        return {a: bytearray(v) for a, v in self.volumes.items()}

    async def check(
        self,
        log: WorkloadLog | None = None,
        *,
        image: dict[HardwareAddress, bytearray] | None = None,
        require_all_acked: bool = False,
        at_ns: int | None = None,
        name: Name = str,
    ) -> CheckReport:
        volumes = self.volumes if image is None else image

        async def read(address: HardwareAddress, offset: int, length: int) -> bytes:
            return bytes(volumes[address][offset : offset + length])

        return await check_image(
            read,
            log if log is not None else self.log(),
            require_all_acked=require_all_acked,
            at_ns=at_ns,
            name=name,
        )


def only_write_to_its_location(layout: Layout, chain: int, count: int) -> list[PlannedWrite]:
    """The writes among the chain's first `count` (not the last) alone at their location."""
    plan = plan_prefix(layout, chain, count)
    return [p for p in plan[:-1] if [q.location for q in plan].count(p.location) == 1]


def overwritten_once(run: FakeRun, chain: int) -> tuple[Issued, Issued]:
    """Two writes of the chain to one location, the second the last write there."""
    issued = run.issued[chain]
    for i in range(len(issued) - 2, -1, -1):
        here = issued[i].planned.location
        earlier = [w for w in issued[:i] if w.planned.location == here]
        later = [w for w in issued[i + 1 :] if w.planned.location == here]
        if earlier and not later:
            return earlier[-1], issued[i]
    raise AssertionError("no location written twice")


def reasons(report: CheckReport) -> set[Reason]:
    return {v.reason for v in report.violations}


# Consistent images...
