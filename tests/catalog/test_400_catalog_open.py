# Opening a catalog: the location forms, reopening, and the errors a person can act on.
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from catalog_helpers import FakeClock, PostgreSQLServer, address, entry, free_port, scanned
from sqlalchemy import create_engine, inspect, text

from remcopy.catalog import (
    Catalog,
    CatalogError,
    CatalogNotFound,
    CatalogSchemaTooNew,
    CatalogUnavailable,
)
from remcopy.catalog.backend import catalog_url


def test_Catalog_open_plain_path_and_sqlite_url_are_one_file(tmp_path: Path) -> None:
    """A plain path and an sqlite:/// URL to it open the same SQLite file, creating folders."""
    path = tmp_path / "deep" / "folder" / "catalog.db"
    with Catalog.open(path) as first:
        first.put_host("hosta", {"ranges": []}, replace=False)
        assert first.dialect == "sqlite"
    assert path.is_file()
    with Catalog.open(f"sqlite:///{path}") as second:
        assert [host.name for host in second.hosts_all()] == ["hosta"]
    with Catalog.open(str(path)) as third:
        assert third.url == f"sqlite+pysqlite:///{path}"


def test_Catalog_open_again_keeps_everything(catalog_url: str, clock: FakeClock) -> None:
    """Reopening a catalog finds what was stored and migrates nothing twice."""
    with Catalog.open(catalog_url, clock_ns=clock) as first:
        scan_id = scanned(first, "hosta", [entry("1A00", address(64015, 0), "PAY001")])
    with Catalog.open(catalog_url, clock_ns=clock) as second:
        assert second.scans_all("hosta")[0].id == scan_id
        assert second.map_all("hosta")[0].volser == "PAY001"


def test_Catalog_dialect_names_the_backend(catalog: Catalog, catalog_url: str) -> None:
    """The dialect is the one the URL names."""
    assert catalog.dialect == ("sqlite" if catalog_url.startswith("sqlite") else "postgresql")


def test_catalog_url_reads_postgresql_as_psycopg() -> None:
    """A postgresql:// URL means the psycopg 3 driver, the one remcopy ships with."""
    url = catalog_url("postgresql://admin:pw@db.example:5433/remcopy")
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database) == ("db.example", 5433, "remcopy")


@pytest.mark.parametrize(
    "location",
    ["mysql://user@host/db", "oracle+cx_oracle://user@host/db", "sqlite+aiosqlite:///x.db"],
)
def test_Catalog_open_refuses_unsupported_databases(location: str) -> None:
    """A URL for a database remcopy does not support is CatalogUnavailable naming the driver."""
    with pytest.raises(CatalogUnavailable, match="unsupported database: driver="):
        Catalog.open(location)


def test_Catalog_open_refuses_sqlite_without_a_file() -> None:
    """An in-memory SQLite URL is refused: a catalog is a file."""
    with pytest.raises(CatalogUnavailable, match="sqlite needs a file path"):
        Catalog.open("sqlite://")


def test_Catalog_open_unreachable_server_is_CatalogUnavailable() -> None:
    """A PostgreSQL URL with no server behind it is CatalogUnavailable, without the password."""
    url = f"postgresql+psycopg://remcopy:topsecret@127.0.0.1:{free_port()}/catalog"
    with pytest.raises(CatalogUnavailable) as raised:
        Catalog.open(url)
    assert "database unavailable" in str(raised.value)
    assert "topsecret" not in str(raised.value)


def test_Catalog_url_hides_the_password(postgresql_server: PostgreSQLServer) -> None:
    """The catalog's URL, as shown to people, never carries the password."""
    plain = postgresql_server.create_database()
    with Catalog.open(plain.replace("postgres@", "postgres:hunter2@")) as opened:
        assert "hunter2" not in opened.url
        assert opened.url.startswith("postgresql+psycopg://postgres:***@127.0.0.1:")
    postgresql_server.drop_database(plain)


def test_Catalog_open_refuses_a_schema_from_a_newer_remcopy(catalog_url: str) -> None:
    """A database at a revision this remcopy does not know is CatalogSchemaTooNew, untouched."""
    Catalog.open(catalog_url).close()
    engine = create_engine(catalog_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(CatalogSchemaTooNew, match="revision=9999"):
            Catalog.open(catalog_url)
        with engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert revision == "9999"


def test_Catalog_open_sqlite_under_a_file_is_CatalogUnavailable(tmp_path: Path) -> None:
    """A catalog path whose folder cannot be made is CatalogUnavailable naming the path."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(CatalogUnavailable, match="cannot create the catalog's folder: path="):
        Catalog.open(blocker / "catalog.db")


def test_Catalog_open_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A catalog path holding something else is a CatalogError, and the file is left alone."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(CatalogError, match="catalog: database error: url=sqlite"):
        Catalog.open(path)
    assert path.read_bytes().startswith(b"these are my notes")


def test_Catalog_open_create_False_refuses_a_missing_file_and_makes_nothing(tmp_path: Path) -> None:
    """Without create, a missing SQLite file is CatalogNotFound naming it; no folder, no file."""
    path = tmp_path / "typo" / "catalog.db"
    with pytest.raises(CatalogNotFound, match=r"no catalog at .*typo/catalog\.db: no such file"):
        Catalog.open(path, create=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CatalogNotFound, match="catalog init"):
        Catalog.open(f"sqlite:///{tmp_path}/other.db", create=False)
    assert list(tmp_path.iterdir()) == []


def test_Catalog_open_create_False_refuses_a_folder(tmp_path: Path) -> None:
    """Without create, a folder where the file should be is CatalogNotFound: not a file."""
    with pytest.raises(CatalogNotFound, match="not a file"):
        Catalog.open(tmp_path, create=False)


def test_Catalog_open_create_False_refuses_a_database_without_the_schema(
    new_database: Callable[[], str],
) -> None:
    """Without create, a database holding no catalog is CatalogNotFound, and stays without one."""
    url = new_database()
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).touch()  # an empty file: SQLite's empty database
    with pytest.raises(CatalogNotFound, match="the database holds no catalog schema"):
        Catalog.open(url, create=False)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert not inspect(conn).has_table("alembic_version")
            assert not inspect(conn).has_table("hosts")
    finally:
        engine.dispose()


def test_Catalog_open_create_False_opens_an_existing_catalog(
    catalog_url: str, clock: FakeClock
) -> None:
    """Without create, an existing catalog opens as usual, with what it holds."""
    with Catalog.open(catalog_url, clock_ns=clock) as first:
        first.put_host("hosta", {"ranges": []}, replace=False)
    with Catalog.open(catalog_url, create=False, clock_ns=clock) as second:
        assert [host.name for host in second.hosts_all()] == ["hosta"]
