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


async def test_rescan_after_relabel_reports_exactly_that_change(start_controller, tmp_path):
    """Relabel one volume, restart, rescan: the map diff names that device and nothing else."""
    from remcopy.catalog import Catalog
    from remcopy.controller.volume import Volume
    from remcopy.host.service import add_host, scan_host
    from remcopy.ids import Volser

    world = await build(tmp_path, start_controller, volumes=4)
    catalog = Catalog.open(tmp_path / "catalog.db")
    try:
        add_host(catalog, world.host_a)
        _, first = await scan_host(catalog, "hosta")
        assert first is not None
        proc = world.procs["cntl2"]
        assert await proc.stop() == 0
        path = tmp_path / "cntl2" / "volumes" / "V20002.vol"
        volume = Volume.open(path)
        volume.relabel(Volser.parse("NEW002"))
        volume.close()
        await proc.start()
        _, second = await scan_host(catalog, "hosta")
        assert second is not None
        diff = catalog.map_diff("hosta")
        assert [(c.device_number, c.old, c.new) for c in diff.volser_changed] == [
            ("1B02", "V20002", "NEW002")
        ]
        assert not diff.new and not diff.gone and not diff.address_changed
    finally:
        catalog.close()


async def test_scan_cli_with_a_dead_controller_exits_1_and_stores_nothing(
    start_controller, tmp_path
):
    """`remcopy scan` lists dead devices, exits 1, stores nothing; --partial stores the rest."""
    import json
    import subprocess
    import sys

    world = await build(tmp_path, start_controller, volumes=4)
    catalog = tmp_path / "catalog.db"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "remcopy", *args, "--catalog", str(catalog)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("host", "add", str(world.host_a)).returncode == 0
    await world.procs["cntl3"].kill()
    run = cli("scan", "hosta", "--json")
    assert run.returncode == 1, run.stderr
    doc = json.loads(run.stdout)
    assert doc["stored"] is False
    assert sorted(f["device"] for f in doc["failures"]) == ["1C00", "1C01", "1C02", "1C03"]
    assert "nothing stored" in run.stderr
    assert "Traceback" not in run.stderr
    nothing = cli("map", "show", "hosta", "--json")
    assert nothing.returncode == 2
    assert "no scan stored" in nothing.stderr
    partial = cli("scan", "hosta", "--partial", "--json")
    assert partial.returncode == 1
    assert json.loads(partial.stdout)["stored"] is True
    assert len(json.loads(cli("map", "show", "hosta", "--json").stdout)) == 8
