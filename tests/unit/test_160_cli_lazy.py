# The CLI's lazily loaded subcommands (cli/lazy.py): the table in cli/main.py says what each
# command's help says, every entry loads, and the quick commands import nothing heavy.
from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from remcopy.cli.lazy import LazyGroup
from remcopy.cli.main import COMMANDS, cli

# What a command that does not use them must not import (DESIGN.md section 8: `remcopy --help`
# <= 150 ms; these were most of the 0.5-0.8 s it took).
HEAVY = ("sqlalchemy", "alembic", "psycopg", "textual", "pydantic", "uvloop", "remcopy.catalog")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_LazyGroup_entry_loads_the_command_it_names(name: str) -> None:
    """Each entry imports a click command of that name."""
    assert isinstance(cli, LazyGroup)
    command = cli.load(name)
    assert command.name == name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_LazyGroup_entry_help_is_the_commands_short_help(name: str) -> None:
    """The listing's help from the table equals the command's own, at every width."""
    command = cli.load(name)
    stub = click.Command(name, help=COMMANDS[name].help)
    for limit in range(10, 130):
        assert stub.get_short_help_str(limit) == command.get_short_help_str(limit), limit


def test_LazyGroup_lists_loaded_and_lazy_commands_once() -> None:
    """A command added by hand joins the lazy ones, sorted, each name once."""
    group = LazyGroup(name="g", lazy_commands={"b": COMMANDS["states"]})
    group.add_command(click.Command("a"))
    ctx = click.Context(group)
    assert group.list_commands(ctx) == ["a", "b"]
    loaded = group.get_command(ctx, "b")
    assert loaded is not None and loaded.name == "states"
    assert group.list_commands(ctx) == ["a", "b"]
    assert group.get_command(ctx, "nothing") is None


def _modules_after(*args: str) -> list[str]:
    """The modules `remcopy ARGS` imported, from a fresh interpreter."""
    script = (
        "import json, sys\n"
        "from remcopy.cli.main import main\n"
        f"sys.argv = ['remcopy', *{list(args)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    line = run.stderr.rsplit("\nMODULES ", 1)[1]
    modules: list[str] = json.loads(line)
    return modules


@pytest.mark.parametrize(
    "args",
    [("--help",), ("group", "--help"), ("states",), ("host", "--help"), ("map", "--help")],
    ids=" ".join,
)
def test_quick_commands_import_nothing_heavy(args: tuple[str, ...]) -> None:
    """`remcopy --help`, `remcopy group --help`, `remcopy states` and the host and map
    groups' help load no catalog, no SQLAlchemy, no TUI, no pydantic and no event loop."""
    modules = _modules_after(*args)
    heavy = [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
    assert heavy == []


def test_top_level_help_imports_no_subcommand_and_no_rich() -> None:
    """`remcopy --help` lists every command without importing one of them, or rich."""
    modules = _modules_after("--help")
    assert [m for m in modules if m.startswith("remcopy.cli.") or m == "rich"] == [
        "remcopy.cli.lazy",
        "remcopy.cli.main",
    ]
