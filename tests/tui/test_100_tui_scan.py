# Panels 5A and 5B driven headless against real controllers: a range checked as it is typed,
# a scan with progress per controller, then its results per controller, filtered and sorted.
from __future__ import annotations

from textual.widgets import Button, DataTable, Input, Select
from tui_world import click, rows, said, shot, type_into, wait_until

from common import HOST
from remcopy.catalog import Catalog
from remcopy.tui import RemcopyApp
from remcopy.tui.scan_progress import ControllerBar


async def test_a_range_is_checked_as_typed_and_scanned_with_progress(catalog: Catalog) -> None:
    """Bad ranges are named as typed; a good one scans both primaries and stores the map."""
    app = RemcopyApp(catalog)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.host == HOST, "the first host picked")
        assert "16 device numbers of hosta" in said(app, "#range-check")
        scan_button = app.query_one("#scan", Button)

        await type_into(pilot, "#range", "1A00-1A0G")
        assert "is not a device number range" in said(app, "#range-check")
        assert scan_button.disabled
        await type_into(pilot, "#range", "1A09-1A00")
        assert "start 1A09 is after end 1A00" in said(app, "#range-check")
        await type_into(pilot, "#range", "3000-30FF")
        assert said(app, "#range-check") == "no device number of host hosta is in 3000-30FF"
        # Subchannel sets 1-3: 5 hex digits, the set first; a range stays in one set.
        await type_into(pilot, "#range", "FFFF-10002")
        assert "a range stays in one set" in said(app, "#range-check")
        await type_into(pilot, "#range", "11a00-11aff")
        assert said(app, "#range-check") == "no device number of host hosta is in 11A00-11AFF"
        await type_into(pilot, "#range", "01c00")  # set 0 written with 5 digits
        assert said(app, "#range-check") == "no device number of host hosta is in 1C00"
        assert scan_button.disabled

        await type_into(pilot, "#range", "1A00-1B03")
        assert said(app, "#range-check") == "8 device numbers of hosta: 4 on cntla0, 4 on cntla1"
        assert not scan_button.disabled
        await pilot.press("enter")
        await wait_until(pilot, lambda: "mapped" in said(app, "#scan-result"), "the scan")
        assert said(app, "#scan-result").startswith("scan hosta: 8 devices mapped, 0 failed, 2 ")
        bars = {
            bar.controller: bar.query_one(".count").render() for bar in app.query(ControllerBar)
        }
        assert {c: str(text) for c, text in bars.items()} == {"cntla0": "4/4", "cntla1": "4/4"}
        assert [e.volser for e in catalog.map_all(HOST)] == [
            *(f"P0{i:04X}" for i in range(4)),
            *(f"P1{i:04X}" for i in range(4)),
        ]
        assert app.scan_id == catalog.scans_all(HOST)[0].id
        shot(app, "5a-device-range")


async def test_scan_results_per_controller_filter_and_sort(catalog: Catalog) -> None:
    """After a scan of every device, 5B shows each controller's devices, filtered and sorted."""
    app = RemcopyApp(catalog)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.host == HOST, "the first host picked")
        await click(pilot, "#scan")
        await wait_until(pilot, lambda: app.scan_id > 0, "the scan of every device")
        await pilot.press("escape", "2")
        table = "#devices"
        await wait_until(pilot, lambda: len(rows(app, table)) == 16, "16 devices in 5B")
        assert rows(app, table)[0] == [
            "cntla0",
            "1A00",
            "64015:1A00:0A:00",
            "P00000",
            "simplex",
            "none",
        ]

        await click(pilot, "#controller")
        await pilot.press("down", "down", "enter")  # all -> cntla0 -> cntla1
        await wait_until(
            pilot, lambda: app.query_one("#controller", Select).value == "cntla1", "cntla1"
        )
        assert [r[1] for r in rows(app, table)] == ["1B00", "1B01", "1B02", "1B03"]
        assert said(app, "#summary") == "hosta: 4 of 16 devices on cntla1, by device ascending"

        await click(pilot, "#controller")
        await pilot.press("up", "up", "enter")
        await click(pilot, "#filter")
        await pilot.press(*"0a:02")
        assert [r[2] for r in rows(app, table)] == [
            "64015:1A00:0A:02",
            "64016:1A00:0A:02",
        ]
        app.query_one("#filter", Input).value = "SB"
        await pilot.pause()
        assert len(rows(app, table)) == 8

        app.query_one("#filter", Input).value = ""
        devices = app.query_one(table, DataTable)
        x = sum(c.get_render_width(devices) for c in devices.ordered_columns[:2]) + 2
        for order in ("ascending", "descending"):  # a click on a header sorts, again reverses
            await pilot.click(table, offset=(x, 0))
            by = f"by hardware address {order}"
            await wait_until(pilot, lambda by=by: said(app, "#summary").endswith(by), by)
        addresses = [r[2] for r in rows(app, table)]
        assert addresses == sorted(addresses, reverse=True)

        await pilot.click(table, offset=(1, 2))  # a row, not a header: focus the table
        await pilot.press("s")  # the next column, volser, still descending
        volsers = [r[3] for r in rows(app, table)]
        assert volsers == sorted(volsers, reverse=True)
        assert volsers[0] == "SB0007"
        await pilot.press("r")
        assert [r[3] for r in rows(app, table)] == sorted(volsers)
        assert said(app, "#summary") == (
            "hosta: 16 of 16 devices on all controllers, by volser ascending"
        )
        shot(app, "5b-scan-results")
