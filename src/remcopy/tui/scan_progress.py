# The lower half of panel 5A: a scan as it runs and how it ended. One bar per controller
# (devices answered of devices asked), the scan's summary line, and every device that did not
# answer with the reason.
#
# Why its own widget: the panel above it owns the scan worker and tells this one what
# happened (`start`, `advance`, `finish`): attributes and calls down, nothing up.
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, ProgressBar

from remcopy.host.scan import ScanResult
from remcopy.tui.common import Notice


class ControllerBar(Horizontal):
    """One controller's scan progress: its name, a bar, and devices answered of devices asked."""

    def __init__(self, controller: str, total: int) -> None:
        super().__init__(classes="controller-bar")
        self.controller = controller
        self.total = total

    def compose(self) -> ComposeResult:
        yield Label(self.controller, classes="name")
        yield ProgressBar(total=self.total, show_eta=False)
        yield Label(f"0/{self.total}", classes="count")

    def advance(self, done: int, total: int) -> None:
        self.query_one(ProgressBar).update(total=total, progress=done)
        self.query_one(".count", Label).update(f"{done}/{total}")


class ScanProgress(Vertical):
    """Bars per controller while a scan runs; then its summary and the devices that failed."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.bars: dict[str, ControllerBar] = {}

    def compose(self) -> ComposeResult:
        yield Vertical(id="bars")
        yield Notice(id="scan-result")
        yield DataTable(id="failures", cursor_type="row")

    def on_mount(self) -> None:
        failures = self.query_one("#failures", DataTable)
        failures.add_columns("device", "controller", "why")
        failures.display = False

    async def start(self, host: str, totals: dict[str, int]) -> None:
        """A scan of `totals[controller]` devices per controller begins."""
        bars = self.query_one("#bars", Vertical)
        await bars.remove_children()
        self.bars = {c: ControllerBar(c, n) for c, n in totals.items()}
        await bars.mount_all(self.bars.values())
        self.query_one("#failures", DataTable).display = False
        self.say(f"scanning {sum(totals.values())} devices of {host}...")

    def advance(self, controller: str, done: int, total: int) -> None:
        """The scan's progress callback: `done` of `total` devices of `controller` answered."""
        self.bars[controller].advance(done, total)

    def say(self, text: str, *, error: bool = False) -> None:
        self.query_one("#scan-result", Notice).say(text, error=error)

    def finish(self, result: ScanResult, stored: bool) -> None:
        """The scan ended: its summary (as `remcopy scan` prints it) and what failed."""
        self.say(
            f"scan {result.host}: {len(result.devices)} devices mapped, "
            f"{len(result.failures)} failed, {result.requests} requests, "
            f"{result.elapsed_s:.3f} s; " + ("map stored" if stored else "nothing stored"),
            error=bool(result.failures),
        )
        failures = self.query_one("#failures", DataTable)
        failures.clear()
        for f in result.failures:
            failures.add_row(f.device_number, f.controller, f.reason)
        failures.display = bool(result.failures)
