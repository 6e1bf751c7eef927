# Migrations: applied from empty they give exactly the schema the tables in schema.py describe.
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Select, create_engine, inspect

from remcopy.catalog import (
    Catalog,
    Group,
    GroupMap,
    GroupMapRow,
    Host,
    MapEntry,
    Operation,
    Pair,
    Scan,
    ScanFailure,
)
from remcopy.catalog import queries as q
from remcopy.catalog.migrate import MIGRATIONS_DIR, alembic_config, head_revision, known_head
from remcopy.catalog.schema import metadata


def _schema(url: str) -> dict[str, dict[str, Any]]:
    # Everything the inspector can tell about the catalog's tables, in a comparable form.
    engine = create_engine(url)
    try:
        seen = inspect(engine)
        out: dict[str, dict[str, Any]] = {}
        for table in sorted(seen.get_table_names()):
            if table == "alembic_version":
                continue
            pk = seen.get_pk_constraint(table)
            out[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"]) for c in seen.get_columns(table)
                ],
                "primary_key": (pk["name"], tuple(pk["constrained_columns"])),
                "foreign_keys": sorted(
                    (
                        fk["name"],
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                        (fk.get("options") or {}).get("ondelete"),
                    )
                    for fk in seen.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (ix["name"], tuple(ix["column_names"]), ix["unique"])
                    for ix in seen.get_indexes(table)
                ),
                "unique": sorted(
                    (uq["name"], tuple(uq["column_names"]))
                    for uq in seen.get_unique_constraints(table)
                ),
                "checks": sorted(
                    (ck["name"], re.sub(r"[\s()]", "", ck["sqltext"]))
                    for ck in seen.get_check_constraints(table)
                ),
            }
        return out
    finally:
        engine.dispose()


def test_migrations_from_empty_match_the_schema(new_database: Callable[[], str]) -> None:
    """Migrating an empty database gives the same tables, keys and indexes as creating them."""
    migrated, created = new_database(), new_database()
    Catalog.open(migrated).close()
    engine = create_engine(created)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    got, want = _schema(migrated), _schema(created)
    assert set(got) == set(metadata.tables)
    assert got == want
    assert all(table["columns"] for table in got.values())


def test_migrations_leave_nothing_for_autogenerate(catalog_url: str) -> None:
    """Alembic's own comparison finds no difference between the migrated database and the models."""
    Catalog.open(catalog_url).close()
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, metadata)
            revision = context.get_current_revision()
    finally:
        engine.dispose()
    assert differences == []
    assert revision == head_revision()


def test_migrations_are_numbered_in_one_line() -> None:
    """Revisions are 0001, 0002, ... each revising the one before, in files named by number."""
    scripts = ScriptDirectory.from_config(alembic_config())
    revisions = sorted(scripts.walk_revisions(), key=lambda script: script.revision)
    assert revisions, "there must be at least the initial migration"
    for number, script in enumerate(revisions, start=1):
        assert script.revision == f"{number:04d}"
        assert script.down_revision == (None if number == 1 else f"{number - 1:04d}")
        assert Path(script.path).name.startswith(f"{number:04d}_")
        assert Path(script.path).parent == MIGRATIONS_DIR / "versions"
    assert head_revision() == revisions[-1].revision
    assert known_head() == revisions[-1].revision  # what opening a catalog checks first


@pytest.mark.parametrize(
    ("query", "record"),
    [
        (q.HOST_ONE, Host),
        (q.HOSTS_ALL, Host),
        (q.SCAN_ONE, Scan),
        (q.SCANS_ALL, Scan),
        (q.MAP_ALL, MapEntry),
        (q.map_find(1, volser="V", device="D", address="A"), MapEntry),
        (q.FAILURES_ALL, ScanFailure),
        (q.OPERATION_ONE, Operation),
        (q.operations_recent(limit=1, target="t", op="o"), Operation),
        (q.GROUP_ONE, Group),
        (q.GROUPS_ALL, Group),
        (q.PAIRS_ALL, Pair),
        (q.GROUP_MAP_ROWS_ALL, GroupMapRow),
        (q.GROUP_MAPS_ALL, GroupMap),
    ],
)
def test_record_queries_select_the_record_fields_in_order(query: Select[Any], record: type) -> None:
    """Each query a record is built from selects exactly that record's fields, in order."""
    assert tuple(column.key for column in query.selected_columns) == record.columns()  # type: ignore[attr-defined]


def test_migration_0002_keeps_existing_groups_as_defined(catalog_url: str) -> None:
    """A catalog at 0001 with a group in it opens at the head with the group as defined
    (not reversed), its pairs kept."""
    from alembic import command
    from sqlalchemy import text

    engine = create_engine(catalog_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            conn.execute(
                text(
                    "INSERT INTO copy_groups (name, options, created_ns, updated_ns) "
                    "VALUES ('pay', '{}', 1, 2)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO copy_pairs (primary_address, secondary_address, group_name, "
                    "position, volser, mode) VALUES ('64015:1A00:0A:00', '65000:2B00:20:00', "
                    "'pay', 0, 'PAY000', 'sync')"
                )
            )
    finally:
        engine.dispose()
    with Catalog.open(catalog_url) as catalog:
        stored = catalog.group_one("pay")
        assert (stored.reversed, stored.pair_count, stored.updated_ns) == (False, 1, 2)
        assert catalog.set_group_direction("pay", reversed=True).reversed is True


def test_migration_0004_removes_plaintext_secrets(catalog_url: str) -> None:
    """A catalog at 0003 holding a host's secret inline opens at the head without it (a host
    naming its secret file keeps that); the host's commands then say what to do; storing a
    definition with a secret is refused."""
    import json

    from alembic import command
    from sqlalchemy import text

    from remcopy.catalog.errors import CatalogInputError
    from remcopy.host.service import host_definition

    inline = {"plain_tcp": True, "host": {"name": "hosta", "secret": "plaintext-secret-1"}}
    named = {"plain_tcp": True, "host": {"name": "hostb", "secret_file": "/etc/hostb.secret"}}
    engine = create_engine(catalog_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0003")
            for name, definition in (("hosta", inline), ("hostb", named)):
                conn.execute(
                    text(
                        "INSERT INTO hosts (name, definition, created_ns, updated_ns) "
                        "VALUES (:name, :definition, 1, 2)"
                    ),
                    {"name": name, "definition": json.dumps(definition)},
                )
    finally:
        engine.dispose()
    with Catalog.open(catalog_url) as catalog:
        assert catalog.host_one("hosta").definition == {
            "plain_tcp": True,
            "host": {"name": "hosta"},
        }
        assert catalog.host_one("hostb").definition == named
        with pytest.raises(CatalogInputError, match="remcopy host add FILE --replace"):
            host_definition(catalog, "hosta")
        with pytest.raises(CatalogInputError, match="keeps no plaintext secret"):
            catalog.put_host("hostc", inline, replace=False)
        assert [h.name for h in catalog.hosts_all()] == ["hosta", "hostb"]
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            stored = " ".join(str(row) for row in conn.execute(text("SELECT * FROM hosts")))
    finally:
        engine.dispose()
    assert "plaintext-secret-1" not in stored
