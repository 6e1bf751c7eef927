# Fixtures for the catalog contract suite: every test that takes `catalog` (or `new_database`)
# runs twice, on an SQLite file and on a real PostgreSQL server, each time on a fresh database.
#
# The PostgreSQL server is started once per test session (so once per xdist worker: each worker
# has its own cluster in its own directory, on its own port) by scripts/pg.sh, which waits for
# readiness with `pg_ctl -w` and `pg_isready`; it is stopped and removed at session end. Each
# test gets a new database in it (CREATE DATABASE takes tens of milliseconds).
from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from catalog_helpers import FakeClock, PostgreSQLServer, free_port

from remcopy.catalog import Catalog

PG_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pg.sh"
PG_START_ATTEMPTS = 3
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgreSQLServer]:
    """Start a PostgreSQL cluster for this session (this worker); stop and remove it at the end."""
    # Not under pytest's tmp_path: its folders are private to root, and the server runs as the
    # postgres user. mkdtemp's folder in /tmp is handed to that user by the script.
    directory = Path(tempfile.mkdtemp(prefix="remcopy-pg-"))
    try:
        errors = []
        # Bounded: a port found free can be taken by someone else before the server binds it.
        for _ in range(PG_START_ATTEMPTS):
            port = free_port()
            started = subprocess.run(
                [str(PG_SCRIPT), "start", str(directory), str(port)],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            if started.returncode == 0:
                yield PostgreSQLServer(directory, port)
                break
            errors.append(started.stderr.strip())
        else:
            pytest.fail("PostgreSQL did not start: " + " | ".join(errors), pytrace=False)
    finally:
        subprocess.run(
            [str(PG_SCRIPT), "stop", str(directory)], capture_output=True, timeout=120, check=False
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Make fresh empty databases on this test's backend; each call returns a new URL.

    PostgreSQL databases are dropped at teardown, so a session does not fill the disk.
    """
    if request.param == "sqlite":
        numbers = itertools.count()
        yield lambda: f"sqlite:///{tmp_path}/catalog-{next(numbers)}.db"
        return
    server: PostgreSQLServer = request.getfixturevalue("postgresql_server")
    made: list[str] = []

    def make() -> str:
        made.append(server.create_database())
        return made[-1]

    yield make
    for url in made:
        server.drop_database(url)


@pytest.fixture
def catalog_url(new_database: Callable[[], str]) -> str:
    """The URL of a fresh empty database on this test's backend."""
    return new_database()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def catalog(catalog_url: str, clock: FakeClock) -> Iterator[Catalog]:
    """A catalog opened (so migrated) on a fresh database, closed at teardown."""
    with Catalog.open(catalog_url, clock_ns=clock) as opened:
        yield opened
