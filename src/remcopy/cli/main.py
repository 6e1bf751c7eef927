# The `remcopy` command: groups of subcommands, and the one place errors become exit codes.
#
# Exit codes (DESIGN.md section 4): 0 ok, 1 the operation failed, 2 bad input. A RemcopyError
# is printed as its message alone (no traceback): it was written for a person. Anything else
# is our bug, printed with its traceback and exit code 1... but only after saying so.
from __future__ import annotations

import logging
import os
import sys

import click

from remcopy import __version__
from remcopy.cli.controller import controller
from remcopy.cli.demo import demo
from remcopy.cli.group import group
from remcopy.cli.host import host, map_group, scan
from remcopy.cli.output import fail
from remcopy.cli.states import states
from remcopy.cli.tui import tui
from remcopy.cli.volume import volume
from remcopy.cli.workload import verify, workload
from remcopy.errors import ConfigError, RemcopyError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="remcopy")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """remcopy: disaster-recovery remote copy you can prove consistent.

    \b
    Example:
      remcopy controller serve site-a/cntl1.toml
      remcopy controller status 127.0.0.1:7401 --name hosta --secret s3cret-hosta
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


cli.add_command(controller)
cli.add_command(volume)
cli.add_command(states)
cli.add_command(demo)
cli.add_command(host)
cli.add_command(scan)
cli.add_command(map_group)
cli.add_command(group)
cli.add_command(workload)
cli.add_command(verify)
cli.add_command(tui)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        fail(str(exc))
        sys.exit(exc.exit_code)
    except RemcopyError as exc:
        fail(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        os._exit(1)
    sys.exit(0)
