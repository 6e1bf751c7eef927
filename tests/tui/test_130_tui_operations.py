# Panel 5E driven headless against real controllers: the per-controller plan, establish and
# watch the pairs reach DUPLEX, suspend "consistent at T", and a destructive operation that
# asks first, naming the group and its number of pairs.
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textual.widgets import Input, Label, ProgressBar, Select
from tui_world import click, define_payroll, fill, rows, said, shot, wait_until

from common import HOST
from remcopy.catalog import Catalog
from remcopy.groups.service import group_status
from remcopy.host.service import scan_host
from remcopy.states import PairState
from remcopy.tui import RemcopyApp
from remcopy.tui.common import ConfirmScreen
from remcopy.tui.operation_watch import OperationWatch
from remcopy.tui.operations_panel import OPERATIONS


async def pick_operation(pilot: Any, value: str) -> None:
    """Open the operation list with the mouse and choose `value` with the keyboard."""
    select = pilot.app.query_one("#op", Select)
    steps = OPERATIONS.index(value) - OPERATIONS.index(str(select.value))
    await click(pilot, "#op")
    await pilot.press(*(["down"] * steps if steps >= 0 else ["up"] * -steps), "enter")
    await wait_until(pilot, lambda: select.value == value, f"operation {value}")


async def payroll_app(catalog: Catalog, root: Path) -> RemcopyApp:
    """The app over a scanned host and group PAYROLL of eight pairs on two controllers."""
    await scan_host(catalog, HOST)
    define_payroll(catalog, root, pairs=8)
    return RemcopyApp(catalog)


async def show_plan(pilot: Any) -> None:
    """Show panel 5E once the first host is picked, and wait for its two-request plan."""
    app = pilot.app
    await wait_until(pilot, lambda: app.host == HOST, "the first host picked")
    await pilot.press("5")
    await wait_until(pilot, lambda: len(rows(app, "#plan")) == 2, "the plan")


async def test_plan_establish_suspend_consistent_and_confirmed_terminate(
    catalog: Catalog, tmp_path: Path
) -> None:
    """The plan shows one request per controller; suspend is consistent at T; terminate asks."""
    app = await payroll_app(catalog, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_plan(pilot)
        plan = "#plan"
        assert rows(app, plan) == [
            ["cntla0", "4", "P00000", "P00003"],
            ["cntla1", "4", "P10000", "P10003"],
        ]
        assert said(app, "#plan-title") == (
            "plan: establish 8 pairs of PAYROLL as hosta, 2 requests, one per controller"
        )

        await click(pilot, "#run")
        await wait_until(
            pilot, lambda: "establish PAYROLL: 8 pairs" in said(app, "#result"), "establish"
        )
        # The panel followed the copies to the end: every pair DUPLEX when it reports, the
        # bar full at every track of the eight volumes, the copy's time on its own line.
        result = said(app, "#result")
        assert "2 requests to 2 controllers: 8 duplex" in result, result
        tracks = sum(p.tracks for p in app.query_one(OperationWatch).report.pairs)
        assert tracks > 0 and f"\ncopied {tracks} tracks in " in result, result
        bar = app.query_one("#working", ProgressBar)
        assert (bar.total, bar.progress) == (tracks, tracks)
        outcomes = "#outcomes"
        await wait_until(
            pilot,
            lambda: [r[2] for r in rows(app, outcomes)] == ["duplex"] * 8,
            "every pair DUPLEX, as the live state column shows",
        )

        await pick_operation(pilot, "suspend")
        assert said(app, "#plan-title").startswith("plan: suspend 8 pairs of PAYROLL")
        await click(pilot, "#run")
        await wait_until(
            pilot, lambda: "suspend PAYROLL: 8 pairs" in said(app, "#result"), "suspend"
        )
        result = said(app, "#result")
        # Each pair's row says why when it is not (a request that reached its controller
        # after T says so): shown on failure.
        assert "8 suspended" in result, (result, rows(app, outcomes))
        assert "\nconsistent at T=" in result, result
        at_ns = int(result.split("consistent at T=")[1].split(" ")[0])
        statuses = await group_status(catalog, "PAYROLL", HOST)
        assert {(s.state, s.suspend_at_ns) for s in statuses} == {(PairState.SUSPENDED, at_ns)}
        await wait_until(
            pilot,
            lambda: [r[2] for r in rows(app, outcomes)] == ["suspended"] * 8,
            "every pair SUSPENDED in the live column",
        )
        shot(app, "5e-group-operations")

        await click(pilot, "#run")  # again: every pair refuses, already SUSPENDED
        await wait_until(pilot, lambda: "NOT consistent" in said(app, "#result"), "the refusal")
        assert "8 pairs not in the expected state (marked !)" in said(app, "#result")
        assert all(r[1].startswith("! cannot suspend") for r in rows(app, outcomes))

        await pick_operation(pilot, "terminate")
        await click(pilot, "#run")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        question = str(app.screen.query_one("#question", Label).content)
        assert question == "terminate group PAYROLL: 8 pairs, acting as hosta?"
        shot(app, "5e-confirm-terminate")
        await click(pilot, "#no")
        assert said(app, "#result") == "terminate PAYROLL: cancelled, nothing sent"
        statuses = await group_status(catalog, "PAYROLL", HOST)
        assert {s.state for s in statuses} == {PairState.SUSPENDED}

        await click(pilot, "#run")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await click(pilot, "#yes")
        await wait_until(
            pilot, lambda: "terminate PAYROLL: 8 pairs" in said(app, "#result"), "terminate"
        )
        assert "8 simplex" in said(app, "#result")
        statuses = await group_status(catalog, "PAYROLL", HOST)
        assert {s.state for s in statuses} == {PairState.SIMPLEX}


async def test_suspend_at_an_absolute_time_then_shadow_copy(
    catalog: Catalog, world: Any, tmp_path: Path
) -> None:
    """T typed as a time is the T every pair suspends at; bad T or no shadow map sends nothing;
    the shadow copy goes to the tertiaries the map names and equals the secondaries."""
    from datetime import datetime

    from mirror_world import channel, digest
    from tui_world import type_into

    from remcopy.groups.when import parse_at

    app = await payroll_app(catalog, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_plan(pilot)
        await click(pilot, "#run")
        await wait_until(
            pilot,
            lambda: [r[2] for r in rows(app, "#outcomes")] == ["duplex"] * 8,
            "every pair DUPLEX",
        )

        await pick_operation(pilot, "suspend")
        await type_into(pilot, "#arg", "soon")
        assert not app.query_one("#arg", Input).is_valid  # refused as typed
        await click(pilot, "#run")
        assert said(app, "#result").startswith("--at: expected an ISO date and time")
        statuses = await group_status(catalog, "PAYROLL", HOST)
        assert {s.state for s in statuses} == {PairState.DUPLEX}  # nothing was sent

        # Put whole (typing it key by key on a loaded machine can take longer than the lead,
        # and a T already past is refused, rightly).
        when = datetime.fromtimestamp(time.time() + 8).isoformat(timespec="microseconds")
        await fill(pilot, "#arg", when)
        assert app.query_one("#arg", Input).is_valid
        await click(pilot, "#run")
        await wait_until(
            pilot, lambda: "suspend PAYROLL: 8 pairs" in said(app, "#result"), "suspend"
        )
        at_ns = parse_at(when)
        assert f"\nconsistent at T={at_ns} " in said(app, "#result"), said(app, "#result")
        statuses = await group_status(catalog, "PAYROLL", HOST)
        assert {(s.state, s.suspend_at_ns) for s in statuses} == {(PairState.SUSPENDED, at_ns)}

        await pick_operation(pilot, "shadow")
        assert str(app.query_one("#arg-label", Label).content) == "to"
        await click(pilot, "#run")
        assert said(app, "#result") == "shadow: give the SECONDARY TERTIARY map file to copy to"
        shadow_map = tmp_path / "shadow.map"
        shadow_map.write_text(
            "".join(f"65000:2B00:20:{i:02X} 65000:3B00:30:{i:02X}\n" for i in range(8))
        )
        async with channel(world.secondary) as sec:
            events = await sec.subscribe()
            await fill(pilot, "#arg", str(shadow_map))
            await click(pilot, "#run")
            await wait_until(
                pilot, lambda: "shadow PAYROLL: 8 pairs" in said(app, "#result"), "shadow"
            )
            assert "not in the expected state" not in said(app, "#result"), said(app, "#result")
            shot(app, "5e-shadow-copied")
            for _ in range(8):
                await events.wait_for(r"^shadow .* done")
            for i in range(8):
                sdev, tdev = (
                    world.secondary_device(i // 4, i % 4),
                    world.tertiary_device(i // 4, i % 4),
                )
                assert await digest(sec, tdev, world.size_bytes) == await digest(
                    sec, sdev, world.size_bytes
                )
