# Panel 5C, device map (the seed's Fig. 5C): the host's whole map, found by any key, with what
# changed since the scan before highlighted.
#
# Why: the map is the cross-reference the rest of the system stands on (device number <->
# hardware address <-> volser). The operator looks a device up by whichever key is at hand,
# and sees at once what a rescan changed: a device that is new, gone, or now shows another
# volser or hardware address. The rows are `Catalog.map_all` or, when searching,
# `Catalog.map_find_all` with the key read as each kind it parses as (what `remcopy map show
# --volser/--device/--address` does); the highlights are `Catalog.map_diff` (`remcopy map diff`).
from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Label

from remcopy.catalog import Catalog, MapDiff, MapEntry
from remcopy.errors import InvalidIdentifier
from remcopy.ids import DeviceNumber, HardwareAddress, Volser, device_number_order
from remcopy.tui.common import SHOWN_ERRORS, Notice, state_name

STYLES = {"new": "bold green", "changed": "bold yellow", "gone": "red strike"}

# How a search key is read: each kind it parses as becomes one `map_find_all` filter.
KINDS = (
    ("device number", "device", DeviceNumber.parse),
    ("hardware address", "address", HardwareAddress.parse),
    ("volser", "volser", Volser.parse),
)


class MapPanel(Vertical):
    """Fig. 5C: the device map of the app's host, searchable, with the last diff marked."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "find", "Find"),
        Binding("c", "changes", "Changes only"),
    ]

    host: reactive[str] = reactive("")
    scan_id: reactive[int] = reactive(0)
    key_text: reactive[str] = reactive("")
    changes_only: reactive[bool] = reactive(False)

    def __init__(self, catalog: Catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog
        self.diff: MapDiff | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Find", classes="field")
            yield Input(
                placeholder="volser, device number or hardware address", id="find", compact=True
            )
        yield Notice(id="found")
        yield DataTable(id="map-table", cursor_type="row", zebra_stripes=True)
        yield Notice(id="legend")

    def on_mount(self) -> None:
        self.query_one("#map-table", DataTable).add_columns(
            "device", "hardware address", "volser", "pair state", "online", "since last scan"
        )

    # Attributes down: a new host or scan reads the map and its diff again.

    def watch_host(self) -> None:
        self._load()

    def watch_scan_id(self) -> None:
        self._load()

    def _load(self) -> None:
        """A new host or map: read its diff once; searches then only query the map."""
        if not self.host:
            return
        try:
            self.diff = self.catalog.map_diff(self.host)
        except SHOWN_ERRORS as exc:
            self.diff = None
            self.query_one("#found", Notice).say(str(exc), error=True)
            return
        self._draw()

    def watch_key_text(self) -> None:
        self._draw()

    def watch_changes_only(self) -> None:
        self._draw()

    def _marks(self) -> dict[str, tuple[str, str]]:
        """Device number -> (kind of change, what to show), from the map's diff."""
        diff = self.diff
        if diff is None or diff.previous_scan_id is None:
            return {}
        marks = {e.device_number: ("new", "+ new") for e in diff.new}
        for c in diff.volser_changed:
            marks[c.device_number] = ("changed", f"~ volser {c.old} -> {c.new}")
        for c in diff.address_changed:
            marks[c.device_number] = ("changed", f"~ was {c.old}")
        marks.update({e.device_number: ("gone", "- gone") for e in diff.gone})
        return marks

    def _draw(self) -> None:
        if not self.host or self.diff is None:
            return
        table = self.query_one("#map-table", DataTable)
        table.clear()
        try:
            entries = self._find()
        except SHOWN_ERRORS as exc:
            self.query_one("#found", Notice).say(str(exc), error=True)
            return
        marks = self._marks()
        if not self.key_text.strip() and self.diff is not None:
            entries += list(self.diff.gone)
        for entry in sorted(entries, key=lambda e: device_number_order(e.device_number)):
            kind, note = marks.get(entry.device_number, ("", ""))
            if self.changes_only and not kind:
                continue
            style = STYLES.get(kind, "")
            table.add_row(
                *(Text(str(v), style=style) for v in _row(entry)),
                Text(note, style=style),
                key=entry.device_number,
            )
        self._legend()

    def _find(self) -> list[MapEntry]:
        text = self.key_text.strip()
        notice = self.query_one("#found", Notice)
        if not text:
            entries = self.catalog.map_all(self.host)
            notice.say(f"device map of {self.host}: {len(entries)} devices")
            return entries
        found: dict[str, MapEntry] = {}
        kinds = []
        for name, keyword, parse in KINDS:
            try:
                key = str(parse(text))
            except InvalidIdentifier:
                continue
            matches = self.catalog.map_find_all(self.host, **{keyword: key})
            kinds += [name] if matches else []
            found.update((e.device_number, e) for e in matches)
        if found:
            notice.say(f"{len(found)} found by {', '.join(kinds)} {text}")
        else:
            notice.say(
                f"{text}: no device of {self.host}'s map has it as volser, device number "
                "or hardware address",
                error=True,
            )
        return list(found.values())

    def _legend(self) -> None:
        diff = self.diff
        legend = self.query_one("#legend", Notice)
        if diff is None or diff.previous_scan_id is None:
            legend.say("first scan of this host: nothing to compare with")
            return
        legend.update(
            Text.assemble(
                f"scan {diff.scan_id} against scan {diff.previous_scan_id}: ",
                (f"{len(diff.new)} new", STYLES["new"]),
                ", ",
                (f"{len(diff.volser_changed) + len(diff.address_changed)} changed", "yellow"),
                ", ",
                (f"{len(diff.gone)} gone", "red"),
                f", {len(diff.failed)} did not answer",
            )
        )

    # Messages from the widgets inside.

    def on_input_changed(self, event: Input.Changed) -> None:
        """Search as the key is typed."""
        self.key_text = event.value

    def action_find(self) -> None:
        self.query_one("#find", Input).focus()

    def action_changes(self) -> None:
        self.changes_only = not self.changes_only


def _row(entry: MapEntry) -> tuple[str, ...]:
    return (
        entry.device_number,
        entry.hardware_address,
        entry.volser,
        state_name(entry.state),
        "yes" if entry.online else "no",
    )
