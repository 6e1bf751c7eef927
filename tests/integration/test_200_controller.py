# The controller core against real controller processes on 127.0.0.1: identify, I/O at any
# offset, durability across restart and kill -9.
from __future__ import annotations

import asyncio
import hashlib
import random
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common import HOST, SECRET, MiB, controller_spec
from remcopy.controller.process import ControllerProcess, ControllerSpec
from remcopy.errors import BrokenResourceError, DeviceNotFound, OutOfRange
from remcopy.host.channel import Channel

Start = Callable[[ControllerSpec], Awaitable[ControllerProcess]]
TRACK = 64 * 1024


async def test_identify_names_every_volume_of_two_controllers(start_controller: Start, tmp_path):
    """Identify returns each volume's hardware address, volser and capacity as configured."""
    specs = [
        controller_spec(tmp_path, "cntla", 64015, ssid=0x1A00, lss=0x0A),
        controller_spec(tmp_path, "cntlb", 64016, ssid=0x2B00, lss=0x0B, volumes=3),
    ]
    procs = await asyncio.gather(*(start_controller(s) for s in specs))
    for spec, proc in zip(specs, procs, strict=True):
        assert (proc.name, proc.serial) == (spec.name, spec.serial)
        async with proc.channel(name=HOST, secret=SECRET) as channel:
            assert channel.controller_serial == spec.serial
            ids = await channel.identify()
            assert [i.device for i in ids] == [v.lss << 8 | v.cca for v in spec.volumes]
            for ident, vol in zip(ids, spec.volumes, strict=True):
                assert ident.status == 0
                assert (ident.serial, ident.ssid) == (spec.serial, spec.lss[vol.lss])
                assert ident.volser == vol.volser
                assert ident.capacity_bytes == vol.size_bytes
                assert ident.track_size_bytes == TRACK
            # A batch naming a device the controller does not own answers per device.
            some = await channel.identify((spec.volumes[0].lss << 8, 0x0CFF))
            assert some[0].status == 0
            assert some[1].status == DeviceNotFound.code


async def test_random_io_reads_back_and_refuses_out_of_range(start_controller: Start, tmp_path):
    """Writes at random offsets and lengths, across track boundaries, read back exactly."""
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=2, size_bytes=2 * MiB)
    proc = await start_controller(spec)
    capacity = 2 * MiB
    model = {0x0A00: bytearray(capacity), 0x0A01: bytearray(capacity)}
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        pending = []
        for i in range(300):
            device = rng.choice(list(model))
            if i % 3 == 0:  # straddle a track boundary on purpose
                boundary = rng.randrange(1, capacity // TRACK) * TRACK
                offset = boundary - rng.randint(1, 5000)
                length = rng.randint(boundary - offset + 1, boundary - offset + 9000)
            else:
                length = rng.randint(1, 100_000)
                offset = rng.randrange(0, capacity - length + 1)
            data = rng.randbytes(length)
            model[device][offset : offset + length] = data
            pending.append(channel.write(device, offset, data))
        # The very last byte of a volume is writable.
        model[0x0A01][-1:] = b"\xee"
        pending.append(channel.write(0x0A01, capacity - 1, b"\xee"))
        await asyncio.gather(*pending)
        for device, image in model.items():
            assert await channel.read(device, 0, capacity) == image
        for _ in range(50):
            device = rng.choice(list(model))
            length = rng.randint(1, 70_000)
            offset = rng.randrange(0, capacity - length + 1)
            assert await channel.read(device, offset, length) == model[device][offset:][:length]
        with pytest.raises(OutOfRange, match="out of range"):
            await channel.write(0x0A00, capacity - 10, b"x" * 11)
        with pytest.raises(OutOfRange, match="offset=2097152 length=1"):
            await channel.read(0x0A00, capacity, 1)
        assert await channel.read(0x0A00, capacity - 10, 10) == model[0x0A00][-10:]
        with pytest.raises(DeviceNotFound, match="no device LSS 0A CCA 07"):
            await channel.read(0x0A07, 0, 1)
    assert "no device LSS 0A CCA 07" in proc.log_text()


async def test_data_survives_a_restart(start_controller: Start, tmp_path):
    """Acknowledged and flushed data is there after a clean stop and start."""
    proc = await start_controller(controller_spec(tmp_path, "cntla", 64015, volumes=1))
    data = random.randbytes(3 * TRACK + 123)
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        await channel.write(0x0A00, TRACK - 77, data)
    assert await proc.stop() == 0
    await proc.start()
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        assert await channel.read(0x0A00, TRACK - 77, len(data)) == data
        ids = await channel.identify()
        assert ids[0].volser == "CN0000"


SLOT = 16 * 1024
PAGE = 4096
_SLOT_HEAD = struct.Struct("!IQ")  # writer, seq


def _slot_pattern(writer: int, seq: int) -> bytes:
    """A self-describing slot: (writer, seq) then bytes derived from them."""
    head = _SLOT_HEAD.pack(writer, seq)
    body = hashlib.shake_128(head).digest(SLOT - len(head))
    return head + body


@pytest.mark.parametrize("stop", ["kill", "term"])
async def test_stop_during_writes_loses_no_acknowledged_write(
    start_controller: Start, tmp_path, stop: str
):
    """After SIGKILL or SIGTERM mid-load, every slot holds its last acked write or a later one."""
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    proc = await start_controller(
        controller_spec(tmp_path, "cntla", 64015, volumes=2, size_bytes=4 * MiB)
    )
    writers = 16
    slots_per_writer = 8
    acked: dict[tuple[int, int], int] = {}  # (writer, slot) -> last acknowledged seq
    kill_after = rng.randint(200, 1200)
    enough = asyncio.Event()
    total_acks = 0

    async def writer(channel: Channel, w: int) -> None:
        nonlocal total_acks
        seq = 0
        while True:
            seq += 1
            slot = rng.randrange(slots_per_writer)
            device = 0x0A00 + (w % 2)
            offset = (w * slots_per_writer + slot) * SLOT
            try:
                await channel.write(device, offset, _slot_pattern(w, seq))
            except BrokenResourceError:
                return  # the controller died or stopped: this write was not acknowledged
            acked[(w, slot)] = seq
            total_acks += 1
            if total_acks >= kill_after:
                enough.set()

    async with (
        proc.channel(name=HOST, secret=SECRET, timeout_s=10) as channel,
        asyncio.TaskGroup() as tasks,
    ):
        for w in range(writers):
            tasks.create_task(writer(channel, w))
        await enough.wait()
        if stop == "kill":
            await proc.kill()
        else:
            assert await proc.stop() == 0  # a clean shutdown exits 0
    await proc.start()
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        for (w, slot), seq in acked.items():
            device = 0x0A00 + (w % 2)
            got = await channel.read(device, (w * slots_per_writer + slot) * SLOT, SLOT)
            # An unacknowledged write may have been in flight on that slot (torn per page).
            later = {
                _slot_pattern(w, s)[p : p + PAGE]
                for s in range(seq, seq + 200)
                for p in range(0, SLOT, PAGE)
            }
            for p in range(0, SLOT, PAGE):
                assert got[p : p + PAGE] in later, (
                    f"seed={seed}: writer {w} slot {slot}: acknowledged seq {seq} lost at "
                    f"page {p // PAGE}"
                )
            got_writer, got_seq = _SLOT_HEAD.unpack_from(got)
            assert got_writer == w and got_seq >= seq
    assert len(acked) > 0


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def test_a_flood_of_writes_does_not_grow_controller_memory(start_controller: Start, tmp_path):
    """512 MiB of pipelined writes from one host leave the controller's peak memory bounded."""
    proc = await start_controller(
        controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=32 * MiB)
    )
    assert proc.process is not None
    before = _peak_rss_bytes(proc.process.pid)
    block = random.randbytes(256 * 1024)
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        in_flight: set[asyncio.Task[int]] = set()
        for i in range(2048):  # 512 MiB, up to 256 requests in flight (64 MiB)
            task = asyncio.create_task(channel.write(0x0A00, (i % 128) * len(block), block))
            in_flight.add(task)
            if len(in_flight) >= 256:
                done, in_flight = await asyncio.wait(in_flight, return_when="FIRST_COMPLETED")
                for t in done:
                    t.result()
        await asyncio.gather(*in_flight)
    grown = _peak_rss_bytes(proc.process.pid) - before
    assert grown < 96 * MiB, f"controller peak memory grew by {grown / MiB:.0f} MiB"
