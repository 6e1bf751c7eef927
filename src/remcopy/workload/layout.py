# Where the workload writes: each chain's region of each volume, and the seeded plan of every
# chain's writes. Pure functions: no I/O, no clock.
#
# Why: the checker must know where every write of a chain goes, including the one write that
# was in flight when the image was cut (it was never acknowledged, so the log does not have
# it, yet it may have landed, whole or torn). So the plan is a pure function of the run's
# layout and seed: the workload and the checker replay the same plan and agree on every
# location without the log having to say it.
#
# The layout:
# - the volumes are the group's primaries, sorted by hardware address;
# - each volume holds `chains` regions side by side from offset 0, one per chain (chains never
#   write each other's regions), each a ring of `ring_slots` slots of `slot_bytes`;
# - a chain writes the next slot of its ring on the volume it picked, so after `ring_slots`
#   writes to a volume it overwrites its own oldest record there; the checker must then
#   expect the *latest* write of the prefix at each location.
# The plan of a chain (seeded by `seed` and the chain number):
# - each write goes to a volume on another controller than the chain's previous write (or
#   another volume, when the group has one controller), so consecutive dependent writes cross
#   controllers: the case a consistency group exists for;
# - odd chains are *indexed* (seed section B.1): a data record, then an index record on
#   another volume that names it, then the next data record, and so on. Even chains write
#   data records only. Index records are one block; data records take a size from the mix.
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from remcopy.errors import InputError
from remcopy.ids import HardwareAddress
from remcopy.workload.record import BLOCK_BYTES, RECORD_BYTES_MAX, RecordKind

SIZES_DEFAULT: Final = (4096, 4096, 4096, 16384, 16384, 65536)
"""The default size mix: a list with repeats, so a repeated size is picked more often."""
RING_SLOTS_DEFAULT: Final = 16
CHAINS_MAX: Final = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    """One primary volume the workload writes, as the acting host reaches it."""

    address: HardwareAddress
    volser: str
    controller: str
    capacity_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedWrite:
    """One write of a chain's plan."""

    chain: int
    seq: int
    kind: RecordKind
    volume: int
    """Index into `Layout.volumes`."""
    slot: int
    offset: int
    length: int
    names_seq: int = 0
    """For an index record: the seq of the data record it names (always `seq - 1`)."""

    @property
    def location(self) -> tuple[int, int]:
        return self.volume, self.slot


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """Everything that fixes where a run writes; stored in the log's first line."""

    run_id: int
    seed: int
    chains: int
    volumes: tuple[Volume, ...]
    sizes: tuple[int, ...]
    slot_bytes: int
    ring_slots: int

    @classmethod
    def plan(
        cls,
        *,
        run_id: int,
        seed: int,
        chains: int,
        volumes: tuple[Volume, ...],
        sizes: tuple[int, ...] = SIZES_DEFAULT,
        ring_slots_max: int = RING_SLOTS_DEFAULT,
    ) -> Layout:
        """Lay out `chains` rings over the volumes; refuse what cannot fit, naming why."""
        if not 1 <= chains <= CHAINS_MAX:
            raise InputError(f"workload: writers must be in 1..{CHAINS_MAX} (got {chains})")
        if not volumes:
            raise InputError("workload: the group has no primary volume this host reaches")
        check_sizes(sizes)
        if ring_slots_max < 1:
            raise InputError(f"workload: ring slots must be >= 1 (got {ring_slots_max})")
        slot_bytes = max(sizes)
        smallest = min(v.capacity_bytes for v in volumes)
        ring = min(ring_slots_max, smallest // (chains * slot_bytes))
        if ring < 1:
            raise InputError(
                f"workload: volumes too small: {chains} writers need {chains * slot_bytes} "
                f"bytes per volume with {slot_bytes}-byte slots; the smallest volume has "
                f"{smallest}: use fewer writers or smaller sizes"
            )
        return cls(
            run_id=run_id,
            seed=seed,
            chains=chains,
            volumes=tuple(sorted(volumes, key=lambda v: v.address)),
            sizes=tuple(sizes),
            slot_bytes=slot_bytes,
            ring_slots=ring,
        )

    @property
    def region_bytes(self) -> int:
        return self.ring_slots * self.slot_bytes

    def region_offset(self, chain: int) -> int:
        return chain * self.region_bytes

    def slot_offset(self, chain: int, slot: int) -> int:
        return self.region_offset(chain) + slot * self.slot_bytes

    def indexed(self, chain: int) -> bool:
        return chain % 2 == 1 and len(self.volumes) > 1

    def volume_of(self, address: HardwareAddress) -> int | None:
        for index, volume in enumerate(self.volumes):
            if volume.address == address:
                return index
        return None

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(sorted({v.controller for v in self.volumes}))

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": f"{self.run_id:016x}",
            "seed": self.seed,
            "chains": self.chains,
            "sizes": list(self.sizes),
            "slot_bytes": self.slot_bytes,
            "ring_slots": self.ring_slots,
            "volumes": [
                {
                    "address": str(v.address),
                    "volser": v.volser,
                    "controller": v.controller,
                    "capacity_bytes": v.capacity_bytes,
                }
                for v in self.volumes
            ],
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Layout:
        """Rebuild a layout from the log's header; KeyError/ValueError on a bad document."""
        layout = cls(
            run_id=int(document["run_id"], 16),
            seed=int(document["seed"]),
            chains=int(document["chains"]),
            sizes=tuple(int(s) for s in document["sizes"]),
            slot_bytes=int(document["slot_bytes"]),
            ring_slots=int(document["ring_slots"]),
            volumes=tuple(
                Volume(
                    address=HardwareAddress.parse(v["address"]),
                    volser=str(v["volser"]),
                    controller=str(v["controller"]),
                    capacity_bytes=int(v["capacity_bytes"]),
                )
                for v in document["volumes"]
            ),
        )
        check_sizes(layout.sizes)
        if (
            not 1 <= layout.chains <= CHAINS_MAX
            or layout.ring_slots < 1
            or layout.slot_bytes != max(layout.sizes)
            or not layout.volumes
            or layout.chains * layout.region_bytes > min(v.capacity_bytes for v in layout.volumes)
        ):
            raise ValueError("layout values do not fit together")
        return layout


def check_sizes(sizes: tuple[int, ...]) -> None:
    if not sizes:
        raise InputError("workload: the size mix is empty")
    bad = [s for s in sizes if s % BLOCK_BYTES or not 0 < s <= RECORD_BYTES_MAX]
    if bad:
        raise InputError(
            f"workload: sizes must be multiples of {BLOCK_BYTES} up to {RECORD_BYTES_MAX} "
            f"bytes (got {', '.join(str(s) for s in bad)})"
        )


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse a size mix such as `4k,4k,16k,64k` (repeats weigh a size)."""
    out = []
    for part in text.split(","):
        item = part.strip().lower()
        scale = 1024 if item.endswith("k") else 1024 * 1024 if item.endswith("m") else 1
        digits = item.rstrip("km")
        if not digits.isascii() or not digits.isdigit():
            raise InputError(f"--sizes: expected sizes such as 4k,16k,64k (got {part.strip()!r})")
        out.append(int(digits) * scale)
    sizes = tuple(out)
    check_sizes(sizes)
    return sizes


def plan_chain(layout: Layout, chain: int) -> Iterator[PlannedWrite]:
    """Every write of one chain, in order, forever (the caller stops)."""
    assert 0 <= chain < layout.chains
    rng = random.Random(f"remcopy-workload:{layout.seed}:{chain}")
    volumes = layout.volumes
    next_slot = [0] * len(volumes)
    indexed = layout.indexed(chain)
    previous: int | None = None
    seq = 0

    def place(kind: RecordKind, length: int, names_seq: int = 0) -> PlannedWrite:
        nonlocal previous, seq
        volume = _pick_volume(rng, volumes, previous)
        slot = next_slot[volume]
        next_slot[volume] = (slot + 1) % layout.ring_slots
        previous = volume
        seq += 1
        return PlannedWrite(
            chain=chain,
            seq=seq,
            kind=kind,
            volume=volume,
            slot=slot,
            offset=layout.slot_offset(chain, slot),
            length=length,
            names_seq=names_seq,
        )

    while True:
        data = place(RecordKind.DATA, rng.choice(layout.sizes))
        yield data
        if indexed:
            yield place(RecordKind.INDEX, BLOCK_BYTES, names_seq=data.seq)


def _pick_volume(rng: random.Random, volumes: tuple[Volume, ...], previous: int | None) -> int:
    if previous is None:
        return rng.randrange(len(volumes))
    elsewhere = [i for i, v in enumerate(volumes) if v.controller != volumes[previous].controller]
    if not elsewhere:
        elsewhere = [i for i in range(len(volumes)) if i != previous] or [previous]
    return rng.choice(elsewhere)


def plan_prefix(layout: Layout, chain: int, count: int) -> list[PlannedWrite]:
    """The first `count` writes of a chain's plan."""
    out: list[PlannedWrite] = []
    for planned in plan_chain(layout, chain):
        if len(out) >= count:
            break
        out.append(planned)
    return out
