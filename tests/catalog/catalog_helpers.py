# Helpers for the catalog contract suite: the PostgreSQL server handle, the injected clock, and
# builders of plain records with sensible defaults, so a test says only what matters to it.
from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from remcopy.catalog import Catalog, GroupMapRow, MapEntry, Pair

MiB = 1024 * 1024


def address(serial: int, cca: int, *, lss: int = 0x0A, ssid: int = 0x1A00) -> str:
    """A hardware address string, SERIAL:SSID:LSS:CCA."""
    return f"{serial}:{ssid:04X}:{lss:02X}:{cca:02X}"


def entry(
    device: str,
    hardware_address: str,
    volser: str,
    *,
    state: str = "SIMPLEX",
    role: str = "none",
    online: bool = True,
    controller: str = "ctl1",
    capacity_bytes: int = 4 * MiB,
) -> MapEntry:
    return MapEntry(
        device_number=device,
        hardware_address=hardware_address,
        volser=volser,
        capacity_bytes=capacity_bytes,
        state=state,
        role=role,
        online=online,
        controller=controller,
    )


def pair(primary: str, secondary: str, volser: str | None = None, mode: str = "sync") -> Pair:
    return Pair(primary_address=primary, secondary_address=secondary, volser=volser, mode=mode)


def map_row(
    p: Pair, primary_device: str | None, secondary_device: str | None, volser: str | None = None
) -> GroupMapRow:
    return GroupMapRow(
        primary_address=p.primary_address,
        secondary_address=p.secondary_address,
        volser=volser if volser is not None else p.volser,
        primary_device=primary_device,
        secondary_device=secondary_device,
    )


def scanned(catalog: Catalog, host: str, entries: list[MapEntry], at_ns: int = 1) -> int:
    """Store a complete scan of `host` (adding the host if needed); returns the scan id."""
    if host not in {h.name for h in catalog.hosts_all()}:
        catalog.put_host(host, {"name": host}, replace=False)
    return catalog.store_scan(
        host, scanned_at_ns=at_ns, entries=entries, failures=[], partial=False
    )


class FakeClock:
    """An injected clock: every reading is one millisecond after the last."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        self.now_ns += 1_000_000
        return self.now_ns


@dataclass
class PostgreSQLServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 that hands out fresh databases."""

    directory: Path
    port: int
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Create an empty database; returns its URL."""
        name = f"catalog_{next(self._numbers)}"
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database, closing any connection still open to it."""
        name = url.rpartition("/")[2]
        self._admin(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def _admin(self, statement: sql.Composed) -> None:
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(statement)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
