# The operator's full-screen interface: the seed's five panels (Figs. 5A-5E) over one catalog.
#
# Why: the seed prefers a full-screen interface to a command line for scanning devices and
# running group operations. This app only arranges the panels and carries what one panel
# tells the others, built the Textual way (STYLE.md section 8, Textual's code_browser.py):
# - attributes down: the app's reactive `host`, `scan_id`, `groups_serial` and `panel` are
#   bound into the panels (`data_bind`), which redraw in their `watch_` methods;
# - messages up: a panel posts HostPicked, ScanStored or (PairEditor) Stored; the app's handler
#   changes its own reactive state, never a panel's widgets;
# - every controller call runs in a panel's `@work(exclusive=True)` worker.
# No panel holds logic: each calls the API the CLI calls (docs/tui.md lists which).
from __future__ import annotations

from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.widgets import Footer, TabbedContent, TabPane, Tabs

from remcopy.catalog import Catalog
from remcopy.tui.groups_panel import GroupsPanel
from remcopy.tui.map_panel import MapPanel
from remcopy.tui.operations_panel import OperationsPanel
from remcopy.tui.pair_editor import PairEditor
from remcopy.tui.range_panel import RangePanel
from remcopy.tui.results_panel import ResultsPanel

PANEL_NAMES = ("Range", "Results", "Map", "Groups", "Ops")


class RemcopyApp(App[None]):
    """remcopy's five panels: device range, scan results, device map, groups, operations."""

    CSS_PATH = "remcopy.tcss"
    TITLE = "remcopy"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "ContentTabs"  # digits switch panels until the operator enters a field
    # Digits switch panels; inside a field they are typed, so F1-F5 (the 3270's PF keys the
    # seed's screens ran on) switch from anywhere and the footer shows them there instead.
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(key, f"show_panel('fig5{c}')", name)
            for n, (c, name) in enumerate(zip("abcde", PANEL_NAMES, strict=True), start=1)
            for key in (str(n), f"f{n}")
        ),
        Binding("escape", "leave_field", "Leave field", show=False),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    host: reactive[str] = reactive("")
    """The host panels 5A-5D show; 5A picks it."""
    scan_id: reactive[int] = reactive(0)
    """The newest map stored by a scan from 5A; 5B and 5C read it again when it changes."""
    groups_serial: reactive[int] = reactive(0)
    """Counts group edits from 5D; 5E lists the groups again when it changes."""
    panel: reactive[str] = reactive("range-panel")
    """The panel shown; live status is asked only by the panel shown."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self.catalog = catalog

    def compose(self) -> ComposeResult:
        with TabbedContent(initial="fig5a", id="panels"):
            with TabPane("1 Range", id="fig5a"):
                yield RangePanel(self.catalog, id="range-panel").data_bind(RemcopyApp.host)
            with TabPane("2 Results", id="fig5b"):
                yield ResultsPanel(self.catalog, id="results-panel").data_bind(
                    RemcopyApp.host, RemcopyApp.scan_id
                )
            with TabPane("3 Map", id="fig5c"):
                yield MapPanel(self.catalog, id="map-panel").data_bind(
                    RemcopyApp.host, RemcopyApp.scan_id
                )
            with TabPane("4 Groups", id="fig5d"):
                yield GroupsPanel(self.catalog, id="groups-panel").data_bind(
                    RemcopyApp.host, RemcopyApp.panel
                )
            with TabPane("5 Operations", id="fig5e"):
                yield OperationsPanel(self.catalog, id="ops-panel").data_bind(
                    RemcopyApp.host, RemcopyApp.panel, RemcopyApp.groups_serial
                )
        yield Footer()

    # Keys: 1-5 or F1-F5 show a panel; escape leaves a field, so digits switch panels again.

    def action_show_panel(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        self.query_one(Tabs).focus()

    def action_leave_field(self) -> None:
        self.query_one(Tabs).focus()

    # Messages up from the panels.

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Note the panel shown, by key or by mouse."""
        self.panel = event.pane.children[0].id or ""

    def on_range_panel_host_picked(self, event: RangePanel.HostPicked) -> None:
        """Show the picked host in every panel."""
        self.host = event.host

    def on_range_panel_scan_stored(self, event: RangePanel.ScanStored) -> None:
        """A new map: panels that show maps read it again."""
        self.host = event.host
        self.scan_id = event.scan_id

    def on_pair_editor_stored(self, event: PairEditor.Stored) -> None:
        """A group was edited: panels that list groups read them again."""
        self.groups_serial += 1
