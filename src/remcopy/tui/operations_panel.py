# Panel 5E, group operations (the seed's Fig. 5E): pick a group, the host to act as and an
# operation; see the plan; confirm; watch it run and every pair's state after it. A suspend
# takes T in the argument field as the CLI's `--in`/`--at` do (blank: now + the group's
# margin; `50ms`; `14:05:00.250`), a shadow copy the file of SECONDARY TERTIARY lines its
# `--to` takes.
#
# Why: a group operation acts on thousands of pairs with one command, so the operator sees
# what it will send before sending it: the per-controller plan is `operations.plan` on the
# group as that host reaches it (what `--dry-run` reports, and nothing is sent). The operation
# itself is `service.operate`, the call `remcopy group <op>` makes, in a worker. Recover,
# failback and terminate change which side is writable or end the pairs, so they ask once
# more, naming the group and how many pairs. The result ("consistent at T" for a suspend, the
# pairs not in the expected state) and each pair's live state after it are OperationWatch's.
#
# Data flow: `host`, `panel` and `groups_serial` come down from the app; the report goes down
# to OperationWatch; nothing goes up.
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select

from remcopy.catalog import Catalog
from remcopy.errors import InputError
from remcopy.groups.operations import plan
from remcopy.groups.progress import OperationProgress
from remcopy.groups.service import group_for_host, operate, shadow_group
from remcopy.groups.when import parse_at, parse_within
from remcopy.ids import HardwareAddress
from remcopy.tui.common import SHOWN_ERRORS, ConfirmScreen, Notice
from remcopy.tui.operation_watch import OperationWatch
from remcopy.wire.native import PairOp
from remcopy.workload.image import parse_shadow_map

OPERATIONS = ("establish", "suspend", "resume", "shadow", "recover", "failback", "terminate")
DESTRUCTIVE = {PairOp.RECOVER, PairOp.FAILBACK, PairOp.TERMINATE}
ARG_HINTS = {
    "suspend": "margin, or 50ms, or 14:05:00.250",
    "shadow": "SECONDARY TERTIARY map file",
}
Argument = int | None | dict[str, HardwareAddress]
"""What an operation needs besides the group: T for a suspend (None: now + the group's
margin), the secondary -> tertiary map for a shadow copy."""


def operation_argument(op: PairOp, text: str) -> Argument:
    """The argument field's text, read as the CLI reads `--in`/`--at` and `shadow --to`."""
    raw = text.strip()
    if op is PairOp.SUSPEND:
        if not raw:
            return None
        return parse_within(raw) if raw[-1] == "s" else parse_at(raw)
    if op is PairOp.SHADOW:
        if not raw:
            raise InputError("shadow: give the SECONDARY TERTIARY map file to copy to")
        return {str(s): t for s, t in parse_shadow_map(Path(raw)).items()}
    return None


class ArgValidator(Validator):
    """Checks the argument field as it is typed (a map file is read only on Run)."""

    def __init__(self, panel: OperationsPanel) -> None:
        super().__init__()
        self.panel = panel

    def validate(self, value: str) -> ValidationResult:
        if self.panel.op != "suspend":
            return self.success()
        try:
            operation_argument(PairOp.SUSPEND, value)
        except InputError as exc:
            return self.failure(str(exc))
        return self.success()


class OperationsPanel(Vertical):
    """Fig. 5E: one operation on every pair of a group, planned, confirmed, then watched."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "run", "Run")]

    host: reactive[str] = reactive("")
    panel: reactive[str] = reactive("")
    groups_serial: reactive[int] = reactive(0)
    group: reactive[str] = reactive("")
    acting_host: reactive[str] = reactive("")
    op: reactive[str] = reactive("establish")
    running: reactive[bool] = reactive(False)

    def __init__(self, catalog: Catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog
        self.pair_count = 0

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Group", classes="field")
            yield Select[str]([], id="group", prompt="group", compact=True)
            yield Label("as host", classes="field")
            yield Select[str]([], id="acting-host", prompt="host", compact=True)
        with Horizontal(classes="row"):
            yield Label("Operation", classes="field")
            yield Select[str](
                ((o, o) for o in OPERATIONS),
                id="op",
                value="establish",
                allow_blank=False,
                compact=True,
            )
            yield Label("T", id="arg-label", classes="field")
            yield Input(
                placeholder="",
                id="arg",
                validators=[ArgValidator(self)],
                compact=True,
                disabled=True,
            )
            yield Button("Run", id="run", compact=True, variant="primary")
        yield Notice(id="plan-title")
        yield DataTable(id="plan", cursor_type="none")
        yield ProgressBar(id="working", total=None, show_eta=False, show_percentage=False)
        yield OperationWatch(self.catalog, id="watch")

    def on_mount(self) -> None:
        self.query_one("#plan", DataTable).add_columns("controller", "pairs", "first", "last")
        self.query_one("#working", ProgressBar).display = False
        self.watch_groups_serial()

    # Attributes down: the lists of groups and hosts, and the plan for what is picked.

    def watch_groups_serial(self) -> None:
        groups = [g.name for g in self.catalog.groups_all()]
        self.query_one("#group", Select).set_options((g, g) for g in groups)
        hosts = [h.name for h in self.catalog.hosts_all()]
        self.query_one("#acting-host", Select).set_options((h, h) for h in hosts)
        if self.group in groups:
            self.query_one("#group", Select).value = self.group
        elif groups:
            self.query_one("#group", Select).value = groups[0]
        if self.acting_host or self.host:
            self.query_one("#acting-host", Select).value = self.acting_host or self.host
        self._plan()

    def watch_host(self, host: str) -> None:
        if host and not self.acting_host:
            self.query_one("#acting-host", Select).value = host

    def watch_panel(self, panel: str) -> None:
        self.query_one(OperationWatch).live = panel == self.id

    def watch_running(self, running: bool) -> None:
        self.query_one("#working", ProgressBar).display = running
        self.query_one("#run", Button).disabled = running

    def _plan(self) -> None:
        title = self.query_one("#plan-title", Notice)
        table = self.query_one("#plan", DataTable)
        table.clear()
        if not (self.group and self.acting_host):
            title.say("pick a group and the host to act as")
            return
        try:
            # A failback always goes to the defined secondaries (groups.service.operate).
            group = group_for_host(
                self.catalog, self.group, self.acting_host, as_defined=self.op == "failback"
            )
        except SHOWN_ERRORS as exc:
            title.say(str(exc), error=True)
            return
        batches, refused = plan(group, PairOp[self.op.upper()])
        self.pair_count = len(group.pairs)
        for b in batches:
            table.add_row(b.controller, len(b.pairs), b.pairs[0].name, b.pairs[-1].name)
        for r in refused:
            table.add_row("no path", 1, r.message, "")
        title.say(
            f"plan: {self.op} {len(group.pairs)} pairs of {self.group} as {self.acting_host}, "
            f"{len(batches)} requests, one per controller"
            + (f"; {len(refused)} refused" if refused else ""),
            error=bool(refused),
        )

    def on_select_changed(self, event: Select.Changed) -> None:
        """Plan again for the group, host or operation picked."""
        if not isinstance(event.value, str):
            return
        if event.select.id == "group":
            self.group = event.value
        elif event.select.id == "acting-host":
            self.acting_host = event.value
        else:
            self.op = event.value
            arg = self.query_one("#arg", Input)
            arg.disabled = self.op not in ("suspend", "shadow")
            arg.placeholder = ARG_HINTS.get(self.op, "")
            arg.clear()
            self.query_one("#arg-label", Label).update("to" if self.op == "shadow" else "T")
        self._plan()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Run the planned operation."""
        self.action_run()

    # Running: confirm if destructive, operate in a worker, then watch the pairs.

    def action_run(self) -> None:
        if self.running or not (self.group and self.acting_host):
            return
        op = PairOp[self.op.upper()]
        try:
            when = operation_argument(op, self.query_one("#arg", Input).value)
        except InputError as exc:
            self.query_one(OperationWatch).say(str(exc), error=True)
            return
        self.run_operation(self.group, self.acting_host, op, when)

    @work(exclusive=True, group="operation")
    async def run_operation(self, group: str, host: str, op: PairOp, argument: Argument) -> None:
        watch = self.query_one(OperationWatch)
        name = op.name.lower()
        if op in DESTRUCTIVE:
            question = f"{name} group {group}: {self.pair_count} pairs, acting as {host}?"
            if not await self.app.push_screen_wait(
                ConfirmScreen(question, f"{name.capitalize()} {self.pair_count} pairs")
            ):
                watch.say(f"{name} {group}: cancelled, nothing sent")
                return
        self.running = True
        self.query_one("#working", ProgressBar).update(total=None, progress=0)
        watch.say(f"{name} {group} as {host}: sending...")
        try:
            if op is PairOp.SHADOW:
                assert isinstance(argument, dict)
                report = await shadow_group(
                    self.catalog, group, host, argument, progress=self.show_progress
                )
            else:
                assert not isinstance(argument, dict)
                report = await operate(
                    self.catalog, group, host, op, at_ns=argument, progress=self.show_progress
                )
        except SHOWN_ERRORS as exc:
            watch.say(f"{name} {group}: {exc}", error=True)
            return
        finally:
            self.running = False
        watch.host, watch.report = host, report

    def show_progress(self, progress: OperationProgress) -> None:
        """The copies the operation started: the bar counts every pair's tracks, the table
        each pair's. Called in the worker after each round of queries, until all are done."""
        self.query_one("#working", ProgressBar).update(
            total=max(progress.total_tracks, 1), progress=progress.copied_tracks
        )
        self.query_one(OperationWatch).show_progress(progress)
