# Panel 5A, device range (the seed's Fig. 5A): pick a host, give a range of its device numbers,
# scan them, and watch each controller answer.
#
# Why: the seed's YKSCAN is driven from a full screen, not a command line. This panel holds no
# logic: the range is checked with `DeviceNumber.range_parse` as it is typed, the devices it
# selects are the scan's own `select()`, and the scan is `scan_host`, the call `remcopy scan`
# makes. The scan runs in a worker, so the screen keeps answering while controllers do.
#
# Data flow: attributes down (`host`, from the app; progress to ScanProgress below), messages
# up (`HostPicked` when the operator picks a host, `ScanStored` when a scan stored a new map).
from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Select

from remcopy.catalog import Catalog
from remcopy.errors import InvalidIdentifier
from remcopy.host.definition import HostDefinition
from remcopy.host.scan import select
from remcopy.host.service import host_definition, scan_host
from remcopy.ids import DeviceNumber, device_number_text
from remcopy.tui.common import SHOWN_ERRORS, Notice
from remcopy.tui.scan_progress import ScanProgress


def _range_text(numbers: list[int] | None) -> str:
    """A range as device numbers are written everywhere else (upper case, 4 digits in
    subchannel set 0): `1A00-1A0F`, `11A00`, or `its definition` for every device."""
    if not numbers:
        return "its definition"
    first, last = device_number_text(numbers[0]), device_number_text(numbers[-1])
    return first if first == last else f"{first}-{last}"


class DeviceRange(Validator):
    """A device-number range as `remcopy scan --range` takes it; empty means every device."""

    def validate(self, value: str) -> ValidationResult:
        if not value.strip():
            return self.success()
        try:
            DeviceNumber.range_parse(value)
        except InvalidIdentifier as exc:
            return self.failure(str(exc))
        return self.success()


class RangePanel(Vertical):
    """Fig. 5A: a host, a range of its device numbers, a scan with progress per controller."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("s", "scan", "Scan")]

    host: reactive[str] = reactive("")
    scanning: reactive[bool] = reactive(False)
    chosen: reactive[int] = reactive(0)
    """How many of the host's device numbers the range selects."""
    can_scan: reactive[bool] = reactive(False)

    class HostPicked(Message):
        """The operator picked a host."""

        def __init__(self, host: str) -> None:
            super().__init__()
            self.host = host

    class ScanStored(Message):
        """A scan stored a new map of `host`."""

        def __init__(self, host: str, scan_id: int) -> None:
            super().__init__()
            self.host = host
            self.scan_id = scan_id

    def __init__(self, catalog: Catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog
        self.definition: HostDefinition | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Host", classes="field")
            yield Select[str]([], id="host", prompt="pick a host", compact=True)
        yield DataTable(id="paths", cursor_type="none", zebra_stripes=True)
        with Horizontal(classes="row"):
            yield Label("Devices", classes="field")
            yield Input(
                placeholder="1A00-1AFF, one number, or empty for all",
                id="range",
                validators=[DeviceRange()],
                compact=True,
            )
            yield Checkbox("partial", id="partial", compact=True)
            yield Button("Scan", id="scan", compact=True, disabled=True)
        yield Notice(id="range-check")
        yield ScanProgress(id="scan-progress")

    def on_mount(self) -> None:
        self.query_one("#paths", DataTable).add_columns(
            "devices", "controller", "ssid", "lss", "cca", "online"
        )
        hosts = [h.name for h in self.catalog.hosts_all()]
        self.query_one("#host", Select).set_options((name, name) for name in hosts)
        if not hosts:
            self.query_one("#range-check", Notice).say(
                "no hosts in the catalog: add one with `remcopy host add`", error=True
            )
        elif not self.host:
            self.post_message(self.HostPicked(hosts[0]))

    # Attributes down: the host, and what the range selects of its devices.

    def watch_host(self, host: str) -> None:
        if not host:
            return
        self.query_one("#host", Select).value = host
        paths = self.query_one("#paths", DataTable)
        paths.clear()
        try:
            self.definition = host_definition(self.catalog, host)
        except SHOWN_ERRORS as exc:
            self.definition = None
            self.query_one("#range-check", Notice).say(str(exc), error=True)
            return
        for p in self.definition.paths:
            paths.add_row(
                f"{device_number_text(p.devices[0])}-{device_number_text(p.devices[1])}",
                p.controller,
                f"{p.ssid:04X}",
                f"{p.lss:02X}",
                f"{p.cca:02X}",
                "yes" if p.online else "no",
            )
        self._check_range(self.query_one("#range", Input).value)

    def compute_can_scan(self) -> bool:
        return not self.scanning and self.chosen > 0 and self.definition is not None

    def watch_can_scan(self, can_scan: bool) -> None:
        self.query_one("#scan", Button).disabled = not can_scan

    def _numbers(self, text: str) -> list[int] | None:
        return None if not text.strip() else [n.value for n in DeviceNumber.range_parse(text)]

    def _check_range(self, text: str) -> None:
        notice = self.query_one("#range-check", Notice)
        self.chosen = 0
        if self.definition is None:
            return
        try:
            numbers = self._numbers(text)
            devices = select(self.definition, numbers)
        except InvalidIdentifier as exc:
            notice.say(str(exc), error=True)
            return
        if not devices:
            notice.say(
                f"no device number of host {self.host} is in {_range_text(numbers)}", error=True
            )
            return
        per: dict[str, int] = {}
        for device in devices:
            per[device.controller] = per.get(device.controller, 0) + 1
        self.chosen = len(devices)
        notice.say(
            f"{len(devices)} device numbers of {self.host}: "
            + ", ".join(f"{n} on {c}" for c, n in per.items())
        )

    # Messages from the widgets inside.

    def on_select_changed(self, event: Select.Changed) -> None:
        """Tell the app which host the operator picked."""
        if isinstance(event.value, str) and event.value != self.host:
            self.post_message(self.HostPicked(event.value))

    def on_input_changed(self, event: Input.Changed) -> None:
        """Check the range as it is typed."""
        self._check_range(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the range field starts the scan."""
        self.action_scan()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """The Scan button starts the scan."""
        self.action_scan()

    def action_scan(self) -> None:
        if not self.can_scan:
            return
        text = self.query_one("#range", Input).value
        self.run_scan(self.host, self._numbers(text), self.query_one("#partial", Checkbox).value)

    # The scan: a worker, so progress draws while the controllers answer.

    @work(exclusive=True, group="scan")
    async def run_scan(self, host: str, numbers: list[int] | None, partial: bool) -> None:
        assert self.definition is not None
        totals: dict[str, int] = {}
        for device in select(self.definition, numbers):
            totals[device.controller] = totals.get(device.controller, 0) + 1
        progress = self.query_one(ScanProgress)
        await progress.start(host, totals)
        self.scanning = True
        try:
            result, scan_id = await scan_host(
                self.catalog, host, numbers=numbers, partial=partial, progress=progress.advance
            )
        except SHOWN_ERRORS as exc:
            progress.say(f"scan {host}: {exc}", error=True)
            return
        finally:
            self.scanning = False
        progress.finish(result, scan_id is not None)
        if scan_id is not None:
            self.post_message(self.ScanStored(host, scan_id))
