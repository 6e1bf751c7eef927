# How far behind an async consistency group's secondary site is, as `remcopy group status` and
# `remcopy group pairs` show it: the journal bytes at both ends, the lag, C and the RPO. Real
# controllers, each primary's replication link through the project's fault link.
#
# The group spans two primaries. cntla0's link stalls; then the test's own host channels write
# a known number of bytes to one device of each primary. cntla0's updates cannot leave: they
# are its journal bytes, unconfirmed (and its lag). cntla1's reach the secondary, which holds
# them, durable, because C cannot pass cntla0's last watermark: they are the secondary's
# journal bytes, and cntla1 has none. Every figure is checked against what was written.
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mirror_world import build, channel, host_file, stop

from common import HOST, run_remcopy
from remcopy.host.channel import Channel
from remcopy.workload.faultlink import FaultLink

GROUP = "ASYNC"
STALLED_WRITES, STALLED_SIZE = 8, 64 * 1024  # to 1A00 on cntla0 (its link stalled)
HELD_WRITES, HELD_SIZE = 12, 16 * 1024  # to 1B01 on cntla1


@pytest.fixture
async def stalling(tmp_path):
    """Two primaries, each mirroring to cntlb through its own fault link; the links stall
    without the pairs suspending (timeouts of a minute, as the fault-link tests)."""
    async with FaultLink(("127.0.0.1", 0)) as link0, FaultLink(("127.0.0.1", 0)) as link1:
        world = await build(
            tmp_path,
            primaries=2,
            volumes=4,
            peer_address={0: link0.endpoint, 1: link1.endpoint},
            primary_settings={"ack_timeout_s": 60, "heartbeat_timeout_s": 60},
        )
        assert world.secondary is not None
        link0.target = link1.target = world.secondary.address
        try:
            yield world, link0
        finally:
            await stop(world)


async def remcopy(*args: str, catalog: Path) -> str:
    """The command's stdout; run off the loop, which forwards the fault links' bytes."""
    return (await asyncio.to_thread(run_remcopy, *args, catalog=catalog)).stdout


async def cli(*args: str, catalog: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(await remcopy(*args, "--json", catalog=catalog))


async def define(tmp_path: Path, world) -> Path:  # type: ignore[no-untyped-def]
    """Group ASYNC: 1A00-1A01 (cntla0) and 1B00-1B01 (cntla1) to cntlb, established."""
    path = tmp_path / "catalog.db"
    await remcopy("host", "add", str(host_file(tmp_path, world)), catalog=path)
    await remcopy("scan", HOST, catalog=path)
    definition = tmp_path / "group.toml"
    definition.write_text(
        f'[group]\nname = "{GROUP}"\nmode = "async"\nconsistency_group = true\n'
        '[[pairs]]\nhost = "hosta"\ndevices = "1A00-1A01"\nsecondary_devices = "2B00-2B01"\n'
        '[[pairs]]\nhost = "hosta"\ndevices = "1B00-1B01"\nsecondary_devices = "2B04-2B05"\n'
    )
    await remcopy("group", "define", str(definition), catalog=path)
    await remcopy("group", "establish", GROUP, "--host", HOST, "--wait", catalog=path)
    return path


async def _until(ch: Channel, devices: tuple[int, ...], field: str, value: int) -> None:
    """Wait until every device's `field` in the controller's answer is `value` (each round is
    a real query: this waits on the controller's state)."""
    for _ in range(5000):
        statuses = await ch.query(devices)
        if all(getattr(s, field) == value for s in statuses):
            return
    raise AssertionError(f"{field} not {value}: {statuses}")


async def test_journal_bytes_at_both_ends_lag_and_rpo_of_a_stalled_async_group(stalling, tmp_path):
    world, link0 = stalling
    catalog = await define(tmp_path, world)
    a0, a1 = world.primaries
    assert world.secondary is not None
    async with channel(a0) as ch0, channel(a1) as ch1, channel(world.secondary) as chb:
        secondaries = tuple(range(0x2000, 0x2008))
        await _until(ch0, (0x0A00, 0x0A01), "lag_bytes", 0)
        await _until(ch1, (0x0A00, 0x0A01), "lag_bytes", 0)
        settled = (await cli("group", "status", GROUP, "--host", HOST, catalog=catalog))["async"]
        assert settled["journal_bytes"] == {"primary": 0, "secondary": 0}
        stalled_at_ns = time.time_ns()
        link0.stall()
        await asyncio.gather(
            *(
                ch0.write(0x0A00, i * STALLED_SIZE, b"s" * STALLED_SIZE)
                for i in range(STALLED_WRITES)
            ),
            *(ch1.write(0x0A01, i * HELD_SIZE, b"h" * HELD_SIZE) for i in range(HELD_WRITES)),
        )
        # cntla1's updates were acknowledged by the secondary: they wait there for C.
        await _until(ch1, (0x0A01,), "lag_bytes", 0)
        stalled, held = STALLED_WRITES * STALLED_SIZE, HELD_WRITES * HELD_SIZE
        (p0,) = await ch0.query((0x0A00,))
        assert (p0.journal_bytes, p0.lag_bytes) == (stalled, stalled) and p0.lag_ns > 0
        (p1,) = await ch1.query((0x0A01,))
        assert p1.journal_bytes == 0
        by_device = {s.device: s for s in await chb.query(secondaries)}
        assert by_device[0x2005].journal_bytes == held  # 2B05, the secondary of 1B01
        assert sum(s.journal_bytes for s in by_device.values()) == held

        status = await cli("group", "status", GROUP, "--host", HOST, catalog=catalog)
        totals = status["async"]
        assert totals["pairs"] == 4 and totals["not_read"] == []
        assert totals["journal_bytes"] == {"primary": stalled, "secondary": held}
        assert status["lag_bytes"] == stalled
        # C cannot pass cntla0's last watermark, sent before its link stalled.
        assert 0 < totals["consistency_ns"] <= stalled_at_ns
        assert totals["rpo_s"] > 0
        text = await remcopy("group", "status", GROUP, "--host", HOST, catalog=catalog)
        assert f"journal at the primaries {stalled} bytes, at the secondaries {held} bytes" in text

        pairs = await cli("group", "pairs", GROUP, "--host", HOST, catalog=catalog)
        rows = {row["primary"]["device_number"]: row for row in pairs["pairs"]}
        assert rows["1A00"]["primary"]["journal_bytes"] == stalled
        assert rows["1A00"]["lag_bytes"] == stalled and rows["1A00"]["lag_s"] > 0
        assert rows["1B01"]["secondary"]["journal_bytes"] == held
        assert rows["1B01"]["primary"]["journal_bytes"] == 0
        for number in ("1A01", "1B00"):
            assert rows[number]["primary"]["journal_bytes"] == 0
            assert rows[number]["secondary"]["journal_bytes"] == 0
        for row in rows.values():  # one C for the group, and the RPO from it
            assert 0 < row["consistency_ns"] <= stalled_at_ns
            assert row["rpo_s"] == (pairs["read_at_ns"] - row["consistency_ns"]) / 1e9

        link0.heal()
        await _until(ch0, (0x0A00,), "lag_bytes", 0)
        await _until(chb, secondaries, "journal_bytes", 0)  # C passed everything
    healed = (await cli("group", "status", GROUP, "--host", HOST, catalog=catalog))["async"]
    assert healed["journal_bytes"] == {"primary": 0, "secondary": 0}
    assert healed["consistency_ns"] > stalled_at_ns
