# `remcopy tui` as an operator runs it: a real process in an 80x24 tmux window, driven by keys,
# each panel checked on the captured screen. Every wait polls the screen for the text it
# expects, in a bounded loop.
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tui_world import define_payroll

from common import HOST
from remcopy.catalog import Catalog
from remcopy.host.service import scan_host

SCREEN_POLLS = 300
SCREEN_POLL_S = 0.1


class Tmux:
    """One tmux server of our own (its socket in the test's folder), holding one session."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, check=check
        )

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "tui").stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "tui", *keys)

    async def wait_for(self, *texts: str) -> str:
        """The screen, once it shows every one of `texts`."""
        screen = ""
        for _ in range(SCREEN_POLLS):
            screen = self.screen()
            if all(text in screen for text in texts):
                return screen
            await asyncio.sleep(SCREEN_POLL_S)
        raise AssertionError(f"the screen never showed {texts}:\n{screen}")

    async def wait_without(self, text: str) -> str:
        """The screen, once it no longer shows `text`."""
        screen = ""
        for _ in range(SCREEN_POLLS):
            screen = self.screen()
            if text not in screen:
                return screen
            await asyncio.sleep(SCREEN_POLL_S)
        raise AssertionError(f"the screen still shows {text!r}:\n{screen}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    assert shutil.which("tmux"), "tmux is needed to run remcopy tui in a terminal"
    server = Tmux(tmp_path / "tmux.sock")
    yield server
    server.run("kill-server", check=False)


async def test_remcopy_tui_in_tmux_shows_every_panel(
    catalog: Catalog, tmp_path: Path, tmux: Tmux
) -> None:
    """Keys 1-5 and F1 reach each panel in 80x24, a scan runs from 5A, and q quits."""
    await scan_host(catalog, HOST)
    define_payroll(catalog, tmp_path, pairs=8)
    command = [sys.executable, "-m", "remcopy", "tui", "--catalog", str(tmp_path / "catalog.db")]
    tmux.run("new-session", "-d", "-x", "80", "-y", "24", "-s", "tui", *command)
    assert tmux.run("display", "-p", "-t", "tui", "#{pane_width}x#{pane_height}").stdout == (
        "80x24\n"
    )

    await tmux.wait_for(
        "1 Range", "16 device numbers of hosta: 4 on cntla0", "2B00-2B07  cntlb", "q Quit"
    )
    tmux.keys("Tab", "s")  # into the panel (the host field), then its Scan key
    await tmux.wait_for("scan hosta: 16 devices mapped, 0 failed, 3 requests", "s Scan")
    # Escape leaves the panel's fields (its keys leave the footer), so digits switch panels.
    # (Escape and a digit sent together would read as alt+digit, as from a person typing fast.)
    tmux.keys("Escape")
    await tmux.wait_without("s Scan")

    tmux.keys("2")
    await tmux.wait_for(
        "hosta: 16 of 16 devices on all controllers, by device",
        "cntla1      1B02      64016:1A00:0A:02  P10002",
    )

    tmux.keys("3")
    await tmux.wait_for("device map of hosta: 16 devices", "1B03    64016:1A00:0A:03  P10003")

    tmux.keys("4")
    await tmux.wait_for("group PAYROLL as hosta: 8 pairs", "P10003  simplex", "Delete")

    tmux.keys("5")
    await tmux.wait_for(
        "plan: establish 8 pairs of PAYROLL as hosta", "cntla1      4      P10000  P10003"
    )

    tmux.keys("F1")
    screen = await tmux.wait_for("Devices", "2B00-2B07  cntlb")
    assert len(screen.splitlines()) == 24
    assert all(len(line) <= 80 for line in screen.splitlines())
    tmux.keys("q")
    for _ in range(SCREEN_POLLS):
        if tmux.run("has-session", "-t", "tui", check=False).returncode != 0:
            break
        await asyncio.sleep(SCREEN_POLL_S)
    else:
        raise AssertionError("remcopy tui did not quit on q")
