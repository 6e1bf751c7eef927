# The lower half of panel 5D: add a pair to the open group, or find and delete one, by any key.
#
# Why: the seed's Fig. 5D changes a copy-group definition by adding and deleting pairs, named
# by whatever is at hand. An edit is `remcopy group define` in small and holds it to the same
# rule, all or nothing: the group's whole new pair list is resolved through every host's map
# (`definition.resolve` over `service.map_index`) and stored with `Catalog.put_group(replace=
# True)` only if every pair is good. Otherwise every problem shows inline, and the catalog is
# unchanged. A pair is found with `load.lookup`: its volser, either device number on the
# acting host, or either hardware address.
#
# Data flow: `group` and `pairs` come down from the panel; `Found` and `Stored` go up.
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label

from remcopy.catalog import Catalog, Pair
from remcopy.groups.definition import GroupDefinition, PairKey, resolve
from remcopy.groups.load import lookup
from remcopy.groups.model import GroupPair
from remcopy.groups.service import map_index, options_from
from remcopy.tui.common import SHOWN_ERRORS, Notice, hex4


class PairEditor(Vertical):
    """Add a pair (primary and secondary by any key), or find and delete one by any key."""

    class Found(Message):
        """The operator's key names `pair`."""

        def __init__(self, pair: GroupPair) -> None:
            super().__init__()
            self.pair = pair

    class Stored(Message):
        """Group `name` was stored with its new pairs."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, catalog: Catalog, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.catalog = catalog
        self.group = ""
        self.pairs: list[GroupPair] = []
        """The open group's pairs as the acting host sees them (for finding by key)."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Add", classes="field")
            yield Input(placeholder="primary volser/HOST:DEV/address", id="primary", compact=True)
            yield Input(placeholder="secondary, same kinds", id="secondary", compact=True)
            yield Button("Add", id="add-pair", compact=True)
        with Horizontal(classes="row"):
            yield Label("Pair", classes="field")
            yield Input(
                placeholder="any key: volser, either device number or address",
                id="key",
                compact=True,
            )
            yield Button("Find", id="find-pair", compact=True)
            yield Button("Delete", id="delete-pair", compact=True, variant="error")
        yield Notice(id="edit")

    def say(self, text: str, *, error: bool = False) -> None:
        self.query_one("#edit", Notice).say(text, error=error)

    # Storing: the whole new pair list, resolved, or nothing.

    def _stored(self) -> list[Pair] | None:
        try:
            return self.catalog.pairs_all(self.group)
        except SHOWN_ERRORS as exc:
            self.say(f"nothing stored: {exc}", error=True)
            return None

    def _keys(self, stored: list[Pair]) -> list[tuple[PairKey, PairKey]]:
        return [
            (
                PairKey(text=p.primary_address, where=f"pair {p.volser or p.primary_address}"),
                PairKey(text=p.secondary_address, where=f"pair {p.volser or p.primary_address}"),
            )
            for p in stored
        ]

    def _store(self, keys: list[tuple[PairKey, PairKey]], stored: list[Pair], done: str) -> None:
        try:
            group = self.catalog.group_one(self.group)
            definition = GroupDefinition(
                name=self.group, options=options_from(dict(group.options)), keys=tuple(keys)
            )
            resolved = resolve(definition, map_index(self.catalog))
            modes = {p.primary_address: p.mode for p in stored}
            mode = str(group.options.get("mode", "sync"))
            pairs = [
                Pair(
                    primary_address=str(r.primary),
                    secondary_address=str(r.secondary),
                    volser=r.volser,
                    mode=modes.get(str(r.primary), mode),
                )
                for r in resolved
            ]
            self.catalog.put_group(self.group, group.options, pairs, replace=True)
        except SHOWN_ERRORS as exc:
            self.say(f"nothing stored: {exc}", error=True)
            return
        self.say(f"{done}: group {self.group} now has {len(pairs)} pairs")
        self.post_message(self.Stored(self.group))

    def action_add(self) -> None:
        primary = self.query_one("#primary", Input).value.strip()
        secondary = self.query_one("#secondary", Input).value.strip()
        if not (self.group and primary and secondary):
            self.query_one("#primary" if not primary else "#secondary", Input).focus()
            return
        stored = self._stored()
        if stored is None:
            return
        new = (PairKey(text=primary, where="new pair"), PairKey(text=secondary, where="new pair"))
        self._store([*self._keys(stored), new], stored, f"pair {primary} -> {secondary} added")

    # Finding by any of the five keys, and deleting what was found.

    def _lookup(self) -> GroupPair | None:
        key = self.query_one("#key", Input).value.strip()
        if not key:
            self.query_one("#key", Input).focus()
            return None
        try:
            pair = lookup(self.pairs, key)
        except SHOWN_ERRORS as exc:
            self.say(str(exc), error=True)
            return None
        self.post_message(self.Found(pair))
        return pair

    def action_find(self) -> None:
        pair = self._lookup()
        if pair is not None:
            self.say(
                f"pair {pair.name}: primary {hex4(pair.primary_number)} {pair.primary}, "
                f"secondary {hex4(pair.secondary_number)} {pair.secondary}"
            )

    def action_delete(self) -> None:
        pair = self._lookup()
        if pair is None:
            return
        stored = self._stored()
        if stored is None:
            return
        keys = [k for k in self._keys(stored) if k[0].text != str(pair.primary)]
        if not keys:
            self.say(f"nothing stored: group {self.group} would have no pairs", error=True)
            return
        self._store(keys, stored, f"pair {pair.name} deleted")

    # Messages from the widgets inside.

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Add, find or delete a pair."""
        actions = {"add-pair": self.action_add, "find-pair": self.action_find}
        actions.get(str(event.button.id), self.action_delete)()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter adds from the add fields, finds from the pair field."""
        (self.action_find if event.input.id == "key" else self.action_add)()
