# The `remcopy` command: groups of subcommands, and the one place errors become exit codes.
#
# Exit codes (DESIGN.md section 4): 0 ok, 1 the operation failed, 2 bad input. A RemcopyError
# is printed as its message alone (no traceback): it was written for a person. Anything else
# is our bug, printed with its traceback and exit code 1... but only after saying so.
#
# Start-up cost (DESIGN.md section 8: `remcopy --help` <= 150 ms): this module imports click and
# remcopy.errors only. Subcommands are imported when used (cli/lazy.py), from the table below;
# rich is imported only to print an error.
from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Final

import click

from remcopy import __version__
from remcopy.cli.lazy import LazyCommand, LazyGroup
from remcopy.errors import ConfigError, RemcopyError

# Every top-level command: its module, its object there, and the first paragraph of its help
# (a unit test checks each against the command itself).
COMMANDS: Final = {
    "catalog": LazyCommand(
        module="remcopy.cli.catalog",
        attribute="catalog",
        help="Make a catalog: an SQLite file or a PostgreSQL database.",
    ),
    "controller": LazyCommand(
        module="remcopy.cli.controller",
        attribute="controller",
        help="Run a storage controller, check its config, or ask one for its status.",
    ),
    "demo": LazyCommand(
        module="remcopy.cli.demo",
        attribute="demo",
        help="Run a whole disaster-recovery drill on real controller processes.",
    ),
    "events": LazyCommand(
        module="remcopy.cli.events",
        attribute="events",
        help='Print the controllers\' events, one JSON line each (`"schema": 1`).',
    ),
    "group": LazyCommand(
        module="remcopy.cli.group",
        attribute="group",
        help="Copy groups: define them, load them for a host, and run operations on all pairs.",
    ),
    "host": LazyCommand(
        module="remcopy.cli.host",
        attribute="host",
        help="Define hosts: their device numbers and the paths to their controllers.",
    ),
    "log": LazyCommand(
        module="remcopy.cli.oplog",
        attribute="log",
        help="Show the operation log: who ran what on which target, when, and how it ended.",
    ),
    "map": LazyCommand(
        module="remcopy.cli.host",
        attribute="map_group",
        help="Read device maps: show, diff against the previous scan, check across hosts.",
    ),
    "pki": LazyCommand(
        module="remcopy.cli.pki",
        attribute="pki_group",
        help="Make a site CA and certificates for hosts and controllers (TLS on every link).",
    ),
    "scan": LazyCommand(
        module="remcopy.cli.host",
        attribute="scan",
        help="Scan host NAME's devices through its controllers and store its device map.",
    ),
    "secret": LazyCommand(
        module="remcopy.cli.secret",
        attribute="secret_group",
        help="Make shared secrets (>= 128 random bits) in 0600 files that configs name.",
    ),
    "states": LazyCommand(
        module="remcopy.cli.states",
        attribute="states",
        help="Print every pair state x action: the result, or the refusal message.",
    ),
    "tui": LazyCommand(
        module="remcopy.cli.tui",
        attribute="tui",
        help="Full-screen interface: scan device ranges, browse maps, edit groups, run operations.",
    ),
    "verify": LazyCommand(
        module="remcopy.cli.workload",
        attribute="verify",
        help="Decide whether an image of a group is a consistent cut of a workload's writes.",
    ),
    "volume": LazyCommand(
        module="remcopy.cli.volume",
        attribute="volume",
        help="Create and inspect volume files.",
    ),
    "workload": LazyCommand(
        module="remcopy.cli.workload",
        attribute="workload",
        help="The dependent-write workload: chains of writes across a group's primaries.",
    ),
}


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="remcopy")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """remcopy: disaster-recovery remote copy you can prove consistent.

    \b
    Example:
      remcopy controller serve site-a/cntl1.toml
      remcopy pki init --dir site-pki
      remcopy controller status 127.0.0.1:7401 --controller cntl1 --name hosta \\
          --pki site-pki --secret-file hosta.secret
    """
    from remcopy.logformat import OneLineFormatter

    level = logging.WARNING - 10 * verbose
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())  # a record is one line (docs/operations.md)
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[handler])


def fail(message: str) -> None:
    """Print an error for a person on stderr (rich is imported only now: errors are rare)."""
    from remcopy.cli.output import fail as print_failure

    print_failure(message)


def _json_asked() -> bool:
    """Whether the command line asks for --json (read from argv: a usage error may come
    before click has parsed the flag)."""
    args = sys.argv[1:]
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def failed(message: str, exit_code: int) -> None:
    """An error for a person on stderr; with --json also one error document on stdout, unless
    the command printed its document already."""
    fail(message)
    if _json_asked():
        from remcopy.cli.output import error_json

        error_json(message, exit_code)
    sys.exit(exit_code)


def run() -> None:
    """The `remcopy` command: `main`, then the process ends without a last garbage
    collection over what the command built (gc.freeze): with a 10,000-pair report in memory
    that collection took 0.1-0.2 s of a `group suspend` from the shell, and it frees nothing
    the process's end would not."""
    try:
        main()
    finally:
        gc.freeze()


def main() -> None:
    output = sys.modules.get("remcopy.cli.output")  # loaded by an earlier main() in-process
    if output is not None:
        output.reset()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        failed("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        if _json_asked():
            from remcopy.cli.output import error_json

            error_json(exc.format_message(), exc.exit_code)
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        failed(str(exc), exc.exit_code)
    except RemcopyError as exc:
        failed(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        failed("interrupted", 130)
    except BrokenPipeError:
        os._exit(1)
    sys.exit(0)
