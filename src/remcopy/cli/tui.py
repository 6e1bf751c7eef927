# `remcopy tui`: the operator's full-screen interface (docs/tui.md).
#
# The app is imported when the command runs, so other commands do not pay for Textual.
from __future__ import annotations

import click

from remcopy.cli.common import catalog_option, open_catalog


@click.command()
@catalog_option
def tui(catalog_location: str) -> None:
    """Full-screen interface: scan device ranges, browse maps, edit groups, run operations.

    Panels (keys 1-5): device range and scan, scan results per controller, device map with
    the last diff, group browse/edit, group operations. Works in an 80x24 terminal.

    \b
    Example:
      remcopy tui --catalog remcopy.db
    """
    from remcopy.tui import RemcopyApp

    with open_catalog(catalog_location) as catalog:
        RemcopyApp(catalog).run()
