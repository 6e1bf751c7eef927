# The Catalog: where the management layer keeps what it learned.
#
# Theory of operation: the controllers hold the truth about volumes and pair states; the catalog
# caches what scans and loads found (hosts' device maps, group maps) and records what was done
# (the operation log), so that commands need not ask every controller again, and so that
# problems no single host can see (the same volser at two addresses) show up when all hosts'
# maps sit side by side. It is an SQLite file by default, a PostgreSQL database for a complex of
# several hosts; the same contract suite runs on both.
#
# Rules this module keeps:
# - Every write is one transaction (`_writing`): a write that fails, for any reason, changes
#   nothing. Writes are serialized (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL),
#   so the checks a write makes still hold when it commits.
# - Every read is one transaction too (`_reading`), so a read of several statements sees one
#   snapshot.
# - Methods are named for their result: `_one` returns one record or raises a typed NotFound,
#   `_all` returns a list (empty when nothing matches); writes are verbs.
# - The queries are in `queries.py`, the judgements in `checks.py`; this module fetches,
#   decides with those, writes, and turns database errors into typed errors.
# - `Catalog.open(url)` migrates the database to the newest schema before returning.
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from remcopy.catalog import checks
from remcopy.catalog import queries as q
from remcopy.catalog.backend import Backend, backend_for, catalog_url, shown_url
from remcopy.catalog.errors import (
    CatalogError,
    CatalogInputError,
    CatalogNotFound,
    CatalogUnavailable,
    DuplicateDevice,
    GroupExists,
    GroupMapMismatch,
    GroupMapNotFound,
    GroupNotFound,
    HostExists,
    HostNotFound,
    OperationNotFound,
    PairConflict,
    ScanNotFound,
)
from remcopy.catalog.migrate import known_head, stamped_revision, upgrade_to_head
from remcopy.catalog.records import (
    Group,
    GroupMap,
    GroupMapRow,
    Host,
    MapConflict,
    MapDiff,
    MapEntry,
    Operation,
    OperationResult,
    Pair,
    Scan,
    ScanFailure,
)


class Catalog:
    """The catalog database: hosts, device maps, the operation log, groups and group maps."""

    def __init__(
        self, engine: Engine, backend: Backend, url: URL, clock_ns: Callable[[], int]
    ) -> None:
        # Use Catalog.open(): it also migrates the database.
        self._engine = engine
        self._backend = backend
        self._url = url
        self._clock_ns = clock_ns

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        *,
        create: bool = True,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> Catalog:
        """Open the catalog at a path or URL, creating or migrating its schema as needed.

        With `create=False` nothing is created: a missing SQLite file (or its folder), or a
        database without a catalog's schema, is CatalogNotFound, and the file system and the
        database are left as they were. An existing catalog is still migrated to this
        remcopy's schema. `clock_ns` stamps created/updated times; tests inject their own.
        """
        url = catalog_url(location)
        backend = backend_for(url)
        if not create and backend.name == "sqlite":
            # Checked before the engine exists: making it creates the folder, and SQLite's
            # first connection creates the file.
            path = url.database or ""
            in_memory = path in ("", ":memory:") or path.startswith("file:")  # engine_for refuses
            if not in_memory and not os.path.isfile(path):
                why = "not a file" if os.path.exists(path) else "no such file"
                raise CatalogNotFound(path, why)
        catalog = cls(backend.engine_for(url), backend, url, clock_ns)
        try:
            with catalog._reading() as conn:
                stamped = stamped_revision(conn)
            if stamped is None and not create:
                raise CatalogNotFound(catalog.url, "the database holds no catalog schema")
            if stamped != known_head():
                # Only a catalog to create or migrate takes the write lock: one at the head is
                # opened by a read, which never waits behind another process's write.
                with catalog._writing() as conn:
                    upgrade_to_head(conn)
        except BaseException:
            catalog.close()
            raise
        return catalog

    @property
    def url(self) -> str:
        """The catalog's URL, without its password."""
        return shown_url(self._url)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Close every connection; the Catalog cannot be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Transactions: one per read, one per write, database errors made typed.

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._translated(), self._engine.connect() as conn:
            if self._backend.write_options:
                conn.execution_options(**self._backend.write_options)
            with conn.begin():
                self._backend.write_begun(conn)
                yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._translated(), self._engine.connect() as conn:
            if self._backend.read_options:
                conn.execution_options(**self._backend.read_options)
            with conn.begin():
                yield conn

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise CatalogError(f"catalog: the database refused the write: {_reason(exc)}") from exc
        except (OperationalError, InterfaceError) as exc:
            raise CatalogUnavailable(
                f"catalog: database unavailable: url={self.url}: {_reason(exc)}"
            ) from exc
        except DBAPIError as exc:
            raise CatalogError(f"catalog: database error: url={self.url}: {_reason(exc)}") from exc

    def _insert_many(
        self, conn: Connection, bulk: q.BulkInsert, rows: list[tuple[Any, ...]]
    ) -> None:
        if rows:
            self._backend.insert_many(conn, bulk, rows)

    def _host_required(self, conn: Connection, host: str) -> None:
        if conn.execute(q.HOST_ONE, {"name": host}).first() is None:
            raise HostNotFound(host)

    def _group_required(self, conn: Connection, group: str) -> None:
        if conn.execute(q.GROUP_EXISTS, {"name": group}).first() is None:
            raise GroupNotFound(group)

    # Hosts.

    def put_host(self, name: str, definition: Mapping[str, Any], *, replace: bool) -> Host:
        """Store a host's I/O definition (as JSON); with `replace`, overwrite an existing one.
        A definition holding a secret is refused: the catalog keeps no plaintext secret (a
        definition names its 0600 secret file, `secret_file`)."""
        host = definition.get("host")
        if isinstance(host, Mapping) and "secret" in host:
            raise CatalogInputError(
                f"catalog: host {name}: the catalog keeps no plaintext secret: write it to a "
                "0600 file (`remcopy secret new FILE`) and name that file in the host "
                'definition (secret_file = "FILE") instead of secret = "..."'
            )
        stored = _json_checked(definition, "host definition")
        now_ns = self._clock_ns()
        with self._writing() as conn:
            existing = conn.execute(q.HOST_ONE, {"name": name}).first()
            if existing is not None and not replace:
                raise HostExists(name)
            if existing is None:
                conn.execute(
                    q.HOST_INSERT,
                    {
                        "name": name,
                        "definition": stored,
                        "created_ns": now_ns,
                        "updated_ns": now_ns,
                    },
                )
            else:
                conn.execute(
                    q.HOST_UPDATE, {"host": name, "definition": stored, "updated_ns": now_ns}
                )
            return Host.from_row(conn.execute(q.HOST_ONE, {"name": name}).one())

    def host_one(self, name: str) -> Host:
        """The host `name`; HostNotFound if there is none."""
        with self._reading() as conn:
            row = conn.execute(q.HOST_ONE, {"name": name}).first()
        if row is None:
            raise HostNotFound(name)
        return Host.from_row(row)

    def hosts_all(self) -> list[Host]:
        """Every host, by name."""
        with self._reading() as conn:
            hosts = [Host.from_row(row) for row in conn.execute(q.HOSTS_ALL)]
        return sorted(hosts, key=lambda host: host.name)  # code point order on every backend

    def remove_host(self, name: str) -> None:
        """Remove a host with its scans and group maps; HostNotFound if there is none."""
        with self._writing() as conn:
            if conn.execute(q.HOST_DELETE, {"name": name}).rowcount == 0:
                raise HostNotFound(name)

    # Device maps: each scan stores a new version; older versions stay for diffs.

    def store_scan(
        self,
        host: str,
        *,
        scanned_at_ns: int,
        entries: Sequence[MapEntry],
        failures: Sequence[ScanFailure],
        partial: bool,
    ) -> int:
        """Store a scan of `host` as its new current map, in one transaction; returns the scan id.

        A device number listed twice (in entries, in failures, or in both) is DuplicateDevice,
        and nothing is stored. (The database's keys catch the first two; the error names them.)
        """
        in_both = {e.device_number for e in entries} & {f.device_number for f in failures}
        if in_both:
            raise DuplicateDevice(host, sorted(in_both))
        with self._writing() as conn:
            self._host_required(conn, host)
            scan = {
                "host": host,
                "scanned_at_ns": scanned_at_ns,
                "partial": partial,
                "entry_count": len(entries),
                "failure_count": len(failures),
            }
            primary_key = conn.execute(q.SCAN_INSERT, scan).inserted_primary_key
            assert primary_key is not None
            scan_id: int = primary_key[0]
            try:
                self._insert_many(
                    conn, q.MAP_ENTRY_INSERT, [_entry_row(scan_id, e) for e in entries]
                )
                self._insert_many(
                    conn,
                    q.SCAN_FAILURE_INSERT,
                    [(scan_id, f.device_number, f.reason) for f in failures],
                )
            except IntegrityError:
                twice = checks.duplicates(e.device_number for e in entries)
                twice += checks.duplicates(f.device_number for f in failures)
                if twice:
                    raise DuplicateDevice(host, sorted(set(twice))) from None
                raise
        return scan_id

    def scans_all(self, host: str) -> list[Scan]:
        """The scans stored for `host`, newest first; HostNotFound for an unknown host."""
        with self._reading() as conn:
            rows = conn.execute(q.SCANS_ALL, {"host": host}).all()
            if not rows:
                self._host_required(conn, host)
        return [Scan.from_row(row) for row in rows]

    def map_all(self, host: str, *, scan_id: int | None = None) -> list[MapEntry]:
        """The device map of `host` by device number: the current one, or scan `scan_id`'s."""
        with self._reading() as conn:
            scan_id = self._scan_id(conn, host, scan_id)
            return [MapEntry.from_row(row) for row in conn.execute(q.MAP_ALL, {"scan_id": scan_id})]

    def failures_all(self, host: str, *, scan_id: int | None = None) -> list[ScanFailure]:
        """The devices the current scan of `host` (or scan `scan_id`) could not map, and why."""
        with self._reading() as conn:
            scan_id = self._scan_id(conn, host, scan_id)
            rows = conn.execute(q.FAILURES_ALL, {"scan_id": scan_id})
            return [ScanFailure.from_row(row) for row in rows]

    def map_find_all(
        self,
        host: str,
        *,
        volser: str | None = None,
        device: str | None = None,
        address: str | None = None,
    ) -> list[MapEntry]:
        """The entries of `host`'s current map matching every filter given (all of them if none)."""
        with self._reading() as conn:
            scan_id = self._scan_id(conn, host, None)
            query = q.map_find(scan_id, volser=volser, device=device, address=address)
            return [MapEntry.from_row(row) for row in conn.execute(query)]

    def map_diff(self, host: str, *, scan_id: int | None = None) -> MapDiff:
        """What changed in `host`'s map from the scan before to the current scan (or `scan_id`)."""
        with self._reading() as conn:
            scan_id = self._scan_id(conn, host, scan_id)
            previous_id = conn.execute(q.SCAN_PREVIOUS_ID, {"host": host, "scan_id": scan_id})
            previous_scan_id: int | None = previous_id.scalar()
            current = [MapEntry.from_row(r) for r in conn.execute(q.MAP_ALL, {"scan_id": scan_id})]
            previous = []
            if previous_scan_id is not None:
                rows = conn.execute(q.MAP_ALL, {"scan_id": previous_scan_id})
                previous = [MapEntry.from_row(row) for row in rows]
            failures = conn.execute(q.FAILURES_ALL, {"scan_id": scan_id})
            failed = [ScanFailure.from_row(row) for row in failures]
        return checks.diff_maps(host, scan_id, previous_scan_id, current, previous, failed)

    def map_check_all(self) -> list[MapConflict]:
        """What all hosts' current maps, taken together, disagree about (see MapConflict)."""
        with self._reading() as conn:
            return checks.conflicts_from(
                conn.execute(q.VOLSER_SIGHTINGS).mappings(),
                conn.execute(q.ADDRESS_CHANGES).mappings(),
                conn.execute(q.ADDRESS_SIGHTINGS).mappings(),
            )

    def prune_scans(self, host: str, *, keep: int) -> int:
        """Remove all but the newest `keep` scans of `host`; returns how many were removed."""
        if keep < 1:
            raise CatalogInputError(f"catalog: keep must be >= 1: keep={keep}")
        with self._writing() as conn:
            self._host_required(conn, host)
            oldest_kept: int | None = conn.execute(q.scan_nth_newest(host, keep)).scalar()
            if oldest_kept is None:
                return 0
            removed = conn.execute(q.SCANS_DELETE_BEFORE, {"host": host, "scan_id": oldest_kept})
            return removed.rowcount

    def _scan_id(self, conn: Connection, host: str, scan_id: int | None) -> int:
        if scan_id is None:
            latest: int | None = conn.execute(q.SCAN_LATEST_ID, {"host": host}).scalar()
            if latest is not None:
                return latest
        elif conn.execute(q.SCAN_ONE, {"host": host, "scan_id": scan_id}).first() is not None:
            return scan_id
        self._host_required(conn, host)
        raise ScanNotFound(host, scan_id)

    # The operation log.

    def log_operation(
        self,
        *,
        who: str,
        op: str,
        target: str,
        started_ns: int,
        duration_s: float,
        result: OperationResult,
        details: Mapping[str, Any],
    ) -> int:
        """Record an operation; returns its id. `details` is any JSON (e.g. a suspend record)."""
        if result not in ("ok", "failed"):
            raise CatalogInputError(f"catalog: result must be ok or failed: result={result!r}")
        row = {
            "who": who,
            "op": op,
            "target": target,
            "started_ns": started_ns,
            "duration_s": duration_s,
            "result": result,
            "details": _json_checked(details, "operation details"),
        }
        with self._writing() as conn:
            primary_key = conn.execute(q.OPERATION_INSERT, row).inserted_primary_key
        assert primary_key is not None
        operation_id: int = primary_key[0]
        return operation_id

    def operation_one(self, operation_id: int) -> Operation:
        """The logged operation `operation_id`; OperationNotFound if there is none."""
        with self._reading() as conn:
            row = conn.execute(q.OPERATION_ONE, {"id": operation_id}).first()
        if row is None:
            raise OperationNotFound(operation_id)
        return Operation.from_row(row)

    def operations_all(
        self, *, limit: int, target: str | None = None, op: str | None = None
    ) -> list[Operation]:
        """The newest `limit` operations, newest first, optionally for one target and/or op."""
        if limit < 1:
            raise CatalogInputError(f"catalog: limit must be >= 1: limit={limit}")
        with self._reading() as conn:
            rows = conn.execute(q.operations_recent(limit=limit, target=target, op=op))
            return [Operation.from_row(row) for row in rows]

    # Groups, their pairs, and group maps.

    def put_group(
        self, name: str, options: Mapping[str, Any], pairs: Sequence[Pair], *, replace: bool
    ) -> Group:
        """Store a group and its pairs, all or nothing; with `replace`, redefine an existing one.

        Refused whole with PairConflict, naming every bad address, when an address is used
        twice in `pairs` or by a pair of another group. On replace, unchanged pairs keep their
        group map rows; changed and removed pairs lose theirs.
        """
        stored_options = _json_checked(options, "group options")
        problems = checks.definition_problems(pairs)
        if problems:
            raise PairConflict(name, problems)
        now_ns = self._clock_ns()
        with self._writing() as conn:
            exists = conn.execute(q.GROUP_EXISTS, {"name": name}).first() is not None
            if exists and not replace:
                raise GroupExists(name)
            taken = conn.execute(q.PAIRS_ELSEWHERE, {"group": name}).mappings()
            problems = checks.elsewhere_problems(pairs, taken)
            if problems:
                raise PairConflict(name, problems)
            values = {"options": stored_options, "updated_ns": now_ns}
            if exists:
                conn.execute(q.GROUP_UPDATE, {"group": name, **values})
            else:
                conn.execute(q.GROUP_INSERT, {"name": name, "created_ns": now_ns, **values})
            old = [Pair.from_row(row) for row in conn.execute(q.PAIRS_ALL, {"group": name})]
            delete, insert, move = checks.pair_changes(old, pairs)
            for chunk in _chunks(delete, q.IN_CHUNK):
                conn.execute(q.pairs_delete(chunk))
            self._insert_many(
                conn, q.PAIR_INSERT, [_pair_row(name, at, pair) for at, pair in insert]
            )
            if move:
                conn.execute(q.PAIR_MOVE, [{"address": a, "position": at} for at, a in move])
            return Group.from_row(conn.execute(q.GROUP_ONE, {"name": name}).one())

    def group_one(self, name: str) -> Group:
        """The group `name` with its pair count; GroupNotFound if there is none."""
        with self._reading() as conn:
            row = conn.execute(q.GROUP_ONE, {"name": name}).first()
        if row is None:
            raise GroupNotFound(name)
        return Group.from_row(row)

    def set_group_direction(self, name: str, *, reversed: bool) -> Group:
        """Record group `name`'s direction: reversed (after a failback) or as defined (after
        the primary role went home); GroupNotFound if there is none."""
        with self._writing() as conn:
            values = {"group": name, "reversed": reversed, "updated_ns": self._clock_ns()}
            if conn.execute(q.GROUP_DIRECTION_UPDATE, values).rowcount == 0:
                raise GroupNotFound(name)
            return Group.from_row(conn.execute(q.GROUP_ONE, {"name": name}).one())

    def groups_all(self) -> list[Group]:
        """Every group with its pair count, by name."""
        with self._reading() as conn:
            groups = [Group.from_row(row) for row in conn.execute(q.GROUPS_ALL)]
        return sorted(groups, key=lambda group: group.name)  # code point order on every backend

    def pairs_as_seen(
        self, group: str, host: str
    ) -> list[tuple[str, str, str, str | None, str | None, str | None, str | None]]:
        """The pairs of `group` in definition order as `host`'s current map shows them:
        (primary address, secondary address, volser, primary controller, primary device
        number, secondary controller, secondary device number), None where the map lacks the
        address. GroupNotFound / ScanNotFound when there is no such group / map."""
        with self._reading() as conn:
            scan_id = self._scan_id(conn, host, None)
            rows = conn.execute(q.PAIRS_AS_SEEN, {"group": group, "scan_id": scan_id}).all()
            if not rows:
                self._group_required(conn, group)
        # One row per pair: an address seen at two device numbers keeps the last (highest).
        seen = {row[0]: tuple(row) for row in rows}
        return list(seen.values())

    def pairs_all(self, group: str) -> list[Pair]:
        """The pairs of `group` in definition order; GroupNotFound if there is no such group."""
        with self._reading() as conn:
            rows = conn.execute(q.PAIRS_ALL, {"group": group}).all()
            if not rows:
                self._group_required(conn, group)
        return [Pair.from_row(row) for row in rows]

    def remove_group(self, name: str) -> None:
        """Remove a group with its pairs and group maps; GroupNotFound if there is none."""
        with self._writing() as conn:
            if conn.execute(q.GROUP_DELETE, {"name": name}).rowcount == 0:
                raise GroupNotFound(name)

    def store_group_map(
        self, group: str, host: str, rows: Sequence[GroupMapRow], *, loaded_at_ns: int
    ) -> None:
        """Store the group map of `group` on `host`: one row per pair, replacing the last one.

        Refused whole with GroupMapMismatch, naming every bad row, unless `rows` has exactly
        one row per pair of the group with the pair's addresses.
        """
        with self._writing() as conn:
            self._group_required(conn, group)
            self._host_required(conn, host)
            pairs = [Pair.from_row(row) for row in conn.execute(q.PAIRS_ALL, {"group": group})]
            problems = checks.group_map_problems(pairs, rows)
            if problems:
                raise GroupMapMismatch(group, host, problems)
            conn.execute(q.GROUP_MAP_DELETE, {"group": group, "host": host})
            conn.execute(
                q.GROUP_MAP_INSERT,
                {"group_name": group, "host": host, "loaded_at_ns": loaded_at_ns},
            )
            self._insert_many(
                conn, q.GROUP_MAP_ROW_INSERT, [_group_map_row(group, host, r) for r in rows]
            )

    def group_map_all(self, group: str, host: str) -> list[GroupMapRow]:
        """The group map of `group` on `host`, in definition order.

        Pairs added to the group since it was last loaded for `host` have no row yet.
        GroupMapNotFound if the group was never loaded for that host.
        """
        with self._reading() as conn:
            if conn.execute(q.GROUP_MAP_ONE, {"group": group, "host": host}).first() is None:
                self._group_required(conn, group)
                self._host_required(conn, host)
                raise GroupMapNotFound(group, host)
            rows = conn.execute(q.GROUP_MAP_ROWS_ALL, {"group": group, "host": host})
            return [GroupMapRow.from_row(row) for row in rows]

    def group_maps_all(self, group: str) -> list[GroupMap]:
        """The hosts `group` was loaded for, when, and how many rows each map has, by host."""
        with self._reading() as conn:
            rows = conn.execute(q.GROUP_MAPS_ALL, {"group": group}).all()
            if not rows:
                self._group_required(conn, group)
        return sorted((GroupMap.from_row(row) for row in rows), key=lambda m: m.host)


def _json_checked(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    # Store what JSON can hold and PostgreSQL accepts (no NaN), and hand back what reads will
    # return, so a stored record and a read one compare equal.
    try:
        loaded: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CatalogInputError(f"catalog: {what} is not storable as JSON: {exc}") from None
    return loaded


def _entry_row(scan_id: int, e: MapEntry) -> tuple[Any, ...]:
    return (
        scan_id,
        e.device_number,
        e.hardware_address,
        e.volser,
        e.capacity_bytes,
        e.state,
        e.role,
        bool(e.online),
        e.controller,
    )


def _pair_row(group: str, position: int, pair: Pair) -> tuple[Any, ...]:
    return (
        group,
        position,
        pair.primary_address,
        pair.secondary_address,
        pair.volser,
        pair.mode,
    )


def _group_map_row(group: str, host: str, row: GroupMapRow) -> tuple[Any, ...]:
    return (
        group,
        host,
        row.primary_address,
        row.volser,
        row.primary_device,
        row.secondary_device,
    )


def _chunks(values: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _reason(exc: DBAPIError) -> str:
    # The driver's own message, first line only: the rest is SQL and parameters.
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
