# The operator's flow through the CLI, as real processes: define a host, scan, define a group
# by three kinds of keys, load, establish, wait for DUPLEX, suspend consistent at T.
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mirror_world import build, host_file, stop

from common import HOST, SECRET, host_tls_toml, run_remcopy


def cli(*args: str, catalog: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_remcopy(*args, catalog=catalog, code=0 if check else None, timeout_s=120)


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path, primaries=2, volumes=4)
    yield w
    await stop(w)


async def test_operator_flow_from_host_to_consistent_suspend(world, tmp_path):
    """Every step works through the CLI and the suspend says consistent at T."""
    catalog = tmp_path / "catalog.db"
    host_path = host_file(tmp_path, world)
    out = json.loads(cli("host", "add", str(host_path), "--json", catalog=catalog).stdout)
    assert out == {"host": HOST, "devices": 16, "schema": 1}
    scan = json.loads(cli("scan", HOST, "--json", catalog=catalog).stdout)
    assert scan["devices"] == 16
    assert scan["requests"] == 3
    assert scan["stored"]
    found = json.loads(
        cli("map", "show", HOST, "--volser", "P10002", "--json", catalog=catalog).stdout
    )
    assert [(e["device"], e["address"]) for e in found] == [("1B02", "64016:1A00:0A:02")]
    group = tmp_path / "payroll.toml"
    group.write_text("""
[group]
name = "PAYROLL"
mode = "sync"
[[pairs]]
volser = "P00000"
secondary_volser = "SB0000"
[[pairs]]
primary = "64015:1A00:0A:01"
secondary = "65000:2B00:20:01"
[[pairs]]
host = "hosta"
devices = "1A02-1A03"
secondary_devices = "2B02-2B03"
[[pairs]]
host = "hosta"
devices = "1B00-1B03"
secondary_devices = "2B04-2B07"
""")
    assert (
        json.loads(cli("group", "define", str(group), "--json", catalog=catalog).stdout)["pairs"]
        == 8
    )
    loaded = json.loads(
        cli("group", "load", "PAYROLL", "--host", HOST, "--json", catalog=catalog).stdout
    )
    assert loaded["pairs"] == 8
    assert loaded["not_visible"] == []
    dry = json.loads(
        cli(
            "group", "establish", "PAYROLL", "--host", HOST, "--dry-run", "--json", catalog=catalog
        ).stdout
    )
    assert dry["requests_per_controller"] == {"cntla0": 0, "cntla1": 0}
    status = json.loads(
        cli("group", "status", "PAYROLL", "--host", HOST, "--json", catalog=catalog).stdout
    )
    assert status["counts"] == {"SIMPLEX": 8}, "the dry run changed something"
    est = json.loads(
        cli(
            "group", "establish", "PAYROLL", "--host", HOST, "--wait", "--json", catalog=catalog
        ).stdout
    )
    assert est["requests_per_controller"] == {"cntla0": 1, "cntla1": 1}
    assert est["failed"] == 0
    assert est["counts"] == {"DUPLEX": 8}, "--wait returns once every copy is done"
    run = cli(
        "group",
        "status",
        "PAYROLL",
        "--host",
        HOST,
        "--expect",
        "DUPLEX",
        "--json",
        catalog=catalog,
    )
    assert json.loads(run.stdout)["counts"] == {"DUPLEX": 8}
    plan = cli("group", "suspend", "PAYROLL", "--host", HOST, "--dry-run", catalog=catalog)
    assert "8 DUPLEX -> SUSPENDED" not in plan.stdout  # per controller: 4 each
    assert plan.stdout.count("4 DUPLEX -> SUSPENDED") == 2
    assert "it would suspend at T=" in plan.stdout
    susp = cli("group", "suspend", "PAYROLL", "--host", HOST, "--in", "2s", catalog=catalog)
    assert "consistent at T=" in susp.stdout
    assert "late writes refused" in susp.stdout and "host I/O held ms" in susp.stdout
    from remcopy.catalog import Catalog

    with Catalog.open(catalog) as opened:
        logged = opened.operations_all(limit=1, target="PAYROLL")[0].details
    assert logged["consistent"] is True
    volsers = [f"P{c}{k:04X}" for c in range(2) for k in range(4)]
    assert logged["pair_states"] == dict.fromkeys(volsers, "SUSPENDED")
    assert sorted(logged["seal"]) == ["cntla0", "cntla1"]
    for seal in logged["seal"].values():
        assert seal["at_ns"] == logged["at_ns"] <= seal["sealed_ns"] <= seal["drained_ns"]
        assert seal["late_writes"] == 0
        # Held: the refusal window alone; the two commits run off the event loop and hold
        # no host write (docs/replication.md 4.5), so they are reported apart.
        window_ms = (seal["drained_ns"] - seal["sealed_ns"]) / 1e6
        assert seal["seal_commit_ms"] > 0 and seal["arm_commit_ms"] > 0
        assert seal["host_io_held_ms"] == pytest.approx(window_ms, abs=0.002)
    resume_plan = json.loads(
        cli(
            "group", "resume", "PAYROLL", "--host", HOST, "--dry-run", "--json", catalog=catalog
        ).stdout
    )
    assert resume_plan["plan"]["controllers"]["cntla0"]["moves"] == {"SUSPENDED -> PENDING": 4}
    assert [p["tracks"] for p in resume_plan["plan"]["pairs"]] == [0] * 8
    record = json.loads(
        cli(
            "group",
            "suspend",
            "PAYROLL",
            "--host",
            HOST,
            "--in",
            "2s",
            "--json",
            catalog=catalog,
            check=False,
        ).stdout
    )
    assert record["consistent"] is False  # already suspended: every pair refused, exit 1
    assert record["failed"] == 8
    shown = json.loads(
        cli(
            "group", "show", "PAYROLL", "--host", HOST, "--pair", "2B05", "--json", catalog=catalog
        ).stdout
    )
    assert shown[0]["primary"] == "64016:1A00:0A:01"
    # The operation log: newest first, the refused suspend then the consistent one.
    oplog = json.loads(
        cli("log", "--group", "PAYROLL", "--op", "group suspend", "--json", catalog=catalog).stdout
    )["operations"]
    assert [(o["result"], o["consistent"]) for o in oplog[:2]] == [("failed", False), ("ok", True)]
    assert oplog[1]["at_ns"] == logged["at_ns"] and oplog[1]["pairs"] == 8
    recent = json.loads(cli("log", "--since", "10m", "--json", catalog=catalog).stdout)
    assert {"group establish", "group suspend"} <= {o["op"] for o in recent["operations"]}
    assert "group suspend" in cli("log", "--group", "PAYROLL", catalog=catalog).stdout
    bad = cli("log", "--since", "yesterday", catalog=catalog, check=False)
    assert bad.returncode == 2 and "--since: expected an age" in bad.stderr


async def test_bad_host_definitions_exit_2_naming_every_line(world, tmp_path):
    """Overlaps, bad hex, unknown controller and a range past CCA FF are all named at once."""
    catalog = tmp_path / "catalog.db"
    bad = tmp_path / "bad.toml"
    bad.write_text(f"""{host_tls_toml("hostx")}
[host]
name = "hostx"
secret = "{SECRET}"
[[controllers]]
name = "c1"
address = "127.0.0.1:1"
[[paths]]
devices = "1A00-1A0F"
controller = "c1"
ssid = "1A00"
lss = "0A"
cca = "00"
[[paths]]
devices = "1A08-1A10"
controller = "nosuch"
ssid = "1A00"
lss = "0B"
cca = "FA"
[[paths]]
devices = "1G00"
controller = "c1"
ssid = "1A00"
lss = "0A"
cca = "20"
""")
    run = cli("host", "add", str(bad), catalog=catalog, check=False)
    assert run.returncode == 2
    assert "paths[2].devices" in run.stderr and "1G00" in run.stderr
    run2 = bad.read_text().replace('devices = "1G00"', 'devices = "1C00"')
    bad.write_text(run2)
    run = cli("host", "add", str(bad), catalog=catalog, check=False)
    assert run.returncode == 2
    assert "unknown controller 'nosuch'" in run.stderr
    assert "overlaps paths[0]" in run.stderr
    assert "run past CCA FF" in run.stderr
    listed = json.loads(cli("host", "list", "--json", catalog=catalog).stdout)
    assert listed == []


async def test_group_edits_are_all_or_nothing_and_operations_are_logged(world, tmp_path):
    """A bad pair leaves the group as it was; good edits store; the operation log records."""
    from remcopy.catalog import Catalog

    catalog = tmp_path / "catalog.db"
    cli("host", "add", str(host_file(tmp_path, world)), catalog=catalog)
    cli("scan", HOST, catalog=catalog)
    group = tmp_path / "small.toml"
    group.write_text(
        '[group]\nname = "SMALL"\n[[pairs]]\nvolser = "P00000"\nsecondary_volser = "SB0000"\n'
    )
    cli("group", "define", str(group), catalog=catalog)
    bad = cli(
        "group",
        "add",
        "SMALL",
        "--pair",
        "P00001,SB0001",
        "--pair",
        "NOSUCH,SB0002",
        "--pair",
        "P00003,P10003",
        catalog=catalog,
        check=False,
    )
    assert bad.returncode == 2
    assert "NOSUCH: unknown volser" in bad.stderr
    assert "same controller" not in bad.stderr  # different serials: 64015 vs 64016
    listed = json.loads(cli("group", "list", "--json", catalog=catalog).stdout)
    assert [(g["group"], g["pairs"]) for g in listed] == [("SMALL", 1)]
    cli(
        "group",
        "add",
        "SMALL",
        "--pair",
        "P00001,SB0001",
        "--pair",
        "hosta:1A02,hosta:2B02",
        catalog=catalog,
    )
    assert json.loads(cli("group", "list", "--json", catalog=catalog).stdout)[0]["pairs"] == 3
    cli("group", "remove-pair", "SMALL", "1A02", "--host", HOST, catalog=catalog)
    assert json.loads(cli("group", "list", "--json", catalog=catalog).stdout)[0]["pairs"] == 2
    cli("group", "load", "SMALL", "--host", HOST, catalog=catalog)
    cli("group", "establish", "SMALL", "--host", HOST, "--wait", catalog=catalog)
    cli("group", "status", "SMALL", "--host", HOST, "--expect", "DUPLEX", catalog=catalog)
    cli("group", "suspend", "SMALL", "--host", HOST, catalog=catalog)
    shadow_map = tmp_path / "shadow.map"
    shadow_map.write_text("65000:2B00:20:00 65000:3B00:30:00\n65000:2B00:20:01 65000:3B00:30:01\n")
    shadow = ["group", "shadow", "SMALL", "--host", HOST, "--to", str(shadow_map), "--json"]
    planned = json.loads(cli(*shadow, "--dry-run", catalog=catalog).stdout)
    assert planned["plan"]["controllers"] == {
        "cntlb": {"pairs": 2, "moves": {"SUSPENDED -> SUSPENDED": 2}, "tracks": 128, "refused": 0}
    }
    out = json.loads(cli(*shadow, "--wait", catalog=catalog).stdout)
    assert out["requests_per_controller"] == {"cntlb": 1}
    assert out["copy_s"] > 0
    again = json.loads(cli(*shadow, "--dry-run", catalog=catalog, check=False).stdout)
    assert again["failed"] == 0, "the copies are done: a new shadow copy may start"
    with Catalog.open(catalog) as opened:
        log = opened.operations_all(limit=10, target="SMALL")
    assert [op.op for op in log] == ["group shadow", "group suspend", "group establish"]
    assert all(op.result == "ok" for op in log)
    suspend_record = log[1].details
    assert suspend_record["consistent"] is True
    assert suspend_record["at_ns"] > 0


async def test_subchannel_sets_number_devices_past_FFFF(world, tmp_path):
    """Device numbers of subchannel sets 1-3 (5 hex digits, the set first) work like those of
    set 0 from the host definition to a consistent suspend: scanned, shown in numeric order,
    named by a group, operated on; a range across two sets is refused, naming both ends."""
    catalog = tmp_path / "catalog.db"
    host_path = host_file(tmp_path, world)
    text = host_path.read_text()
    host_path.write_text(
        text.replace('devices = "1B00-1B03"', 'devices = "11B00-11B03"').replace(
            'devices = "2B00-2B07"', 'devices = "32B00-32B07"'
        )
    )
    cli("host", "add", str(host_path), catalog=catalog)
    cli("scan", HOST, catalog=catalog)
    shown = json.loads(cli("map", "show", HOST, "--json", catalog=catalog).stdout)
    numbers = [e["device"] for e in shown]
    assert numbers == [
        *(f"1A0{k}" for k in range(4)),
        *(f"11B0{k}" for k in range(4)),
        *(f"32B0{k}" for k in range(8)),
    ], "set 0 first, then set 1, then set 3, each in order"
    found = json.loads(
        cli("map", "show", HOST, "--device", "11b02", "--json", catalog=catalog).stdout
    )
    assert [(e["device"], e["address"]) for e in found] == [("11B02", "64016:1A00:0A:02")]
    group = tmp_path / "sets.toml"
    group.write_text(f"""
[group]
name = "SETS"
[[pairs]]
host = "{HOST}"
devices = "11B00-11B03"
secondary_devices = "32B04-32B07"
""")
    cli("group", "define", str(group), catalog=catalog)
    est = json.loads(
        cli(
            "group", "establish", "SETS", "--host", HOST, "--wait", "--json", catalog=catalog
        ).stdout
    )
    assert est["failed"] == 0 and est["counts"] == {"DUPLEX": 4}
    near = cli(
        "group", "suspend", "SETS", "--host", HOST, "--in", "0ms", catalog=catalog, check=False
    )
    assert near.returncode == 2, near.stderr
    assert "choose a later time" in near.stderr
    assert "us for each of the 4 devices of the largest request" in near.stderr
    susp = json.loads(
        cli("group", "suspend", "SETS", "--host", HOST, "--json", catalog=catalog).stdout
    )
    assert susp["consistent"] is True and susp["failed"] == 0
    status = json.loads(
        cli("group", "status", "SETS", "--host", HOST, "--json", catalog=catalog).stdout
    )
    assert status["counts"] == {"SUSPENDED": 4}
    pair = json.loads(
        cli(
            "group", "show", "SETS", "--host", HOST, "--pair", "32B05", "--json", catalog=catalog
        ).stdout
    )
    assert pair[0]["primary"] == "64016:1A00:0A:01"
    across = tmp_path / "across.toml"
    across.write_text(
        f'[group]\nname = "ACROSS"\n[[pairs]]\nhost = "{HOST}"\ndevices = "FFFF-10002"\n'
        'secondary_devices = "32B00-32B03"\n'
    )
    run = cli("group", "define", str(across), catalog=catalog, check=False)
    assert run.returncode == 2
    assert "start FFFF is in subchannel set 0, end 10002 in set 1" in run.stderr
    assert "Traceback" not in run.stderr
