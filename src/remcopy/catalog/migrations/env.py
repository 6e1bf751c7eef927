# Alembic's entry point for the catalog's migrations.
#
# Catalog.open() runs the migrations on a connection it has already begun a write transaction
# on (`config.attributes["connection"]`), so all pending migrations apply in that one
# transaction: on both SQLite and PostgreSQL, DDL is transactional, and a failed migration leaves
# the catalog at the revision it had. For a developer generating a new revision
# (`remcopy.catalog.migrate.new_revision`), a URL in `sqlalchemy.url` is used instead.
from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from remcopy.catalog.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise SystemExit("catalog migrations run online only (Catalog.open does this)")
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        _run(connection)
    engine.dispose()


_main()
