# Every query the catalog runs, by name, as SQLAlchemy Core: one module, both dialects.
#
# Why Core expressions and not `queries.sql` files per dialect (STYLE.md section 6 allows
# either): the statements here are plain enough that SQLAlchemy compiles each one correctly for
# SQLite and for PostgreSQL, so one text serves both and the two can never drift apart. What is
# truly dialect-specific (PRAGMAs, BEGIN IMMEDIATE, advisory locks) lives in `sqlite.py` and
# `postgresql.py`, and nowhere else.
#
# Rules this module keeps:
# - A query is a module-level name with a one-line comment saying what it returns or does,
#   like a `-- name --` block. Parameters are `bindparam`s named in that comment.
# - Queries whose shape depends on the arguments (optional filters, IN lists) are small
#   functions returning a statement, named and described the same way.
# - No statement here reads or writes outside the tables in `schema.py`.
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Delete,
    Dialect,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from remcopy.catalog.records import (
    Group,
    GroupMap,
    GroupMapRow,
    Host,
    MapEntry,
    Operation,
    Pair,
    Record,
    Scan,
    ScanFailure,
)
from remcopy.catalog.schema import (
    copy_groups,
    copy_pairs,
    group_map_rows,
    group_maps,
    hosts,
    map_entries,
    operations,
    scan_failures,
    scans,
)


def _fields_of(record: type[Record], *columns: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    # The columns a query selects to build `record` positionally: exactly its fields, in order.
    names = tuple(column.key for column in columns)
    assert names == record.columns(), f"{record.__name__} is built from {names}"
    return list(columns)


class BulkInsert:
    """An INSERT of many rows, given as tuples in `columns` order, run by the driver's executemany.

    Why not `conn.execute(insert(table), list_of_dicts)`: SQLAlchemy then processes every
    parameter of every row in Python, which for a 10,000-device scan costs three times what the
    database does. The statement is still compiled by SQLAlchemy, for the connection's dialect
    (so it is never SQLite-only SQL); only the per-row processing is skipped. So a BulkInsert
    may only carry values the drivers take as they are: str, int, bool and None, never JSON.
    """

    def __init__(self, table: Table, columns: tuple[str, ...]) -> None:
        self.table = table
        self.columns = columns
        self._compiled: dict[str, tuple[str, list[int] | None]] = {}

    def compiled_for(self, dialect: Dialect) -> tuple[str, list[int] | None]:
        """The SQL text for `dialect`, and for positional paramstyles the order of the columns."""
        known = self._compiled.get(dialect.name)
        if known is None:
            compiled = insert(self.table).compile(dialect=dialect, column_keys=list(self.columns))
            order = None
            if compiled.positional:
                assert compiled.positiontup is not None
                order = [self.columns.index(key) for key in compiled.positiontup]
            known = self._compiled[dialect.name] = (compiled.string, order)
        return known

    def params(self, dialect: Dialect, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """`rows` as the driver's executemany wants them for `dialect`."""
        _, order = self.compiled_for(dialect)
        if order is None:
            return [dict(zip(self.columns, row, strict=True)) for row in rows]
        if order == list(range(len(self.columns))):
            return list(rows)
        return [tuple(row[i] for i in order) for row in rows]


# IN lists are sent in chunks of this many values: PostgreSQL allows 65,535 parameters per
# statement and SQLite 32,766; a chunk stays far from both.
IN_CHUNK: Final = 1000


# -- Hosts --

_HOST = _fields_of(Host, *(hosts.c[name] for name in Host.columns()))

# host_one: the host named :name
HOST_ONE = select(*_HOST).where(hosts.c.name == bindparam("name"))
# hosts_all: every host, by name
HOSTS_ALL = select(*_HOST).order_by(hosts.c.name)
# host_insert: a new host (:name, :definition, :created_ns, :updated_ns)
HOST_INSERT = insert(hosts)
# host_update: host :host's new :definition and :updated_ns (the SET columns come from the
# parameters' names)
HOST_UPDATE = update(hosts).where(hosts.c.name == bindparam("host"))
# host_delete: the host :name, and by cascade its scans and group maps
HOST_DELETE = delete(hosts).where(hosts.c.name == bindparam("name"))


# -- Scans and device maps --

_SCAN = _fields_of(Scan, *(scans.c[name] for name in Scan.columns()))
_MAP_ENTRY = _fields_of(MapEntry, *(map_entries.c[name] for name in MapEntry.columns()))
_SCAN_FAILURE = _fields_of(ScanFailure, *(scan_failures.c[name] for name in ScanFailure.columns()))

# scan_insert: a new map version (:host, :scanned_at_ns, :partial, :entry_count, :failure_count)
SCAN_INSERT = insert(scans)
# map_entry_insert: many rows (scan_id, *MapEntry fields), one per device of a scan
MAP_ENTRY_INSERT = BulkInsert(map_entries, ("scan_id", *MapEntry.columns()))
# scan_failure_insert: many rows (scan_id, *ScanFailure fields), one per device that did not answer
SCAN_FAILURE_INSERT = BulkInsert(scan_failures, ("scan_id", *ScanFailure.columns()))
# scans_all: the scans of host :host, newest first
SCANS_ALL = select(*_SCAN).where(scans.c.host == bindparam("host")).order_by(scans.c.id.desc())
# scan_one: scan :scan_id if it belongs to host :host
SCAN_ONE = select(*_SCAN).where(
    scans.c.id == bindparam("scan_id"), scans.c.host == bindparam("host")
)
# scan_latest_id: the id of host :host's newest scan (NULL if none)
SCAN_LATEST_ID = select(func.max(scans.c.id)).where(scans.c.host == bindparam("host"))
# scan_previous_id: the id of host :host's scan just before :scan_id (NULL if none)
SCAN_PREVIOUS_ID = select(func.max(scans.c.id)).where(
    scans.c.host == bindparam("host"), scans.c.id < bindparam("scan_id")
)
# scans_delete_before: host :host's scans older than scan :scan_id, with their entries
SCANS_DELETE_BEFORE = delete(scans).where(
    scans.c.host == bindparam("host"), scans.c.id < bindparam("scan_id")
)


def scan_nth_newest(host: str, n: int) -> Select[Any]:
    """scan_nth_newest: the id of `host`'s n-th newest scan (1 = the current one), if any."""
    return (
        select(scans.c.id)
        .where(scans.c.host == host)
        .order_by(scans.c.id.desc())
        .offset(n - 1)
        .limit(1)
    )


# Device numbers are stored as written (`1A3F`, or `21A3F` in subchannel set 2): shorter
# first, then as text, is their numeric order (hex digits in upper case, fixed width per set).
# map_all: the entries of scan :scan_id, by device number
MAP_ALL = (
    select(*_MAP_ENTRY)
    .where(map_entries.c.scan_id == bindparam("scan_id"))
    .order_by(func.length(map_entries.c.device_number), map_entries.c.device_number)
)
# failures_all: the failures of scan :scan_id, by device number
FAILURES_ALL = (
    select(*_SCAN_FAILURE)
    .where(scan_failures.c.scan_id == bindparam("scan_id"))
    .order_by(func.length(scan_failures.c.device_number), scan_failures.c.device_number)
)


def map_find(
    scan_id: int, *, volser: str | None, device: str | None, address: str | None
) -> Select[Any]:
    """map_find: the entries of scan `scan_id` matching every filter given, by device number."""
    query = MAP_ALL.params(scan_id=scan_id)
    if volser is not None:
        query = query.where(map_entries.c.volser == volser)
    if device is not None:
        query = query.where(map_entries.c.device_number == device)
    if address is not None:
        query = query.where(map_entries.c.hardware_address == address)
    return query


# -- Cross-host checks: what all hosts' maps show together --
# (Unordered: checks.conflicts_from groups and sorts the rows, the same on every backend.)

# Each host's scans ranked newest first: rank 1 is the current map, rank 2 the previous one.
_ranked_scans = select(
    scans.c.id.label("scan_id"),
    scans.c.host,
    func.row_number().over(partition_by=scans.c.host, order_by=scans.c.id.desc()).label("rank"),
).subquery("ranked_scans")
_current = select(_ranked_scans.c.scan_id, _ranked_scans.c.host).where(_ranked_scans.c.rank == 1)
_current_scans = _current.subquery("current_scans")

# The current map entries of every host, each with its host.
_current_entries = (
    select(_current_scans.c.host, map_entries)
    .join(_current_scans, map_entries.c.scan_id == _current_scans.c.scan_id)
    .subquery("current_entries")
)
_e = _current_entries.c

# volsers_at_two_addresses: volsers that current maps show at more than one hardware address,
# not counting secondaries (they carry their primary's volser by design)
_volsers_at_two_addresses = (
    select(_e.volser)
    .where(_e.role != "secondary")
    .group_by(_e.volser)
    .having(func.count(_e.hardware_address.distinct()) > 1)
)
# volser_sightings: the current, non-secondary entries that carry one of those volsers
VOLSER_SIGHTINGS = select(
    _e.host, _e.scan_id, _e.device_number, _e.hardware_address, _e.volser
).where(_e.role != "secondary", _e.volser.in_(_volsers_at_two_addresses))

# addresses_disagreed: hardware addresses at which current maps show more than one volser
_addresses_disagreed = (
    select(_e.hardware_address)
    .group_by(_e.hardware_address)
    .having(func.count(_e.volser.distinct()) > 1)
)
# address_sightings: the current entries at one of those hardware addresses
ADDRESS_SIGHTINGS = select(
    _e.host, _e.scan_id, _e.device_number, _e.hardware_address, _e.volser
).where(_e.hardware_address.in_(_addresses_disagreed))

# address_changes: device numbers whose hardware address differs between each host's previous
# and current map; one row per change with both sightings
_now = map_entries.alias("now")
_before = map_entries.alias("before")
_current_ranked = _ranked_scans.alias("current_ranked")
_previous_ranked = _ranked_scans.alias("previous_ranked")
ADDRESS_CHANGES = (
    select(
        _current_ranked.c.host,
        _before.c.scan_id.label("before_scan_id"),
        _before.c.hardware_address.label("before_address"),
        _before.c.volser.label("before_volser"),
        _now.c.scan_id,
        _now.c.device_number,
        _now.c.hardware_address,
        _now.c.volser,
    )
    .select_from(_current_ranked)
    .join(
        _previous_ranked,
        (_previous_ranked.c.host == _current_ranked.c.host) & (_previous_ranked.c.rank == 2),
    )
    .join(_now, _now.c.scan_id == _current_ranked.c.scan_id)
    .join(
        _before,
        (_before.c.scan_id == _previous_ranked.c.scan_id)
        & (_before.c.device_number == _now.c.device_number),
    )
    .where(_current_ranked.c.rank == 1, _before.c.hardware_address != _now.c.hardware_address)
)


# -- Operation log --

_OPERATION = _fields_of(Operation, *(operations.c[name] for name in Operation.columns()))

# operation_insert: a log line (:who, :op, :target, :started_ns, :duration_s, :result, :details)
OPERATION_INSERT = insert(operations)
# operation_one: the log line :id
OPERATION_ONE = select(*_OPERATION).where(operations.c.id == bindparam("id"))


def operations_recent(*, limit: int, target: str | None, op: str | None) -> Select[Any]:
    """operations_recent: the newest `limit` log lines, optionally for one target and/or op."""
    query = select(*_OPERATION).order_by(operations.c.id.desc()).limit(limit)
    if target is not None:
        query = query.where(operations.c.target == target)
    if op is not None:
        query = query.where(operations.c.op == op)
    return query


# -- Groups, pairs and group maps --

_pair_counts = (
    select(copy_pairs.c.group_name, func.count().label("pair_count"))
    .group_by(copy_pairs.c.group_name)
    .subquery("pair_counts")
)
_GROUP = _fields_of(
    Group,
    *(copy_groups.c[name] for name in Group.columns()[:-1]),
    func.coalesce(_pair_counts.c.pair_count, 0).label("pair_count"),
)
_PAIR = _fields_of(Pair, *(copy_pairs.c[name] for name in Pair.columns()))
_groups_counted = select(*_GROUP).outerjoin(
    _pair_counts, _pair_counts.c.group_name == copy_groups.c.name
)

# group_one: the group :name with its pair count (counted on the (group_name, position) index
# for this group alone, not aggregated over every group's pairs as groups_all does)
GROUP_ONE = select(
    *_fields_of(
        Group,
        *(copy_groups.c[name] for name in Group.columns()[:-1]),
        select(func.count())
        .where(copy_pairs.c.group_name == copy_groups.c.name)
        .scalar_subquery()
        .label("pair_count"),
    )
).where(copy_groups.c.name == bindparam("name"))
# groups_all: every group with its pair count, by name
GROUPS_ALL = _groups_counted.order_by(copy_groups.c.name)
# group_exists: 1 if the group :name exists
GROUP_EXISTS = select(copy_groups.c.name).where(copy_groups.c.name == bindparam("name"))
# group_insert: a new group (:name, :options, :created_ns, :updated_ns)
GROUP_INSERT = insert(copy_groups)
# group_update: group :group's new :options and :updated_ns
GROUP_UPDATE = update(copy_groups).where(copy_groups.c.name == bindparam("group"))
# group_direction_update: group :group's direction (:reversed) and :updated_ns
GROUP_DIRECTION_UPDATE = (
    update(copy_groups)
    .where(copy_groups.c.name == bindparam("group"))
    .values(reversed=bindparam("reversed"), updated_ns=bindparam("updated_ns"))
)
# group_delete: the group :name, and by cascade its pairs and group maps
GROUP_DELETE = delete(copy_groups).where(copy_groups.c.name == bindparam("name"))
# pairs_all: the pairs of group :group, in definition order
PAIRS_ALL = (
    select(*_PAIR)
    .where(copy_pairs.c.group_name == bindparam("group"))
    .order_by(copy_pairs.c.position)
)
# pair_insert: many rows (group_name, position, *Pair fields), one per pair
PAIR_INSERT = BulkInsert(copy_pairs, ("group_name", "position", *Pair.columns()))
# pair_move: executemany, the pair with primary :address moves to :position
PAIR_MOVE = update(copy_pairs).where(copy_pairs.c.primary_address == bindparam("address"))


# pairs_as_seen: the pairs of :group in definition order, each with the controller and the
# device number scan :scan_id shows at its primary and at its secondary address (NULL where
# that map lacks it). One query on the (scan_id, hardware_address) index, instead of the whole
# map read and indexed in Python. An address a map shows at two device numbers gives a row for
# each, the highest device number last (the caller keeps the last, as MapIndex does).
_primary_entry = map_entries.alias("primary_entry")
_secondary_entry = map_entries.alias("secondary_entry")
PAIRS_AS_SEEN = (
    select(
        copy_pairs.c.primary_address,
        copy_pairs.c.secondary_address,
        copy_pairs.c.volser,
        _primary_entry.c.controller,
        _primary_entry.c.device_number,
        _secondary_entry.c.controller,
        _secondary_entry.c.device_number,
    )
    .select_from(copy_pairs)
    .outerjoin(
        _primary_entry,
        and_(
            _primary_entry.c.scan_id == bindparam("scan_id"),
            _primary_entry.c.hardware_address == copy_pairs.c.primary_address,
        ),
    )
    .outerjoin(
        _secondary_entry,
        and_(
            _secondary_entry.c.scan_id == bindparam("scan_id"),
            _secondary_entry.c.hardware_address == copy_pairs.c.secondary_address,
        ),
    )
    .where(copy_pairs.c.group_name == bindparam("group"))
    .order_by(
        copy_pairs.c.position,
        _primary_entry.c.device_number,
        _secondary_entry.c.device_number,
    )
)


def pairs_delete(primary_addresses: Sequence[str]) -> Delete:
    """pairs_delete: the pairs with these primary addresses (one IN_CHUNK at most)."""
    return delete(copy_pairs).where(copy_pairs.c.primary_address.in_(primary_addresses))


# pairs_elsewhere: the addresses and group of every pair not in group :group. (Read whole
# rather than filtered by an IN list of the definition's addresses: for 10,000 pairs, 20,000
# parameters cost more to send than the rows cost to read.)
PAIRS_ELSEWHERE = select(
    copy_pairs.c.primary_address, copy_pairs.c.secondary_address, copy_pairs.c.group_name
).where(copy_pairs.c.group_name != bindparam("group"))


# group_map_one: when group :group was last loaded for host :host
GROUP_MAP_ONE = select(group_maps).where(
    group_maps.c.group_name == bindparam("group"), group_maps.c.host == bindparam("host")
)
# group_map_delete: the group map of group :group on host :host, and by cascade its rows
GROUP_MAP_DELETE = delete(group_maps).where(
    group_maps.c.group_name == bindparam("group"), group_maps.c.host == bindparam("host")
)
# group_map_insert: a group map's header (:group_name, :host, :loaded_at_ns)
GROUP_MAP_INSERT = insert(group_maps)
# group_map_row_insert: many rows (group_name, host, primary_address, volser, primary_device,
# secondary_device), one per pair
GROUP_MAP_ROW_INSERT = BulkInsert(
    group_map_rows,
    ("group_name", "host", "primary_address", "volser", "primary_device", "secondary_device"),
)
# group_map_rows_all: the rows of group :group's map on host :host, with their pairs'
# addresses, in definition order
_GROUP_MAP_ROW = _fields_of(
    GroupMapRow,
    copy_pairs.c.primary_address,
    copy_pairs.c.secondary_address,
    group_map_rows.c.volser,
    group_map_rows.c.primary_device,
    group_map_rows.c.secondary_device,
)
GROUP_MAP_ROWS_ALL = (
    select(*_GROUP_MAP_ROW)
    .join(copy_pairs, copy_pairs.c.primary_address == group_map_rows.c.primary_address)
    .where(
        group_map_rows.c.group_name == bindparam("group"),
        group_map_rows.c.host == bindparam("host"),
    )
    .order_by(copy_pairs.c.position)
)
# group_maps_all: the hosts group :group was loaded for, with row counts, by host
_row_counts = (
    select(group_map_rows.c.group_name, group_map_rows.c.host, func.count().label("row_count"))
    .group_by(group_map_rows.c.group_name, group_map_rows.c.host)
    .subquery("row_counts")
)
_GROUP_MAP = _fields_of(
    GroupMap,
    group_maps.c.group_name.label("group"),
    group_maps.c.host,
    group_maps.c.loaded_at_ns,
    func.coalesce(_row_counts.c.row_count, 0).label("row_count"),
)
GROUP_MAPS_ALL = (
    select(*_GROUP_MAP)
    .outerjoin(
        _row_counts,
        (_row_counts.c.group_name == group_maps.c.group_name)
        & (_row_counts.c.host == group_maps.c.host),
    )
    .where(group_maps.c.group_name == bindparam("group"))
    .order_by(group_maps.c.host)
)
