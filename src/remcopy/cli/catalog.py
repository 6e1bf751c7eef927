# `remcopy catalog ...`: make a catalog on purpose.
#
# Why a command of its own: only `remcopy host add` creates a catalog as a side effect; every
# other command refuses a location that holds none (a typo in --catalog or REMCOPY_CATALOG must
# not leave an empty catalog behind and report "no such group"). `catalog init` is the explicit
# way to make one, SQLite file or PostgreSQL database alike, and is safe to run twice.
#
# The catalog (SQLAlchemy) is imported inside the command, so `--help` stays fast (cli/lazy.py).
from __future__ import annotations

import click

from remcopy.cli.common import json_option


@click.group()
def catalog() -> None:
    """Make a catalog: an SQLite file or a PostgreSQL database."""


@catalog.command("init")
@click.argument("location", metavar="PATH_OR_URL")
@json_option
def catalog_init(location: str, as_json: bool) -> None:
    """Create the catalog at PATH_OR_URL (an SQLite path or a postgresql:// URL).

    An existing catalog is left as it is (migrated to this remcopy's schema) and the command
    exits 0. A PostgreSQL database must exist already; its tables are created.

    \b
    Example:
      remcopy catalog init /var/lib/remcopy/catalog.db
      remcopy catalog init postgresql://remcopy@db.example/remcopy
    """
    from remcopy.catalog import Catalog, CatalogNotFound
    from remcopy.catalog.migrate import known_head
    from remcopy.cli.output import emit_json, say

    try:
        Catalog.open(location, create=False).close()
        created = False
    except CatalogNotFound:
        created = True
    with Catalog.open(location, create=True) as opened:
        url = opened.url
    if as_json:
        emit_json({"catalog": url, "created": created, "schema_revision": known_head()})
    else:
        say(f"catalog {'created' if created else 'already there'}: {url}")
