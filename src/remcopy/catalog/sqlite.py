# The SQLite backend: the one place SQLite-only SQL may appear (PRAGMAs and BEGIN IMMEDIATE).
#
# Why these settings:
# - Python's sqlite3 module (3.11) opens transactions by itself, lazily, only before
#   INSERT/UPDATE/DELETE, so a read-then-write would run its read outside the transaction and
#   DDL would not be transactional at all. We switch that off (`isolation_level = None`) and
#   emit BEGIN ourselves when SQLAlchemy begins, as the SQLAlchemy documentation recommends.
# - Writes begin with BEGIN IMMEDIATE: the write lock is taken first, so two processes writing
#   one catalog queue up on the busy timeout instead of failing to upgrade a read lock, and a
#   write's checks see what it then changes. Reads begin with a plain (deferred) BEGIN and see
#   one snapshot.
# - `foreign_keys = ON` per connection (SQLite's default is off), or nothing cascades.
# - WAL journal: readers do not block the writer, nor the writer the readers.
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL

from remcopy.catalog.errors import CatalogUnavailable
from remcopy.catalog.queries import BulkInsert

BUSY_TIMEOUT_S: Final = 30.0
WRITE_OPTION: Final = "remcopy_catalog_write"


class SQLiteBackend:
    """A catalog in one SQLite file."""

    name: Final = "sqlite"
    read_options: Final[dict[str, Any]] = {}
    write_options: Final[dict[str, Any]] = {WRITE_OPTION: True}

    @staticmethod
    def engine_for(url: URL) -> Engine:
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise CatalogUnavailable(
                f"catalog: sqlite needs a file path: url={url}: "
                "hint: use sqlite:///PATH or a plain path"
            )
        try:
            Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogUnavailable(
                f"catalog: cannot create the catalog's folder: path={database}: {exc.strerror}"
            ) from None
        try:
            # A new catalog is created 0600 before SQLite opens it: its -wal, -shm and -journal
            # take its mode. An existing file is left as it is (DESIGN.md section 6).
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise CatalogUnavailable(
                f"catalog: cannot create the catalog file: path={database}: {exc.strerror}"
            ) from None
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _connected)
        event.listen(engine, "begin", _begun)
        return engine

    @staticmethod
    def write_begun(conn: Connection) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the write lock."""

    @staticmethod
    def insert_many(conn: Connection, bulk: BulkInsert, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert `rows` with the driver's executemany of the compiled INSERT."""
        statement, _ = bulk.compiled_for(conn.dialect)
        conn.exec_driver_sql(statement, bulk.params(conn.dialect, rows))


def _connected(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _begun(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
