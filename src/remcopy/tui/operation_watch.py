# The lower half of panel 5E: how a group operation ended, and every pair's state after it.
#
# Why: the result of a group operation is its GroupReport, the same one `remcopy group <op>`
# prints: counts by state, requests per controller, for a suspend whether the group is
# "consistent at T", and the pairs not in the expected state with the controller's reason.
# After it, the operator watches the pairs settle (an establish copies before DUPLEX): each
# pair's state and lag are asked again every second (`service.group_status`) in a worker,
# while the panel shows.
#
# Data flow: the panel sets `report`, `host` and `live`; nothing goes up.
from __future__ import annotations

from datetime import datetime

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.widgets import DataTable

from remcopy.catalog import Catalog
from remcopy.groups.operations import GroupReport
from remcopy.groups.progress import OperationProgress
from remcopy.groups.service import group_status
from remcopy.tui.common import SHOWN_ERRORS, Notice, state_name

STATUS_EVERY_S = 1.0


def report_lines(report: GroupReport) -> list[str]:
    """The report in the words `remcopy group <op>` uses, each line short enough for 80 columns."""
    counts = ", ".join(f"{n} {state_name(s)}" for s, n in sorted(report.counts().items()))
    lines = [
        f"{report.op} {report.group}: {len(report.pairs)} pairs, {report.elapsed_s * 1e3:.1f} ms, "
        f"{sum(report.requests.values())} requests to {len(report.requests)} controllers: "
        f"{counts or 'nothing'}"
    ]
    if report.op == "suspend":
        when = datetime.fromtimestamp(report.at_ns / 1e9).strftime("%H:%M:%S.%f")
        lines.append(
            f"consistent at T={report.at_ns} ({when}), margin {report.margin_s * 1e3:.1f} ms"
            if report.consistent
            else "NOT consistent: some pairs did not suspend at T"
        )
    if report.copy_s:
        copied = sum(p.tracks for p in report.pairs if p.ok)
        lines.append(f"copied {copied} tracks in {report.copy_s:.1f} s")
    if report.failed:
        lines.append(f"{len(report.failed)} pairs not in the expected state (marked !)")
    return lines


class OperationWatch(Vertical):
    """The last operation's result, and each of its pairs' state now, asked live."""

    report: reactive[GroupReport | None] = reactive(None, always_update=True)
    host: reactive[str] = reactive("")
    """The host the operation acted as; the live state is asked as it too."""
    live: reactive[bool] = reactive(False)
    """Whether the panel shows; the state is asked only then."""

    def __init__(self, catalog: Catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog
        self._asking = 0  # status workers under way (a tick waits for them)

    def compose(self) -> ComposeResult:
        yield Notice(id="result")
        yield DataTable(id="outcomes", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#outcomes", DataTable).add_columns("pair", "result", "state now", "lag")
        self.set_interval(STATUS_EVERY_S, self._tick)

    def say(self, text: str, *, error: bool = False) -> None:
        self.query_one("#result", Notice).say(text, error=error)

    def watch_report(self, report: GroupReport | None) -> None:
        if report is None:
            return
        bad = bool(report.failed) or (report.op == "suspend" and not report.consistent)
        self.say("\n".join(report_lines(report)), error=bad)
        table = self.query_one("#outcomes", DataTable)
        table.clear()
        for p in report.pairs:
            outcome = state_name(p.state) if p.ok else f"! {p.message}"
            table.add_row(p.pair.name, outcome, "", "", key=str(p.pair.primary))
        self.refresh_status()

    def show_progress(self, progress: OperationProgress) -> None:
        """While copies run: each copying pair's tracks copied of its total, and its state."""
        done = sum(p.done for p in progress.pairs)
        self.say(
            f"{progress.op} {progress.group}: copying, {progress.copied_tracks} of "
            f"{progress.total_tracks} tracks, {done} of {len(progress.pairs)} pairs done, "
            f"{progress.elapsed_s:.1f} s"
        )
        table = self.query_one("#outcomes", DataTable)
        result_column, state_column = table.ordered_columns[1].key, table.ordered_columns[2].key
        for p in progress.pairs:
            key = str(p.pair.primary)
            copied = f"{p.copied_tracks}/{p.total_tracks} tracks"
            if key in table.rows:
                table.update_cell(key, result_column, copied)
                table.update_cell(key, state_column, state_name(p.state))
            else:
                table.add_row(p.pair.name, copied, state_name(p.state), "", key=key)

    def watch_live(self) -> None:
        self.refresh_status()

    # Live state: a worker, so a slow controller never freezes the screen.

    def _tick(self) -> None:
        """Ask again, unless the last asking is still under way (a new exclusive worker every
        second would cancel a round that takes longer, and none would finish)."""
        if not self._asking:
            self.refresh_status()

    def refresh_status(self) -> None:
        if self.live and self.report is not None and self.host:
            self.ask_status(self.report.group, self.host)

    @work(exclusive=True, group="status")
    async def ask_status(self, group: str, host: str) -> None:
        self._asking += 1
        try:
            statuses = await group_status(self.catalog, group, host)
        except SHOWN_ERRORS:
            return  # the result stays; the next tick asks again
        finally:
            self._asking -= 1
        if not self.is_attached:
            return  # the screen went away while the controllers answered
        try:
            table = self.query_one("#outcomes", DataTable)
        except NoMatches:
            return
        state_column, lag_column = table.ordered_columns[2].key, table.ordered_columns[3].key
        for s in statuses:
            key = str(s.pair.primary)
            if key in table.rows:
                state = f"! {s.describe()}" if s.state is None else s.describe()
                table.update_cell(key, state_column, state)
                table.update_cell(key, lag_column, str(s.lag_bytes))
