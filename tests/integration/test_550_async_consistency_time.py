# Async consistency groups keep a consistency time C at the secondary site (DESIGN.md
# section 2): real controllers, dependent writes across primaries, the fault world's links.
# - kill -9 of a secondary controller mid-load: its journal replays, C does not go back, its
#   volumes are a consistent cut at C, and a resume brings identical volumes in DUPLEX;
# - recover agrees on one C over every secondary controller of the group: it refuses while
#   one cannot be reached, and --force goes on, saying the group is not consistent.
from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import run_remcopy
from remcopy.controller.process import ControllerProcess
from remcopy.demo.world import plan_world, write_files
from remcopy.errors import ConsistencyUnknown
from remcopy.events import EventKind
from remcopy.groups import recover, suspend
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairOp
from remcopy.workload.checker import check_image
from remcopy.workload.faultworld import (
    Load,
    Shape,
    World,
    digest,
    events,
    resume,
    until_settled,
    world,
)
from remcopy.workload.image import Image, ImageReader
from remcopy.workload.log import read_log
from remcopy.workload.report import CheckReport

WRITES = 400
_REPLAYED = re.compile(
    r"secondary journal replayed: C=(\d+), (\d+) updates written again, (\d+) wait"
)


async def _cut(w: World, name: str) -> dict[str, int]:
    reply = await w.session.channels[name].pair_op(
        PairOp.GROUP_CUT, (), options={"group": w.group.name}
    )
    return reply.document


async def _secondary_image(w: World, load: Load) -> CheckReport:
    reader = ImageReader(w.session, w.group, Image.SECONDARY)
    return await check_image(
        reader, read_log(load.log_path), require_all_acked=False, name=reader.name
    )


def _at(report: CheckReport, at_ns: int) -> bool:
    """The image is a cut at at_ns: every write present issued before it, every write
    acknowledged before it present."""
    window = report.cut_window_ns
    return window is not None and window[0] < at_ns and (window[1] is None or at_ns <= window[1])


async def test_kill_9_of_a_secondary_replays_its_journal_and_c_never_goes_back(tmp_path: Path):
    shape = Shape(primaries=2, links=True, mode=CopyMode.ASYNC)
    async with world(tmp_path, shape) as w:
        async with Load(w, tmp_path / "load.jsonl", seed=5, writers=4) as load:
            await load.wait(WRITES)
            # cntla0's link stalls: C waits for it, so cntla1's updates (acknowledged by the
            # secondary, settled at their primary) wait in the secondary's journal.
            w.links[0].stall()
            await load.wait(load.count + WRITES // 2)
            before = await _cut(w, "cntlb")
            assert before["applied_ns"] > 0 and before["waiting"] > 0
            await w.secondary.kill()  # SIGKILL mid-load: what waits for C is only in its journal
            await load.wait(load.count + WRITES // 2)  # the group froze: change-recorded
        w.links[0].heal()
        await w.secondary.start()
        # What the replay found, from its own log line (written before the controller is
        # ready): asked afterwards, the restarted secondary may already have written some of
        # it (a primary tells it the pairs froze, or both links' watermarks move C).
        replayed = _REPLAYED.findall(w.secondary.log_text())
        assert replayed, w.secondary.log_tail()
        c_ns, _written_again, waiting = (int(n) for n in replayed[-1])
        assert c_ns >= before["applied_ns"]  # C never goes back
        assert waiting >= before["waiting"]  # the journal replayed what waited
        after = await _cut(w, "cntlb")
        assert after["applied_ns"] >= c_ns
        statuses = await w.session.channels["cntlb"].query(
            tuple(p.secondary.device_key for p in w.group.pairs)
        )
        assert all(s.consistency_time_ns == after["applied_ns"] for s in statuses)
        image = await _secondary_image(w, load)
        assert image.consistent, image.summary()
        assert _at(image, after["applied_ns"]), (image.cut_window_ns, after)
        await resume(w)
        await until_settled(w)
        for pair in w.group.pairs:
            primary = await digest(w.session.channels[pair.primary_controller or ""], pair.primary)
            secondary = await digest(w.session.channels["cntlb"], pair.secondary)
            assert primary == secondary, f"{pair.secondary} differs from {pair.primary}"


async def test_recover_refuses_while_a_secondary_is_unreachable_and_force_says_not_consistent(
    tmp_path: Path,
):
    shape = Shape(primaries=2, secondaries=2, mode=CopyMode.ASYNC)
    async with world(tmp_path, shape) as w:
        async with Load(w, tmp_path / "load.jsonl", seed=9, writers=4) as load:
            await load.wait(WRITES)
            for proc in w.primaries:
                await proc.kill()
        lost = w.secondaries[1]
        await lost.kill()
        with pytest.raises(ConsistencyUnknown, match="cntlb1"):
            await recover(w.session, w.group)
        kept = await w.session.channels["cntlb"].query(
            tuple(
                p.secondary.device_key for p in w.group.pairs if p.secondary_controller == "cntlb"
            )
        )
        assert all(s.state is PairState.DUPLEX for s in kept)  # refused: nothing changed
        report = await recover(w.session, w.group, force=True)
        assert report.cut is not None
        assert not report.cut["consistent"] and report.cut["unreachable"] == ["cntlb1"]
        assert not report.consistent
        states = {p.pair.secondary_controller: p.ok for p in report.pairs}
        assert states == {"cntlb": True, "cntlb1": False}


async def test_a_suspend_of_an_async_group_is_its_consistency_time(tmp_path: Path):
    shape = Shape(primaries=2, secondaries=2, links=True, mode=CopyMode.ASYNC)
    async with world(tmp_path, shape) as w:
        for link in w.links:
            link.delay(0.005)
        async with Load(w, tmp_path / "load.jsonl", seed=3, writers=4) as load:
            await load.wait(WRITES)
            report = await suspend(w.session, w.group)
            await load.wait(load.count + WRITES // 4)
        assert report.consistent
        for name in ("cntlb", "cntlb1"):
            statuses = await w.session.channels[name].query(
                tuple(
                    p.secondary.device_key for p in w.group.pairs if p.secondary_controller == name
                )
            )
            assert all(s.state is PairState.SUSPENDED for s in statuses)
            assert all(s.consistency_time_ns == report.at_ns for s in statuses)
        reader = ImageReader(w.session, w.group, Image.SECONDARY)
        image = await check_image(
            reader, read_log(load.log_path), require_all_acked=False, at_ns=report.at_ns
        )
        assert image.consistent, image.summary()


async def test_the_cli_recover_of_an_async_group_refuses_without_a_secondary_and_force_warns(
    tmp_path: Path,
):
    """The demo's two sites with the group in async mode: with one secondary controller
    down, `group recover` refuses (exit 1, naming it, nothing changed); --force recovers the
    rest and says the group is NOT consistent."""
    demo = plan_world(tmp_path / "world", 8)
    write_files(demo, [f"127.0.0.1:{port}" for port in demo.secondary_ports])
    demo.group_file.write_text(demo.group_file.read_text().replace('"sync"', '"async"'))
    procs = {
        name: await ControllerProcess(demo.config(name)).start()
        for name in (f"{site}{i}" for site in ("cntla", "cntlb") for i in range(demo.primaries))
    }
    try:
        for host in ("hosta", "hostb"):
            run_remcopy("host", "add", str(demo.host_file(host)), catalog=demo.catalog)
            run_remcopy("scan", host, catalog=demo.catalog)
        run_remcopy("group", "define", str(demo.group_file), catalog=demo.catalog)
        for host in ("hosta", "hostb"):
            run_remcopy("group", "load", "DRILL", "--host", host, catalog=demo.catalog)
        run_remcopy(
            "group", "establish", "DRILL", "--host", "hosta", "--wait", catalog=demo.catalog
        )
        for name, proc in procs.items():
            if name.startswith("cntla") or name == "cntlb1":
                await proc.kill()  # the primary site, and one secondary controller
        args = ("group", "recover", "DRILL", "--host", "hostb", "--yes")
        refused = run_remcopy(*args, catalog=demo.catalog, code=1)
        assert "cannot agree on the group's consistency time" in refused.stderr
        assert "cntlb1" in refused.stderr and "Traceback" not in refused.stderr
        status = run_remcopy(
            "group", "status", "DRILL", "--host", "hostb", "--json", catalog=demo.catalog, code=None
        )
        assert "RECOVERED" not in status.stdout  # refused: nothing changed
        forced = run_remcopy(*args, "--force", catalog=demo.catalog, code=1)
        assert "NOT consistent" in forced.stdout and "cntlb1" in forced.stdout
    finally:
        for proc in procs.values():
            if proc.running:
                await proc.kill()


async def test_an_rpo_over_the_alert_limit_is_an_event_and_so_is_its_return(tmp_path: Path):
    """rpo_alert_s at the secondary: a stalled primary link stops C, so now - C grows past
    the limit and the secondary says so once; healed, C moves on and it says it is back
    under, once."""
    shape = Shape(
        primaries=2,
        links=True,
        mode=CopyMode.ASYNC,
        secondary_settings=(("rpo_alert_s", 0.5),),
        primary_settings=(("ack_timeout_s", 60.0), ("heartbeat_timeout_s", 60.0)),
    )
    async with world(tmp_path, shape) as w, events([w.secondary]) as subs:
        sub = subs[w.secondary.name]
        async with Load(w, tmp_path / "load.jsonl", seed=9, writers=2) as load:
            await load.wait(WRITES // 4)  # C moves with the writes: no event yet
            w.links[0].stall()
            over = await sub.wait_until(lambda e: e.kind is EventKind.RPO, timeout_s=60)
            assert (over.group, over.detail["over"]) == (w.group.name, True)
            assert over.detail["rpo_s"] > 0.5 and over.detail["limit_s"] == 0.5
            w.links[0].heal()
            back = await sub.wait_until(lambda e: e.kind is EventKind.RPO, timeout_s=60)
            assert (back.group, back.detail["over"]) == (w.group.name, False)
            assert back.seq > over.seq  # numbered in the controller's one sequence
