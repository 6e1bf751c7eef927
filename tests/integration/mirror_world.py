# A two-site world for remote-copy tests: primary controllers at site A, one secondary
# controller at site B (with spare tertiary volumes for shadow copies), peered both ways.
from __future__ import annotations

import asyncio
import hashlib
import random
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import HOST, SECRET, MiB, host_tls_toml, run_remcopy, secret_file_line, site
from remcopy.controller.process import (
    TESTING_ENV,
    ControllerProcess,
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
)
from remcopy.errors import LateWrite
from remcopy.host.channel import Channel
from remcopy.states import CopyMode, FencePolicy, PairState
from remcopy.wire.native import PairItem, PairOp, PairOpReply
from remcopy.workload.faultlink import FaultLink

LINK_SECRET = "link-secret-a-to-b"
SECONDARY_SERIAL = 65000
SECONDARY_LSS = 0x20
TERTIARY_LSS = 0x30


@dataclass
class World:
    root: Path
    primaries: list[ControllerProcess] = field(default_factory=list)
    secondary: ControllerProcess | None = None
    volumes: int = 4
    size_bytes: int = 4 * MiB

    def pair_items(
        self,
        index: int,
        mode: CopyMode,
        *,
        consistency_group: bool = False,
        fence: FencePolicy = FencePolicy.NEVER,
    ) -> tuple[PairItem, ...]:
        """Items pairing primary controller `index`'s volumes with their secondaries."""
        return tuple(
            PairItem(
                device=0x0A00 + cca,
                peer_serial=SECONDARY_SERIAL,
                peer_device=self.secondary_device(index, cca),
                mode=mode,
                fence=fence,
                consistency_group=consistency_group,
            )
            for cca in range(self.volumes)
        )

    def secondary_device(self, index: int, cca: int) -> int:
        return SECONDARY_LSS << 8 | (index * self.volumes + cca)

    def tertiary_device(self, index: int, cca: int) -> int:
        return TERTIARY_LSS << 8 | (index * self.volumes + cca)


def primary_serial(index: int) -> int:
    return 64015 + index


async def build(
    root: Path,
    *,
    primaries: int = 1,
    volumes: int = 4,
    size_bytes: int = 4 * MiB,
    peer_address: dict[int, str] | None = None,
    primary_settings: dict[str, object] | None = None,
    testing: bool = False,
    secondary_settings: dict[str, object] | None = None,
    tls: bool = True,
) -> World:
    """Write configs with fixed ports, start the secondary, then the primaries (`testing`:
    the primaries run with REMCOPY_TESTING=1, for primary_settings with test-only keys;
    `tls` False: plain TCP on loopback, so a test can read the bytes a controller sends)."""
    world = World(root=root, volumes=volumes, size_bytes=size_bytes)
    ports = [free_port() for _ in range(primaries + 1)]
    secondary_spec = ControllerSpec(
        site=site() if tls else None,
        name="cntlb",
        serial=SECONDARY_SERIAL,
        data_dir=root / "cntlb",
        listen=f"127.0.0.1:{ports[-1]}",
        settings=dict(secondary_settings or {}),
        lss={
            lss + extra: ssid + (extra << 8)
            for lss, ssid in ((SECONDARY_LSS, 0x2B00), (TERTIARY_LSS, 0x3B00))
            for extra in range(_lss_count(primaries * volumes))
        },
        volumes=[
            VolumeSpec(
                lss=(lss << 8 | i) >> 8,
                cca=i & 0xFF,
                volser=f"{tag}{i:04X}",
                size_bytes=size_bytes,
            )
            for lss, tag in ((SECONDARY_LSS, "SB"), (TERTIARY_LSS, "TB"))
            for i in range(primaries * volumes)
        ],
        hosts={HOST: SECRET},
        peers=[
            PeerSpec(
                name=f"cntla{i}",
                serial=primary_serial(i),
                address=f"127.0.0.1:{ports[i]}",
                secret=LINK_SECRET,
            )
            for i in range(primaries)
        ],
    )
    world.secondary = await ControllerProcess(secondary_spec.write(root / "cntlb.toml")).start()
    for i in range(primaries):
        spec = ControllerSpec(
            site=site() if tls else None,
            name=f"cntla{i}",
            serial=primary_serial(i),
            data_dir=root / f"cntla{i}",
            listen=f"127.0.0.1:{ports[i]}",
            settings=dict(primary_settings or {}),
            lss={0x0A + extra: 0x1A00 + (extra << 8) for extra in range(_lss_count(volumes))},
            volumes=[
                VolumeSpec(
                    lss=(0x0A00 + c) >> 8,
                    cca=c & 0xFF,
                    volser=f"P{i}{c:04X}",
                    size_bytes=size_bytes,
                )
                for c in range(volumes)
            ],
            hosts={HOST: SECRET},
            peers=[
                PeerSpec(
                    name="cntlb",
                    serial=SECONDARY_SERIAL,
                    address=(peer_address or {}).get(i, f"127.0.0.1:{ports[-1]}"),
                    secret=LINK_SECRET,
                ),
                # Sibling primaries: a consistency group over several primaries freezes over
                # these authenticated links, with nothing but controllers running.
                *(
                    PeerSpec(
                        name=f"cntla{j}",
                        serial=primary_serial(j),
                        address=f"127.0.0.1:{ports[j]}",
                        secret=LINK_SECRET,
                    )
                    for j in range(primaries)
                    if j != i
                ),
            ],
        )
        env = TESTING_ENV if testing else None
        proc = ControllerProcess(spec.write(root / f"cntla{i}.toml"), extra_env=env)
        world.primaries.append(await proc.start())
    return world


def _lss_count(devices: int) -> int:
    """LSSs for `devices` consecutive device keys (256 CCAs each): keys stay base + index."""
    return max(1, (devices + 255) // 256)


async def stop(world: World) -> None:
    for proc in [*world.primaries, world.secondary]:
        if proc is not None and proc.running:
            await proc.kill()


@asynccontextmanager
async def one_pair_over_a_fault_link(
    tmp_path: Path, mode: CopyMode, *, seed: int, settings: dict[str, object]
) -> AsyncIterator[tuple[World, FaultLink]]:
    """One pair in `mode` whose replication link goes through a fault link (stall, heal),
    its primary started with `settings`; everything stopped after."""
    async with FaultLink(("127.0.0.1", 0), seed=seed) as link:
        world = await build(
            tmp_path, volumes=1, peer_address={0: link.endpoint}, primary_settings=settings
        )
        assert world.secondary is not None
        link.target = world.secondary.address
        try:
            await establish(world, 0, mode)
            yield world, link
        finally:
            await stop(world)


def channel(proc: ControllerProcess) -> Channel:
    return proc.channel(name=HOST, secret=SECRET)


def all_ok(reply: PairOpReply) -> None:
    bad = [r for r in reply.results if r.code]
    assert not bad, [f"{r.device:04X}: {r.message}" for r in bad]


async def digest(ch: Channel, device: int, size: int) -> str:
    h = hashlib.sha256()
    step = 1 * MiB
    for offset in range(0, size, step):
        h.update(await ch.read(device, offset, min(step, size - offset)))
    return h.hexdigest()


async def establish(world: World, index: int, mode: CopyMode, **kwargs: object) -> None:
    """Establish every pair of primary `index` and wait until all are DUPLEX."""
    async with channel(world.primaries[index]) as ch:
        events = await ch.subscribe()
        all_ok(await ch.pair_op(PairOp.ESTABLISH, world.pair_items(index, mode, **kwargs)))
        duplex: set[str] = set()
        while len(duplex) < world.volumes:
            event = await events.wait_until(lambda e: e.new is PairState.DUPLEX)
            duplex.add(event.device)


SLOT_BYTES = 4096
_RECORD = struct.Struct("!4sIQQ")  # magic, writer, seq, stamp


def record(writer: int, seq: int, stamp: int) -> bytes:
    head = _RECORD.pack(b"RCW1", writer, seq, stamp)
    return head + hashlib.shake_128(head).digest(SLOT_BYTES - len(head))


@dataclass
class Written:
    device: int
    offset: int
    stamp: int
    data: bytes
    acked: bool = False


class SlotLoad:
    """Writers that each put every write in a fresh 4 KiB slot, so each write is checkable."""

    def __init__(
        self, ch: Channel, devices: list[int], size_bytes: int, *, writers: int = 8, seed: int = 0
    ) -> None:
        self.ch, self.devices = ch, devices
        self.slots = size_bytes // SLOT_BYTES
        self.next_slot = dict.fromkeys(devices, 0)
        self.writes: list[Written] = []
        self.rng = random.Random(seed)
        self.writers = writers
        self.stop = False
        self.errors: list[Exception] = []
        self.acked = 0
        self._progress = asyncio.Event()

    async def wait_acked(self, count: int) -> None:
        """Wait until `count` writes were acknowledged (or the writers stopped)."""
        while self.acked < count and not self.errors:
            self._progress.clear()
            await self._progress.wait()

    async def _writer(self, w: int) -> None:
        seq = 0
        while not self.stop:
            device = self.rng.choice(self.devices)
            slot = self.next_slot[device]
            if slot >= self.slots:
                return
            self.next_slot[device] = slot + 1
            seq += 1
            while True:
                stamp = time.time_ns()
                item = Written(
                    device=device, offset=slot * SLOT_BYTES, stamp=stamp, data=record(w, seq, stamp)
                )
                self.writes.append(item)
                try:
                    await self.ch.write(device, item.offset, item.data, timestamp_ns=stamp)
                except LateWrite:
                    self.writes.remove(item)  # refused, never written: reissue with a new stamp
                    continue
                except Exception as exc:
                    self.errors.append(exc)
                    self._progress.set()
                    return
                item.acked = True
                self.acked += 1
                self._progress.set()
                break

    async def run_until(self, done: asyncio.Event) -> None:
        import asyncio

        tasks = [asyncio.create_task(self._writer(w)) for w in range(self.writers)]
        await done.wait()
        self.stop = True
        await asyncio.gather(*tasks)


async def wait_settled(ch: Channel, devices: tuple[int, ...], *, limit: int = 5000) -> None:
    """Wait until every device is DUPLEX with no marked track (a restart's resync is done).

    Each round is a real query: this waits on the controller's state, not on a clock."""
    from remcopy.states import PairState

    for _ in range(limit):
        statuses = await ch.query(devices)
        if all(s.state is PairState.DUPLEX and s.dirty_tracks == 0 for s in statuses):
            return
    raise AssertionError(f"devices did not settle: {statuses}")


def host_file(root: Path, world: World) -> Path:
    """Host `hosta`: both primaries online (1A00-1A03, 1B00-1B03), the secondary offline."""
    p0, p1 = world.primaries
    path = root / "hosta.toml"
    path.write_text(f"""{host_tls_toml(HOST)}
[host]
name = "{HOST}"
{secret_file_line(HOST, SECRET)}

[[controllers]]
name = "{p0.name}"
address = "{p0.endpoint}"
[[controllers]]
name = "{p1.name}"
address = "{p1.endpoint}"
[[controllers]]
name = "cntlb"
address = "{world.secondary.endpoint}"

[[paths]]
devices = "1A00-1A03"
controller = "{p0.name}"
ssid = "1A00"
lss = "0A"
cca = "00"
[[paths]]
devices = "1B00-1B03"
controller = "{p1.name}"
ssid = "1A00"
lss = "0A"
cca = "00"
[[paths]]
devices = "2B00-2B07"
controller = "cntlb"
ssid = "2B00"
lss = "20"
cca = "00"
online = false
""")
    return path


def two_group_catalog(root: Path, world: World) -> Path:
    """A catalog of host hosta (host_file) with two groups of 4 pairs, established and
    DUPLEX: PAYROLL on cntla0 and OTHER on cntla1, both to cntlb (a world of 2 primaries)."""
    path = root / "catalog.db"
    run_remcopy("host", "add", str(host_file(root, world)), catalog=path)
    run_remcopy("scan", HOST, catalog=path)
    for name, devices, secondaries in (
        ("PAYROLL", "1A00-1A03", "2B00-2B03"),
        ("OTHER", "1B00-1B03", "2B04-2B07"),
    ):
        definition = root / f"{name}.toml"
        definition.write_text(
            f'[group]\nname = "{name}"\n[[pairs]]\nhost = "{HOST}"\ndevices = "{devices}"\n'
            f'secondary_devices = "{secondaries}"\n'
        )
        run_remcopy("group", "define", str(definition), catalog=path)
        run_remcopy("group", "establish", name, "--host", HOST, "--wait", catalog=path)
    return path
