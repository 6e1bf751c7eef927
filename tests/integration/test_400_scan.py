# Scan against real controllers: device maps per host, failures listed, limits kept.
from __future__ import annotations

import pytest
from scan_world import build

from remcopy.host.engine import EngineLimits
from remcopy.host.scan import scan
from remcopy.host.session import HostSession


async def test_two_hosts_agree_on_shared_volumes_under_different_numbers(
    start_controller, tmp_path
):
    """Shared volumes have the same address and volser in both maps, other device numbers."""
    world = await build(tmp_path, start_controller)
    async with HostSession(world.a()) as a, HostSession(world.b()) as b:
        map_a = await scan(a)
        map_b = await scan(b)
    assert not map_a.failures and not map_b.failures
    assert len(map_a.devices) == 8 + 8 + 4
    assert map_a.requests == 3  # one identify per controller, all devices in it
    by_address_a = {str(d.address): d for d in map_a.devices}
    shared = 0
    for device in map_b.devices:
        other = by_address_a.get(str(device.address))
        if other is None:
            continue
        shared += 1
        assert other.volser == device.volser
        assert other.number != device.number
        assert (other.number & 0xFF) == (device.number & 0xFF)
    assert shared == 8 + 4
    first = by_address_a["64015:1A00:0A:00"]
    assert (first.device_number, first.volser, first.capacity_bytes) == ("1A00", "V10000", 1 << 20)
    # Offline devices are scanned like online ones, and marked.
    offline = [d for d in map_a.devices if not d.online]
    assert [d.device_number for d in offline] == ["1C00", "1C01", "1C02", "1C03"]
    assert all(d.volser for d in offline)


async def test_scan_lists_the_devices_of_a_dead_controller_with_the_reason(
    start_controller, tmp_path
):
    """With one controller down the others are mapped and the dead ones listed, not dropped."""
    world = await build(tmp_path, start_controller)
    await world.procs["cntl2"].kill()
    async with HostSession(world.a(), limits=EngineLimits(retry_max=1, timeout_s=2)) as a:
        result = await scan(a)
    assert len(result.devices) == 12
    assert [f.device_number for f in result.failures] == [f"1B{i:02X}" for i in range(8)]
    assert all("cntl2" in f.reason or "connect" in f.reason for f in result.failures)


async def test_scan_of_a_range_and_unknown_devices(start_controller, tmp_path):
    """A range limits the scan; a path naming a device the controller lacks is a failure."""
    world = await build(tmp_path, start_controller, volumes=4)
    text = world.host_a.read_text().replace('devices = "1A00-1A03"', 'devices = "1A00-1A05"')
    world.host_a.write_text(text)
    async with HostSession(world.a()) as a:
        result = await scan(a, numbers=range(0x1A00, 0x1A06))
    assert [d.device_number for d in result.devices] == ["1A00", "1A01", "1A02", "1A03"]
    assert [f.device_number for f in result.failures] == ["1A04", "1A05"]
    assert "DeviceNotFound" in result.failures[0].reason


@pytest.mark.parametrize("bound", [1, 2])
async def test_engine_never_exceeds_its_bound_and_a_slow_controller_delays_only_itself(
    start_controller, tmp_path, bound
):
    """Per-controller in-flight stays within the bound (controller-side count)."""
    world = await build(tmp_path, start_controller, slow="cntl3", volumes=4)
    finished = []
    async with HostSession(world.a(), limits=EngineLimits(per_controller_max=bound)) as a:
        result = await scan(
            a, batch=False, progress=lambda ctl, done, total: finished.append((ctl, done, total))
        )
        status = await a.channels["cntl3"].status()
        peak_engine = a.engine.per_controller_peak()
    assert not result.failures
    assert status["counters"]["identify_in_flight_peak"] <= bound
    assert status["counters"]["identify_in_flight_peak"] == bound  # and the bound was reached
    assert peak_engine["cntl3"] <= bound
    # The fast controllers finished all their devices before the slow one finished any.
    first_slow = next(i for i, (ctl, _d, _t) in enumerate(finished) if ctl == "cntl3")
    fast_done = [i for i, (ctl, d, t) in enumerate(finished) if ctl != "cntl3" and d == t]
    assert len(fast_done) == 2
    assert max(fast_done) < first_slow
