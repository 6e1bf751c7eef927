# Panel 5B, scan results (the seed's Fig. 5B): per controller, the devices the last scan found
# behind it: volser, device number, hardware address and pair state.
#
# Why: after a scan the operator checks what each controller reported before building groups
# on it. The rows are the host's stored map (`Catalog.map_all`, what `remcopy map show`
# prints), read again whenever the app says a scan stored a new one. Choosing a controller,
# filtering and sorting only change which rows show and in what order: `compute_shown` derives
# them from the reactive state, `watch_shown` draws them.
from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Label, Select

from remcopy.catalog import Catalog, MapEntry
from remcopy.ids import device_number_order
from remcopy.tui.common import SHOWN_ERRORS, Notice, state_name

# Column key -> (header, the MapEntry field it shows).
COLUMNS: dict[str, tuple[str, str]] = {
    "controller": ("controller", "controller"),
    "device": ("device", "device_number"),
    "address": ("hardware address", "hardware_address"),
    "volser": ("volser", "volser"),
    "state": ("pair state", "state"),
    "role": ("role", "role"),
}
ALL = "*"


def _cell(entry: MapEntry, column: str) -> str:
    value = str(getattr(entry, COLUMNS[column][1]))
    return state_name(value) if column == "state" else value


def _order(entry: MapEntry, column: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """Rows by a column, then by device number; device numbers in their numeric order."""
    device = device_number_order(entry.device_number)
    return (device if column == "device" else (0, _cell(entry, column))), device


class ResultsPanel(Vertical):
    """Fig. 5B: one controller's devices (or all), sortable by any column, filterable."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse"),
        Binding("slash", "filter", "Filter"),
    ]

    host: reactive[str] = reactive("")
    scan_id: reactive[int] = reactive(0)
    entries: reactive[tuple[MapEntry, ...]] = reactive(())
    controller: reactive[str] = reactive(ALL)
    filter_text: reactive[str] = reactive("")
    sort_column: reactive[str] = reactive("device")
    sort_reverse: reactive[bool] = reactive(False)
    shown: reactive[tuple[MapEntry, ...]] = reactive(())

    def __init__(self, catalog: Catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Controller", classes="field")
            yield Select[str](
                [("all controllers", ALL)], id="controller", allow_blank=False, compact=True
            )
            yield Label("Filter", classes="field")
            yield Input(placeholder="any text in a row", id="filter", compact=True)
        yield DataTable(id="devices", cursor_type="row", zebra_stripes=True)
        yield Notice(id="summary")

    # Attributes down: a new host or a new scan reads the map again.

    def watch_host(self) -> None:
        self._load()

    def watch_scan_id(self) -> None:
        self._load()

    def _load(self) -> None:
        if not self.host:
            return
        try:
            self.entries = tuple(self.catalog.map_all(self.host))
        except SHOWN_ERRORS as exc:
            self.entries = ()
            self.query_one("#summary", Notice).say(str(exc), error=True)
            return
        controllers = sorted({e.controller for e in self.entries})
        select = self.query_one("#controller", Select)
        select.set_options([("all controllers", ALL), *((c, c) for c in controllers)])
        select.value = self.controller if self.controller in controllers else ALL

    # Derived state: which rows show, in which order.

    def compute_shown(self) -> tuple[MapEntry, ...]:
        needle = self.filter_text.strip().lower()
        rows = [
            e
            for e in self.entries
            if (self.controller == ALL or e.controller == self.controller)
            and (not needle or any(needle in _cell(e, c).lower() for c in COLUMNS))
        ]
        rows.sort(key=lambda e: _order(e, self.sort_column))
        if self.sort_reverse:
            rows.reverse()
        return tuple(rows)

    def watch_shown(self, shown: tuple[MapEntry, ...]) -> None:
        where = "all controllers" if self.controller == ALL else self.controller
        order = "descending" if self.sort_reverse else "ascending"
        summary = (
            f"{self.host}: {len(shown)} of {len(self.entries)} devices on {where}, "
            f"by {COLUMNS[self.sort_column][0]} {order}"
        )
        table = self.query_one("#devices", DataTable)
        table.clear()
        for entry in shown:
            table.add_row(*(_cell(entry, c) for c in COLUMNS), key=entry.device_number)
        self.query_one("#summary", Notice).say(summary)

    def watch_sort_column(self) -> None:
        self._columns()

    def watch_sort_reverse(self) -> None:
        self._columns()

    def _columns(self) -> None:
        # Read the state first: a reactive's first read runs its watchers.
        arrow, column, shown = " v" if self.sort_reverse else " ^", self.sort_column, self.shown
        table = self.query_one("#devices", DataTable)
        table.clear(columns=True)
        for key, (header, _field) in COLUMNS.items():
            table.add_column(header + (arrow if key == column else ""), key=key)
        self.watch_shown(shown)

    # Messages from the widgets inside.

    def on_select_changed(self, event: Select.Changed) -> None:
        """Show one controller's devices, or all."""
        if isinstance(event.value, str):
            self.controller = event.value

    def on_input_changed(self, event: Input.Changed) -> None:
        """Filter as the text is typed."""
        self.filter_text = event.value

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """Sort by the clicked column; clicking it again reverses the order."""
        column = str(event.column_key.value)
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column = column

    def action_sort(self) -> None:
        keys = list(COLUMNS)
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()
