# PostgreSQL races between separate processes, as several hosts meet in one catalog: the first
# migration by many processes at once, scans of several hosts at once, and group loads from
# several hosts at once. Each contender is a real `remcopy` command in its own process
# (race_worker.py), all released together once every one is ready; the controllers are real
# processes on 127.0.0.1 and the catalog a real PostgreSQL server (conftest.py).
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from catalog_helpers import PostgreSQLServer
from sqlalchemy import create_engine, text

from integration.scan_world import build
from remcopy.catalog import Catalog
from remcopy.catalog.migrate import known_head

WORKER = Path(__file__).with_name("race_worker.py")
RACE_TIMEOUT_S = 120


@dataclass
class Outcome:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str


async def race(url: str, *commands: tuple[str, ...]) -> list[Outcome]:
    """Run each command as its own process, released at once; their outcomes, in order."""
    env = dict(os.environ, REMCOPY_CATALOG=url)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for args in commands
    ]
    try:
        async with asyncio.timeout(RACE_TIMEOUT_S):  # a bound, not a clock
            for proc in procs:
                assert proc.stdout is not None
                assert await proc.stdout.readline() == b"ready\n"
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
                proc.stdin.close()
            results = [await proc.communicate() for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    outcomes = [
        Outcome(args, proc.returncode or 0, out.decode(), err.decode())
        for args, proc, (out, err) in zip(commands, procs, results, strict=True)
    ]
    for outcome in outcomes:
        assert "Traceback" not in outcome.stderr, outcome
    return outcomes


@pytest.fixture
def pg_url(postgresql_server: PostgreSQLServer) -> Iterator[str]:
    url = postgresql_server.create_database()
    yield url
    postgresql_server.drop_database(url)


async def test_first_migration_by_many_processes_at_once(pg_url: str):
    """Four `catalog init` on an empty database at once: all succeed, one schema at head."""
    outcomes = await race(pg_url, *[("catalog", "init", pg_url, "--json")] * 4)
    assert [o.code for o in outcomes] == [0] * 4, outcomes
    assert {json.loads(o.stdout)["schema_revision"] for o in outcomes} == {known_head()}
    # Each says whether it created the catalog; that answer is itself racy (all four may say
    # so: each looked before any had created it), so only "at least one" is asserted.
    assert any(json.loads(o.stdout)["created"] for o in outcomes)
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    assert [v[0] for v in versions] == [known_head()]
    with Catalog.open(pg_url) as catalog:
        assert catalog.hosts_all() == []


async def test_scans_and_group_loads_from_several_hosts_at_once(
    pg_url: str, start_controller, tmp_path: Path
):
    """Two hosts scan at once (each twice), then load one group at once: every command
    succeeds and the catalog holds what one command at a time would have stored."""
    world = await build(tmp_path, start_controller)
    outcomes = await race(
        pg_url,
        ("host", "add", str(world.host_a)),
        ("host", "add", str(world.host_b)),
    )
    assert [o.code for o in outcomes] == [0, 0], outcomes
    scans = await race(pg_url, *[("scan", host, "--json") for host in ("hosta", "hostb")] * 2)
    assert [o.code for o in scans] == [0] * 4, scans
    with Catalog.open(pg_url) as catalog:
        maps = {host: catalog.map_all(host) for host in ("hosta", "hostb")}
    assert len(maps["hosta"]) == 8 + 8 + 4 and len(maps["hostb"]) == 8 + 4
    check = await race(pg_url, ("map", "check", "--json"))
    assert check[0].code == 0, check
    group = tmp_path / "pay.toml"
    group.write_text(
        '[group]\nname = "PAY"\nmode = "sync"\n'
        + "".join(
            f'[[pairs]]\nprimary = "64015:1A00:0A:{n:02X}"\nsecondary = "64017:1C00:0C:{n:02X}"\n'
            for n in range(4)
        )
    )
    assert (await race(pg_url, ("group", "define", str(group))))[0].code == 0
    loads = await race(
        pg_url,
        *[("group", "load", "PAY", "--host", host, "--json") for host in ("hosta", "hostb")] * 2,
    )
    assert [o.code for o in loads] == [0] * 4, loads
    assert [json.loads(o.stdout)["pairs"] for o in loads] == [4] * 4
    with Catalog.open(pg_url) as catalog:
        assert {m.host for m in catalog.group_maps_all("PAY")} == {"hosta", "hostb"}
        for host in ("hosta", "hostb"):
            assert len(catalog.group_map_all("PAY", host)) == 4
