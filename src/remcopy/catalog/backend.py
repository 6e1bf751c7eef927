# Which database a catalog URL names, and the backend that knows that database's ways.
#
# The forms accepted (docs/catalog.md):
# - a plain path, `catalog.db` or `/var/lib/remcopy/catalog.db`: an SQLite file;
# - `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`: the same, as a URL;
# - `postgresql+psycopg://user:password@host:port/database`; `postgresql://...` means the
#   same (psycopg 3 is the driver we ship with).
#
# Rules this module keeps:
# - Everything dialect-specific hides behind `Backend`: the engine's settings, how a write
#   transaction takes its lock, how a read sees one snapshot, how many rows are inserted
#   fast. The rest of the catalog is SQLAlchemy Core that both dialects compile.
# - A URL is never shown with its password (`URL.render_as_string(hide_password=True)`).
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from remcopy.catalog.errors import CatalogUnavailable
from remcopy.catalog.queries import BulkInsert
from remcopy.catalog.sqlite import SQLiteBackend


class Backend(Protocol):
    """What the catalog needs to know about one kind of database."""

    @property
    def name(self) -> str: ...

    @property
    def read_options(self) -> dict[str, Any]:
        """Execution options for read transactions."""
        ...

    @property
    def write_options(self) -> dict[str, Any]:
        """Execution options for write transactions."""
        ...

    def engine_for(self, url: URL) -> Engine: ...

    def write_begun(self, conn: Connection) -> None:
        """Called first in every write transaction, before any statement of the write."""
        ...

    def insert_many(
        self, conn: Connection, bulk: BulkInsert, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Insert many rows, given as tuples in `bulk.columns` order, the fastest way."""
        ...


# Each accepted driver name -> the driver used. The PostgreSQL backend (and psycopg, ~25 ms to
# import) is loaded only for a PostgreSQL catalog (backend_for).
_DRIVERS: dict[str, str] = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def catalog_url(location: str | os.PathLike[str]) -> URL:
    """Turn a catalog location (a path or a database URL) into a URL with a supported driver."""
    if isinstance(location, os.PathLike) or "://" not in location:
        path = Path(location).expanduser().absolute()
        return URL.create("sqlite+pysqlite", database=str(path))
    try:
        url = make_url(location)
    except ArgumentError:
        raise CatalogUnavailable(
            f"catalog: not a database URL: url={_shown(location)}: "
            "hint: use a path, sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"
        ) from None
    known = _DRIVERS.get(url.drivername)
    if known is None:
        raise CatalogUnavailable(
            f"catalog: unsupported database: driver={url.drivername}: "
            "hint: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"
        )
    return url.set(drivername=known)


def backend_for(url: URL) -> Backend:
    """The backend for a URL that `catalog_url` returned."""
    if url.drivername == "postgresql+psycopg":
        from remcopy.catalog.postgresql import PostgreSQLBackend

        return PostgreSQLBackend()
    return SQLiteBackend()


def shown_url(url: URL) -> str:
    """The URL as it may appear in a message or a log: without its password."""
    return url.render_as_string(hide_password=True)


def _shown(text: str) -> str:
    # An unparsable URL may still hold a password; show only the scheme and the host part.
    scheme, _, rest = text.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if rest else text[:60]
