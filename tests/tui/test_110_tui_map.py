# Panel 5C driven headless against real controllers: two scans from 5A, then the map found by
# each key, and what the second scan changed highlighted.
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable, Input
from tui_world import click, rows, said, shot, type_into, wait_until

from common import HOST
from remcopy.catalog import Catalog
from remcopy.tui import RemcopyApp


async def test_the_map_is_found_by_each_key_with_the_diff_highlighted(catalog: Catalog) -> None:
    """Volser, device number and hardware address each find the device; new and gone show."""
    app = RemcopyApp(catalog)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.host == HOST, "the first host picked")
        await type_into(pilot, "#range", "1A00-1B00")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.scan_id > 0, "the first scan")
        first = app.scan_id
        await type_into(pilot, "#range", "1A01-1B03")
        await click(pilot, "#scan")
        await wait_until(pilot, lambda: app.scan_id > first, "the second scan")

        await pilot.press("escape", "3")
        table = "#map-table"
        await wait_until(pilot, lambda: len(rows(app, table)) == 8, "7 devices and 1 gone")
        marks = {r[0]: r[5] for r in rows(app, table)}
        assert marks == {
            "1A00": "- gone",
            "1A01": "",
            "1A02": "",
            "1A03": "",
            "1B00": "",
            "1B01": "+ new",
            "1B02": "+ new",
            "1B03": "+ new",
        }
        cells = app.query_one(table, DataTable).get_row("1B01")
        assert isinstance(cells[0], Text) and cells[0].style == "bold green"
        assert said(app, "#legend").startswith(f"scan {app.scan_id} against scan {first}: 3 new")
        shot(app, "5c-device-map")

        for key, kind in (
            ("P10002", "volser"),
            ("1b02", "device number"),
            ("64016:1A00:0A:02", "hardware address"),
        ):
            await type_into(pilot, "#find", key)
            assert [r[:3] for r in rows(app, table)] == [["1B02", "64016:1A00:0A:02", "P10002"]], (
                key
            )
            assert said(app, "#found") == f"1 found by {kind} {key}"

        await type_into(pilot, "#find", "ZZ9999")
        assert rows(app, table) == []
        assert "ZZ9999: no device of hosta's map has it" in said(app, "#found")

        app.query_one("#find", Input).value = ""
        await pilot.press("escape")
        await pilot.click(table, offset=(1, 2))  # a row: the table has the focus
        await pilot.press("c")
        await wait_until(pilot, lambda: len(rows(app, table)) == 4, "changes only")
        assert [r[0] for r in rows(app, table)] == ["1A00", "1B01", "1B02", "1B03"]
