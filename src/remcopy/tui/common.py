# What the five panels share: how a message is shown, how a state is named, which errors a
# panel shows instead of crashing, and the confirmation asked before a destructive operation.
#
# Why: STYLE.md section 8. A panel holds no logic; it calls the core API and shows what came
# back. The errors the core raises on purpose (RemcopyError, and OSError when a controller
# cannot be reached) reach the operator as one line in the panel, never as a traceback, and
# the screen keeps working. Anything else is our bug and Textual's crash report is right.
from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from remcopy.errors import RemcopyError
from remcopy.ids import device_number_text
from remcopy.states import DISPLAY_NAMES, PairState

SHOWN_ERRORS = (RemcopyError, OSError)
"""What a panel catches from a core call and shows inline."""


def state_name(state: PairState | str) -> str:
    """The display name of a pair state (the one table CLI, TUI and logs share)."""
    if isinstance(state, PairState):
        return DISPLAY_NAMES[state]
    known = PairState.__members__.get(state)
    return state.lower() if known is None else DISPLAY_NAMES[known]


def hex4(number: int | None) -> str:
    """A device number as the map shows it, or '-' when the host has none."""
    return "-" if number is None else device_number_text(number)


class Notice(Static):
    """One message of a panel: what happened, or what is wrong (`-error`), in one place."""

    def say(self, text: str, *, error: bool = False) -> None:
        self.set_class(error, "-error")
        self.set_class(not error and bool(text), "-ok")
        self.update(text)


class ConfirmScreen(ModalScreen[bool]):
    """Ask once before a destructive operation; dismissed with True only by the named button."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, verb: str) -> None:
        super().__init__()
        self.question = question
        self.verb = verb

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button(self.verb, id="yes", variant="error")
                yield Button("Cancel", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the button pressed."""
        self.dismiss(event.button.id == "yes")

    def action_cancel(self) -> None:
        self.dismiss(False)
