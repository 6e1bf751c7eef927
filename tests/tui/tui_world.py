# The world the TUI tests drive: the CLI flow test's controllers (two primaries of four
# volumes at site A, one secondary at site B), a catalog with host `hosta` defined, and the
# group PAYROLL of eight pairs named by three kinds of keys. Plus the waits and readers the
# tests share: every wait polls a state in a bounded loop, never a fixed sleep.
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import HOST
from remcopy.catalog import Catalog
from remcopy.groups.service import define_group, load_group
from remcopy.tui.common import Notice

WAIT_STEPS = 2400  # 2 minutes of app time: generous for a loaded machine
WAIT_STEP_S = 0.05
# `REMCOPY_TUI_SHOTS=docs/tui pytest tests/tui` saves the panels' screenshots for docs/tui.md.
SHOTS = os.environ.get("REMCOPY_TUI_SHOTS")


def define_payroll(catalog: Catalog, root: Path, *, pairs: int = 8) -> None:
    """Store group PAYROLL: P00000-P00003 and P10000-P10003 onto SB0000-SB0007 (or fewer)."""
    path = root / "payroll.toml"
    lines = ['[group]\nname = "PAYROLL"\nmode = "sync"\n']
    for i in range(pairs):
        lines.append(
            f'[[pairs]]\nvolser = "P{i // 4}{i % 4:04X}"\nsecondary_volser = "SB{i:04X}"\n'
        )
    path.write_text("\n".join(lines))
    define_group(catalog, path)
    load_group(catalog, "PAYROLL", HOST)


async def wait_until(pilot: Any, ready: Callable[[], bool], what: str) -> None:
    """Let the app run until `ready()` holds; fail naming `what` after a bounded wait."""
    for _ in range(WAIT_STEPS):
        if ready():
            return
        await pilot.pause(WAIT_STEP_S)
    notices = [str(n.content) for n in pilot.app.screen.query(Notice) if n.content]
    raise AssertionError(f"timed out waiting for {what}; the screen says: {notices}")


async def click(pilot: Any, selector: str) -> None:
    """Click a widget (its top-left cell) once the layout has settled, so the click lands."""
    await pilot.pause()
    await pilot.click(selector)
    await pilot.pause()


async def type_into(pilot: Any, selector: str, text: str) -> None:
    """Click a field, empty it, and type `text` key by key."""
    from textual.widgets import Input

    await click(pilot, selector)
    pilot.app.query_one(selector, Input).value = ""
    await pilot.press(*text)
    await pilot.pause()


async def fill(pilot: Any, selector: str, text: str) -> None:
    """Click a field and put `text` in it whole (where nothing is checked as it is typed)."""
    from textual.widgets import Input

    await click(pilot, selector)
    pilot.app.query_one(selector, Input).value = text
    await pilot.pause()


def said(app: Any, selector: str) -> str:
    """The text a panel's Notice shows."""
    return str(app.query_one(selector, Notice).content)


def rows(app: Any, selector: str) -> list[list[str]]:
    """The rows a DataTable shows, as text."""
    from textual.widgets import DataTable

    table = app.query_one(selector, DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def shot(app: Any, name: str) -> None:
    """Save the screen as docs/tui/<name>.svg when asked to (REMCOPY_TUI_SHOTS)."""
    if SHOTS:
        app.save_screenshot(f"{name}.svg", SHOTS)
