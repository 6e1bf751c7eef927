# Panel 5D driven headless against real controllers: a group's pairs with their live state,
# bad pairs refused inline with the catalog unchanged, a good pair added, found by each of the
# five keys, and deleted.
from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable
from tui_world import click, define_payroll, fill, rows, said, shot, wait_until

from common import HOST
from remcopy.catalog import Catalog
from remcopy.host.service import scan_host
from remcopy.tui import RemcopyApp
from remcopy.tui.groups_panel import GroupsPanel


async def test_a_group_is_edited_by_any_key_all_or_nothing(
    catalog: Catalog, tmp_path: Path
) -> None:
    """Bad pairs change nothing and say why inline; a good one is stored, found and deleted."""
    await scan_host(catalog, HOST)
    define_payroll(catalog, tmp_path, pairs=6)
    before = catalog.pairs_all("PAYROLL")
    app = RemcopyApp(catalog)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.host == HOST, "the first host picked")
        await pilot.press("4")
        table = "#groups-panel #pairs"
        await wait_until(
            pilot,
            lambda: [r[1] for r in rows(app, table)] == ["simplex"] * 6,
            "the live state of 6 pairs",
        )
        assert rows(app, table)[0] == [
            "P00000",
            "simplex",
            "sync",
            "0",
            "1A00",
            "2B00",
            "64015:1A00:0A:00",
            "65000:2B00:20:00",
        ]

        for primary, secondary, why in (
            ("P00001", "SB0006", "duplicate: 64015:1A00:0A:01 is also in pair P00001"),
            ("ZZ9999", "SB0006", "new pair: ZZ9999: unknown volser: no scanned map has it"),
            ("hosta:1B02", "hosta:1B03", "are on the same controller (serial 64016)"),
            ("hosta:1B02", "hosta:2B05", "65000:2B00:20:05 is also in pair P10001"),
        ):
            await fill(pilot, "#primary", primary)
            await fill(pilot, "#secondary", secondary)
            await click(pilot, "#add-pair")
            assert said(app, "#edit").startswith("nothing stored: group PAYROLL: "), primary
            assert why in said(app, "#edit")
            assert catalog.pairs_all("PAYROLL") == before
            assert len(rows(app, table)) == 6
        shot(app, "5d-group-edit-refused")

        # Sides named by two other kinds of key: host:device number, hardware address.
        await fill(pilot, "#primary", "hosta:1B02")
        await fill(pilot, "#secondary", "65000:2B00:20:06")
        await pilot.press("enter")
        assert said(app, "#edit") == (
            "pair hosta:1B02 -> 65000:2B00:20:06 added: group PAYROLL now has 7 pairs"
        )
        stored = catalog.pairs_all("PAYROLL")
        assert stored[:6] == before
        assert (stored[6].volser, stored[6].primary_address, stored[6].secondary_address) == (
            "P10002",
            "64016:1A00:0A:02",
            "65000:2B00:20:06",
        )
        await wait_until(pilot, lambda: len(rows(app, table)) == 7, "the new pair shown")

        pairs = app.query_one(table, DataTable)
        for key in ("P10002", "1B02", "2B06", "64016:1A00:0A:02", "65000:2B00:20:06"):
            pairs.move_cursor(row=0)
            await fill(pilot, "#key", key)
            await pilot.press("enter")
            assert said(app, "#edit").startswith("pair P10002: primary 1B02 64016:1A00:0A:02"), key
            await wait_until(
                pilot, lambda: rows(app, table)[pairs.cursor_row][0] == "P10002", f"row of {key}"
            )
        # A status round draws the table again: the cursor stays on the pair found.
        panel = app.query_one(GroupsPanel)
        panel.watch_statuses(panel.statuses)
        assert rows(app, table)[pairs.cursor_row][0] == "P10002"
        shot(app, "5d-group-browse")

        await fill(pilot, "#key", "2B06")
        await click(pilot, "#delete-pair")
        assert said(app, "#edit") == "pair P10002 deleted: group PAYROLL now has 6 pairs"
        assert catalog.pairs_all("PAYROLL") == before

        await fill(pilot, "#key", "nosuch")
        await click(pilot, "#delete-pair")
        assert "'nosuch': no pair of the group has it" in said(app, "#edit")
        assert catalog.pairs_all("PAYROLL") == before
