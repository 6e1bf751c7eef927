# Scheduled suspends, as real processes: a T beyond every request timeout is armed at once,
# waited for, and reported consistent at T; --no-wait returns once armed and `group status`
# shows T; --cancel disarms before T, and the seal at T then leaves the pairs mirroring; an
# armed suspend survives kill -9 of its controller and is sealed at T after the restart.
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from mirror_world import World, all_ok, build, channel, establish, host_file, stop

from common import HOST, run_remcopy
from remcopy.errors import SuspendNotArmed, SuspendTimeInPast
from remcopy.events import EventKind
from remcopy.host.engine import EngineLimits
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairOp

DEVICES = tuple(0x0A00 + cca for cca in range(4))
PAIRS = [f"P{c}{k:04X}" for c in range(2) for k in range(4)]


def cli(*args: str, catalog: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_remcopy(*args, catalog=catalog, code=0 if check else None, timeout_s=120)


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path, primaries=2, volumes=4)
    yield w
    await stop(w)


def drill(world: World, tmp_path: Path) -> Path:
    """Group DRILL (8 pairs on two primary controllers), established: its catalog."""
    catalog = tmp_path / "catalog.db"
    cli("host", "add", str(host_file(tmp_path, world)), catalog=catalog)
    cli("scan", HOST, catalog=catalog)
    group = tmp_path / "drill.toml"
    group.write_text(f"""
[group]
name = "DRILL"
mode = "sync"
[[pairs]]
host = "{HOST}"
devices = "1A00-1A03"
secondary_devices = "2B00-2B03"
[[pairs]]
host = "{HOST}"
devices = "1B00-1B03"
secondary_devices = "2B04-2B07"
""")
    cli("group", "define", str(group), catalog=catalog)
    cli("group", "load", "DRILL", "--host", HOST, catalog=catalog)
    cli("group", "establish", "DRILL", "--host", HOST, "--wait", catalog=catalog)
    return catalog


def status(catalog: Path) -> dict[str, object]:
    out = cli("group", "status", "DRILL", "--host", HOST, "--json", catalog=catalog, check=False)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


async def test_group_suspend_beyond_the_request_timeout_is_consistent_at_T(world, tmp_path):
    """`--in 12s`, past the I/O engine's 10 s request timeout: armed, waited for, consistent at T
    with two requests per controller; a cancel after T is refused naming the suspended pairs."""
    catalog = drill(world, tmp_path)
    run = cli("group", "suspend", "DRILL", "--host", HOST, "--in", "12s", catalog=catalog)
    assert re.search(r"armed at T=\d+ .* on 2 controllers; waiting", run.stderr), run.stderr
    assert "consistent at T=" in run.stdout
    from remcopy.catalog import Catalog

    with Catalog.open(catalog) as opened:
        record = opened.operations_all(limit=1, target="DRILL")[0].details
    assert record["margin_s"] > EngineLimits().timeout_s, "T must lie beyond the request timeout"
    assert record["consistent"] is True, record["failures"]
    assert record["armed"] is False
    assert record["requests_per_controller"] == {"cntla0": 2, "cntla1": 2}  # arm, then wait
    assert record["pair_states"] == dict.fromkeys(PAIRS, "SUSPENDED")
    assert sorted(record["seal"]) == ["cntla0", "cntla1"]
    for seal in record["seal"].values():
        assert seal["at_ns"] == record["at_ns"] <= seal["sealed_ns"] <= seal["drained_ns"]
    shown = status(catalog)
    assert shown["counts"] == {"SUSPENDED": 8}
    assert shown["suspend_at_ns"] == record["at_ns"]
    assert shown["armed"] == []
    late = cli(
        "group", "suspend", "DRILL", "--host", HOST, "--cancel", catalog=catalog, check=False
    )
    assert late.returncode == 2, (late.stdout, late.stderr)
    assert "nothing to cancel" in late.stderr and "8 SUSPENDED" in late.stderr
    assert "has passed" in late.stderr


async def test_no_wait_arms_status_shows_T_and_cancel_disarms(world, tmp_path):
    """`--in 2h --no-wait` arms on every controller and exits 0; status shows the armed T;
    other state changes are refused until --cancel disarms; a second --cancel is bad input."""
    catalog = drill(world, tmp_path)
    armed = cli(
        "group", "suspend", "DRILL", "--host", HOST, "--in", "2h", "--no-wait", catalog=catalog
    )
    assert "armed at T=" in armed.stdout and "on 2 controllers (8 pairs)" in armed.stdout
    match = re.search(r"armed at T=(\d+)", armed.stdout)
    assert match
    at_ns = int(match.group(1))
    assert at_ns > time.time_ns()
    shown = status(catalog)
    assert shown["counts"] == {"DUPLEX": 8}
    assert shown["armed"] == [{"at_ns": at_ns, "pairs": 8}]
    human = cli("group", "status", "DRILL", "--host", HOST, catalog=catalog)
    assert f"suspend armed at T={at_ns}" in human.stdout
    busy = cli(
        "group",
        "terminate",
        "DRILL",
        "--host",
        HOST,
        "--yes",
        "--json",
        catalog=catalog,
        check=False,
    )
    assert busy.returncode == 1
    refusals = [f["message"] for f in json.loads(busy.stdout)["failures"]]
    assert len(refusals) == 8
    assert all("a suspend is armed" in m and "--cancel" in m for m in refusals), refusals
    cancelled = json.loads(
        cli(
            "group", "suspend", "DRILL", "--host", HOST, "--cancel", "--json", catalog=catalog
        ).stdout
    )
    assert cancelled["op"] == "suspend_cancel"
    assert cancelled["disarmed"] == 8 and cancelled["failed"] == 0
    assert cancelled["at_ns"] == at_ns
    assert cancelled["requests_per_controller"] == {"cntla0": 1, "cntla1": 1}
    shown = status(catalog)
    assert shown["counts"] == {"DUPLEX": 8}
    assert shown["armed"] == []
    again = cli(
        "group", "suspend", "DRILL", "--host", HOST, "--cancel", catalog=catalog, check=False
    )
    assert again.returncode == 2, (again.stdout, again.stderr)
    assert "nothing to cancel" in again.stderr and "8 DUPLEX" in again.stderr
    mixed = cli(
        "group",
        "suspend",
        "DRILL",
        "--host",
        HOST,
        "--cancel",
        "--in",
        "5s",
        catalog=catalog,
        check=False,
    )
    assert mixed.returncode == 2
    assert "--in cannot be given with --cancel" in mixed.stderr


async def test_a_cancelled_suspend_is_skipped_at_T_and_the_pairs_stay_duplex(world, tmp_path):
    """Disarmed before T, the pairs are left alone when T comes: each controller's seal at T
    says it skipped them, and they are DUPLEX with nothing armed afterwards."""
    catalog = drill(world, tmp_path)
    async with channel(world.primaries[0]) as ch0, channel(world.primaries[1]) as ch1:
        events = [await ch0.subscribe(), await ch1.subscribe()]
        armed = json.loads(
            cli(
                "group",
                "suspend",
                "DRILL",
                "--host",
                HOST,
                "--in",
                "12s",
                "--no-wait",
                "--json",
                catalog=catalog,
            ).stdout
        )
        at_ns = armed["at_ns"]
        assert armed["armed"] is True and armed["failed"] == 0
        assert armed["pair_states"] == dict.fromkeys(PAIRS, "DUPLEX")
        cli("group", "suspend", "DRILL", "--host", HOST, "--cancel", catalog=catalog)
        for stream in events:
            # The controller's own timer fires at T (on its clock) and finds nothing armed.
            skipped = await stream.wait_until(
                lambda e: e.kind is EventKind.DISARMED and e.cause == "skipped"
            )
            assert (skipped.at_ns, skipped.detail) == (at_ns, {"devices": 4, "lss": "0A"})
            assert not [e for e in stream.seen if e.new is PairState.SUSPENDED], stream.seen
        for ch in (ch0, ch1):
            for s in await ch.query(DEVICES):
                assert (s.state, s.suspend_at_ns) == (PairState.DUPLEX, 0)
    cli("group", "status", "DRILL", "--host", HOST, "--expect", "DUPLEX", catalog=catalog)


async def test_an_armed_suspend_survives_kill_9_and_is_sealed_at_T_after_restart(tmp_path):
    """SUSPEND answered once armed; kill -9 and restart before T; SUSPEND_WAIT answers
    SUSPENDED at T. SUSPEND_CANCEL then refuses: T has passed."""
    world = await build(tmp_path, primaries=1, volumes=4)
    try:
        await establish(world, 0, CopyMode.SYNC)
        items = world.pair_items(0, CopyMode.SYNC)
        at_ns = time.time_ns() + 5_000_000_000
        async with channel(world.primaries[0]) as ch:
            reply = await ch.pair_op(
                PairOp.SUSPEND, items, at_ns=at_ns, options={"answer": "armed"}
            )
        all_ok(reply)
        assert {(r.state, r.at_ns) for r in reply.results} == {(PairState.DUPLEX, at_ns)}
        assert reply.document["armed"] == 4
        await world.primaries[0].kill()
        await world.primaries[0].start()
        async with channel(world.primaries[0]) as ch:
            sealed = await ch.pair_op(PairOp.SUSPEND_WAIT, items, at_ns=at_ns)
            all_ok(sealed)
            assert {(r.state, r.at_ns) for r in sealed.results} == {(PairState.SUSPENDED, at_ns)}
            assert sealed.document["at_ns"] == at_ns <= sealed.document["sealed_ns"]
            late = await ch.pair_op(PairOp.SUSPEND_CANCEL, items)
            assert {r.code for r in late.results} == {SuspendTimeInPast.code}
            assert "has passed" in late.results[0].message
            other = await ch.pair_op(PairOp.SUSPEND_CANCEL, items[:1], at_ns=at_ns + 1)
            assert other.results[0].code == SuspendTimeInPast.code
        async with channel(world.secondary) as sec:
            for s in await sec.query(tuple(world.secondary_device(0, c) for c in range(4))):
                assert (s.state, s.suspend_at_ns) == (PairState.SUSPENDED, at_ns)
    finally:
        await stop(world)


async def test_cancel_copies_writes_stamped_at_or_after_T_that_arrived_while_armed(world):
    """A write stamped >= T (a host clock ahead) is change-recorded while armed; once the
    suspend is cancelled the pair resyncs, and the secondary holds the write when DUPLEX."""
    from mirror_world import digest, wait_settled

    await establish(world, 0, CopyMode.SYNC)
    items = world.pair_items(0, CopyMode.SYNC)
    at_ns = time.time_ns() + 3600 * 10**9
    async with channel(world.primaries[0]) as ch, channel(world.secondary) as sec:
        all_ok(await ch.pair_op(PairOp.SUSPEND, items, at_ns=at_ns, options={"answer": "armed"}))
        await ch.write(0x0A01, 65536, b"\x5a" * 4096, timestamp_ns=at_ns + 1)
        (armed,) = await ch.query((0x0A01,))
        assert (armed.state, armed.dirty_tracks) == (PairState.DUPLEX, 1)
        secondary = world.secondary_device(0, 1)
        assert await digest(sec, secondary, world.size_bytes) != await digest(
            ch, 0x0A01, world.size_bytes
        ), "the write stamped >= T must not have been mirrored"
        events = await ch.subscribe()
        cancelled = await ch.pair_op(PairOp.SUSPEND_CANCEL, items)
        all_ok(cancelled)
        assert {(r.state, r.at_ns) for r in cancelled.results} == {(PairState.DUPLEX, at_ns)}
        assert cancelled.document == {"disarmed": 4}
        await events.wait_for(
            r"64015:1A00:0A:01 SUSPENDED_ERROR -> PENDING cause=resync-after-cancel"
        )
        await wait_settled(ch, DEVICES)
        assert await digest(sec, secondary, world.size_bytes) == await digest(
            ch, 0x0A01, world.size_bytes
        )


async def test_cancel_of_a_device_not_armed_names_it(world):
    """SUSPEND_CANCEL on a DUPLEX pair with nothing armed refuses it: nothing to cancel."""
    await establish(world, 0, CopyMode.SYNC)
    async with channel(world.primaries[0]) as ch:
        reply = await ch.pair_op(PairOp.SUSPEND_CANCEL, world.pair_items(0, CopyMode.SYNC)[:2])
    assert [r.code for r in reply.results] == [SuspendNotArmed.code] * 2
    assert "none is armed (it is DUPLEX, primary): nothing to cancel" in reply.results[0].message
