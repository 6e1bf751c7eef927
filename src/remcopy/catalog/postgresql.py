# The PostgreSQL backend: the one place PostgreSQL-only SQL may appear.
#
# Why these settings:
# - Every write transaction first takes one transaction-scoped advisory lock, so writes to the
#   catalog are serialized across the whole multi-host complex, as SQLite's BEGIN IMMEDIATE
#   serializes them on one machine. Writes are rare (a scan, a group edit, a log line) and
#   short, and a write's checks (is this address in another group?) then cannot race another
#   write. The lock ends with the transaction, committed or rolled back.
# - Reads run at REPEATABLE READ, so a read made of several statements (a map diff reads two
#   scans) sees one snapshot, as it does on SQLite.
# - Many-row inserts (a scan's entries, a group's pairs) use COPY, PostgreSQL's bulk load:
#   one stream instead of one statement per row.
# - Connections are checked before use (`pool_pre_ping`): a catalog server restart must not
#   fail the next command.
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from remcopy.catalog.queries import BulkInsert

# Any constant will do; this one spells "remcopy" in ASCII so it is recognizable in pg_locks.
WRITE_LOCK_KEY: Final = 0x72656D636F7079
_WRITE_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


class PostgreSQLBackend:
    """A catalog in a PostgreSQL database, shared by the hosts of a complex."""

    name: Final = "postgresql"
    read_options: Final[dict[str, Any]] = {"isolation_level": "REPEATABLE READ"}
    write_options: Final[dict[str, Any]] = {}

    @staticmethod
    def engine_for(url: URL) -> Engine:
        # No hstore: the catalog has no such column, and looking the type up costs every
        # new connection three more statements.
        return create_engine(url, pool_pre_ping=True, use_native_hstore=False)

    @staticmethod
    def write_begun(conn: Connection) -> None:
        """Take the catalog's write lock; it is held until the transaction ends."""
        conn.execute(_WRITE_LOCK, {"key": WRITE_LOCK_KEY})

    @staticmethod
    def insert_many(conn: Connection, bulk: BulkInsert, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert `rows` with COPY ... FROM STDIN, inside the connection's transaction."""
        copy = sql.SQL("COPY {table} ({columns}) FROM STDIN").format(
            table=sql.Identifier(bulk.table.name),
            columns=sql.SQL(", ").join(sql.Identifier(column) for column in bulk.columns),
        )
        driver_connection = conn.connection.driver_connection
        assert driver_connection is not None
        try:
            with driver_connection.cursor() as cursor, cursor.copy(copy) as stream:
                for row in rows:
                    stream.write_row(row)
        except psycopg.Error as exc:
            # Past SQLAlchemy, so wrap the driver's error as SQLAlchemy would have (a unique
            # violation becomes sqlalchemy.exc.IntegrityError), for the catalog to translate.
            raise DBAPIError.instance(
                copy.as_string(driver_connection), None, exc, psycopg.Error
            ) from exc
