# Panel 5D, group browse/edit (the seed's Fig. 5D): the copy groups, one group's pairs with
# their live state, mode and lag, and adding or deleting pairs by any of the five keys.
#
# Why: before changing or operating on a group the operator looks at it: its pairs as the
# acting host reaches them (`service.group_for_host`: volser, both device numbers, both
# hardware addresses) and each pair's state and lag (`service.group_status`, what `remcopy
# group status` asks). The state is asked again every few seconds in a worker while this panel
# shows, so the screen never waits on a controller. Editing is the PairEditor below the table.
#
# Data flow: `host` and `panel` come down from the app, `group` and `pairs` go down to the
# editor; the editor's Found and Stored come up (Stored goes on up to the app).
from __future__ import annotations

import contextlib
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from remcopy.catalog import Catalog, Pair
from remcopy.groups.model import GroupPair
from remcopy.groups.operations import PairStatus
from remcopy.groups.service import group_for_host, group_status
from remcopy.tui.common import SHOWN_ERRORS, Notice, hex4
from remcopy.tui.pair_editor import PairEditor

STATUS_EVERY_S = 2.0
"""How often the open group's pair states are asked again (one query per controller)."""


class GroupsPanel(Vertical):
    """Fig. 5D: list groups, open one, add or delete its pairs (all or nothing)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "focus('primary')", "Add"),
        Binding("f", "focus('key')", "Find"),
        Binding("r", "refresh", "Refresh"),
    ]

    host: reactive[str] = reactive("")
    panel: reactive[str] = reactive("")
    """The panel the app shows; states are asked only while it is this one."""
    group: reactive[str] = reactive("")
    statuses: reactive[dict[str, PairStatus]] = reactive(dict, always_update=True)

    def __init__(self, catalog: Catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog
        self.pairs: list[GroupPair] = []
        self._asking = 0  # status workers under way (a tick waits for them)

    def compose(self) -> ComposeResult:
        yield DataTable(id="group-list", cursor_type="row")
        yield Notice(id="title")
        yield DataTable(id="pairs", cursor_type="row", zebra_stripes=True)
        yield PairEditor(self.catalog, id="editor")

    def on_mount(self) -> None:
        self.query_one("#group-list", DataTable).add_columns(
            "group", "pairs", "mode", "cons. group"
        )
        self.query_one("#pairs", DataTable).add_columns(
            "volser", "state", "mode", "lag", "pri", "sec", "primary", "secondary"
        )
        self._list_groups()
        self.set_interval(STATUS_EVERY_S, self._tick)

    def _list_groups(self) -> None:
        table = self.query_one("#group-list", DataTable)
        table.clear()
        groups = self.catalog.groups_all()
        for g in groups:
            mode, cg = g.options.get("mode", ""), g.options.get("consistency_group", "")
            table.add_row(g.name, g.pair_count, mode, "yes" if cg else "no", key=g.name)
        if groups and not self.group:
            self.group = groups[0].name

    # Attributes down: the host and the open group decide what the pairs table shows.

    def watch_host(self) -> None:
        self._load_pairs()

    def watch_group(self) -> None:
        self.statuses = {}
        self._load_pairs()

    def watch_panel(self) -> None:
        self.action_refresh()

    def _load_pairs(self) -> None:
        if not self.group:
            return
        title = self.query_one("#title", Notice)
        try:
            loaded = group_for_host(self.catalog, self.group, self.host) if self.host else None
        except SHOWN_ERRORS as exc:
            self.pairs = []
            title.say(f"group {self.group} as {self.host}: {exc}", error=True)
            return
        self.pairs = list(loaded.pairs) if loaded is not None else []
        reversed_now = loaded is not None and loaded.is_reversed
        title.say(
            f"group {self.group} as {self.host}: {len(self.pairs)} pairs"
            + (" (reversed: the defined secondaries are the primaries)" if reversed_now else "")
        )
        editor = self.query_one(PairEditor)
        editor.group, editor.pairs = self.group, self.pairs
        self.watch_statuses(self.statuses)
        self.action_refresh()

    def watch_statuses(self, statuses: dict[str, PairStatus]) -> None:
        table = self.query_one("#pairs", DataTable)
        # Stored pairs are keyed by their defined addresses; after a failback a pair's
        # primary is its defined secondary, so either end finds its mode.
        stored = self._stored()
        modes = {p.secondary_address: p.mode for p in stored}
        modes.update({p.primary_address: p.mode for p in stored})
        # The table is drawn again every status round: the operator's cursor stays on its
        # pair (it went back to the first row every second, and a pair just found was lost).
        cursor_key = None
        if 0 <= table.cursor_row < table.row_count:
            cursor_key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
        table.clear()
        for p in self.pairs:
            s = statuses.get(str(p.primary))
            state = "?" if s is None else (f"! {s.describe()}" if s.state is None else s.describe())
            lag = "" if s is None else f"{s.lag_bytes}"
            table.add_row(
                p.volser,
                state,
                modes.get(str(p.primary), ""),
                lag,
                hex4(p.primary_number),
                hex4(p.secondary_number),
                str(p.primary),
                str(p.secondary),
                key=str(p.primary),
            )
        if cursor_key is not None and cursor_key.value is not None:
            with contextlib.suppress(RowDoesNotExist):
                table.move_cursor(row=table.get_row_index(cursor_key.value))

    def _stored(self) -> list[Pair]:
        try:
            return self.catalog.pairs_all(self.group) if self.group else []
        except SHOWN_ERRORS:
            return []

    def action_focus(self, field: str) -> None:
        self.query_one(f"#{field}").focus()

    # Live state: a worker, so a slow controller never freezes the screen.

    def _tick(self) -> None:
        """Every STATUS_EVERY_S: ask again, unless the last asking is still under way. (An
        exclusive worker started every second cancels the one before it: when a round takes
        longer than that, on a slow link or a loaded machine, no round would ever finish.)"""
        if not self._asking:
            self.action_refresh()

    def action_refresh(self) -> None:
        if self.panel == self.id and self.group and self.host and self.pairs:
            self.ask_status(self.group, self.host)

    @work(exclusive=True, group="status")
    async def ask_status(self, group: str, host: str) -> None:
        self._asking += 1
        try:
            found = await group_status(self.catalog, group, host)
        except SHOWN_ERRORS as exc:
            self.query_one("#title", Notice).say(f"group {group}: status: {exc}", error=True)
            return
        finally:
            self._asking -= 1
        if group == self.group:
            self.statuses = {str(s.pair.primary): s for s in found}

    # Messages from the widgets inside.

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Open the group chosen in the list of groups."""
        if event.data_table.id == "group-list" and event.row_key.value is not None:
            self.group = event.row_key.value

    def on_pair_editor_found(self, event: PairEditor.Found) -> None:
        """Put the cursor on the pair the operator's key names."""
        table = self.query_one("#pairs", DataTable)
        table.move_cursor(row=table.get_row_index(str(event.pair.primary)))

    def on_pair_editor_stored(self, event: PairEditor.Stored) -> None:
        """The group has new pairs: list and show them again (the app hears it too)."""
        self._list_groups()
        self._load_pairs()
