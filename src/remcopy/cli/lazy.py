# Subcommands imported when they are used, not when `remcopy` starts.
#
# Why: every `remcopy` process used to import every subcommand module, and with them the
# catalog (SQLAlchemy, psycopg), rich, the controller and the group operations: 0.5-0.8 s before
# `remcopy --help` printed a line (DESIGN.md section 8 asks <= 150 ms). click supports loading
# a group's subcommands on demand (its documentation, "Lazily Loading Subcommands"): a
# `click.Group` whose `list_commands` names them and whose `get_command` imports the one asked
# for. This is that group, plus one thing click's recipe lacks: the group's own `--help` lists
# every subcommand with its short help, and click would import every module to read it. Each
# entry here carries the first paragraph of its command's help instead, so `remcopy --help`
# imports nothing but click.
#
# Rules this module keeps:
# - The table in cli/main.py is the only list of top-level commands. An entry's `help` must give
#   the short help the command itself gives: tests/unit/test_160_cli_lazy.py loads every entry
#   and compares, so a docstring edited in one place and not the other fails a test.
# - A subcommand module keeps its heavy imports (catalog, rich, controller, asyncio loop) inside
#   the functions that use them, so that `remcopy COMMAND --help` stays fast too.
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from gettext import gettext as _
from typing import Any

import click


@dataclass(frozen=True, slots=True, kw_only=True)
class LazyCommand:
    """Where a subcommand lives, and what `--help` of its group says about it."""

    module: str
    """The module that defines the command, e.g. `remcopy.cli.group`."""
    attribute: str
    """The command object's name in that module (`map_group` for `remcopy map`)."""
    help: str
    """The first paragraph of the command's help: the group's listing shortens it as click
    shortens the command's own."""


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(self.load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def load(self, name: str) -> click.Command:
        """Import subcommand `name` from its module (once: Python caches the module)."""
        entry = self.lazy_commands[name]
        command = getattr(importlib.import_module(entry.module), entry.attribute)
        if not isinstance(command, click.Command):
            raise TypeError(
                f"{entry.module}.{entry.attribute} must be a click command (got {command!r}); "
                "this should never happen"
            )
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the subcommands as click.Group does, without importing those not loaded."""
        shown: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None:
                command = click.Command(name, help=self.lazy_commands[name].help)
            if not command.hidden:
                shown.append((name, command))
        if not shown:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in shown)
        with formatter.section(_("Commands")):  # click's own title, translated as click does
            formatter.write_dl([(name, c.get_short_help_str(limit)) for name, c in shown])
