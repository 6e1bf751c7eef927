# Fixtures for the TUI tests: real controller processes and a catalog that knows host `hosta`.
from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# The controllers are the CLI flow test's world (tests/integration/mirror_world.py).
sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))

from mirror_world import build, host_file, stop

from remcopy.catalog import Catalog
from remcopy.host.service import add_host


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Any]:
    w = await build(tmp_path, primaries=2, volumes=4)
    yield w
    await stop(w)


@pytest.fixture
def catalog(tmp_path: Path, world: Any) -> Iterator[Catalog]:
    """A catalog with host `hosta` (8 online devices at site A, 8 offline at site B)."""
    with Catalog.open(tmp_path / "catalog.db") as cat:
        add_host(cat, host_file(tmp_path, world))
        yield cat
