# The catalog's one schema, as SQLAlchemy Core tables: the model the migrations must produce.
#
# Why one schema for SQLite and PostgreSQL: the contract suite runs the same tests on both, and
# the migration test diffs the migrated database against these tables on both. So the types are
# the portable ones: `String` without a length (VARCHAR on PostgreSQL, TEXT affinity on
# SQLite: a too-long value must not fail on one backend and pass on the other), `BigInteger`
# for nanosecond times, `JSON` for definitions, options and operation details.
#
# Rules this module keeps:
# - A change here needs a new numbered migration in `migrations/versions/`; the migration test
#   fails until the two agree.
# - Constraints have names from the naming convention, so migrations can refer to them.
# - Integrity lives in the database where it can: a device number appears once per scan (primary
#   key), an address belongs to at most one pair as primary and one as secondary (unique keys),
#   and removing a host or group removes what hangs off it (ON DELETE CASCADE). The catalog
#   translates the violations into typed errors.
# - Foreign keys used by a cascade are indexed, or PostgreSQL scans the child table per row.
from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    false,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Hosts and their device maps (issue 5). A scan is one map version; entries and failures
# belong to exactly one scan, so older versions stay readable and diffable.

hosts = Table(
    "hosts",
    metadata,
    Column("name", String, primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
)

scans = Table(
    "scans",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String, ForeignKey("hosts.name", ondelete="CASCADE"), nullable=False),
    Column("scanned_at_ns", BigInteger, nullable=False),
    Column("partial", Boolean, nullable=False),
    Column("entry_count", Integer, nullable=False),
    Column("failure_count", Integer, nullable=False),
    Index(None, "host", "id"),
)

map_entries = Table(
    "map_entries",
    metadata,
    Column("scan_id", Integer, ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
    Column("device_number", String, nullable=False),
    Column("hardware_address", String, nullable=False),
    Column("volser", String, nullable=False),
    Column("capacity_bytes", BigInteger, nullable=False),
    Column("state", String, nullable=False),
    Column("role", String, nullable=False),
    Column("online", Boolean, nullable=False),
    Column("controller", String, nullable=False),
    PrimaryKeyConstraint("scan_id", "device_number"),
    # A group's pairs joined with a host's map by address (queries.PAIRS_AS_SEEN; 0003).
    Index(None, "scan_id", "hardware_address"),
)

scan_failures = Table(
    "scan_failures",
    metadata,
    Column("scan_id", Integer, ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
    Column("device_number", String, nullable=False),
    Column("reason", String, nullable=False),
    PrimaryKeyConstraint("scan_id", "device_number"),
)


# The operation log: who did what, when, how long, and how it ended. `details` holds whatever
# the operation wants kept, e.g. a group suspend's record (T, margin, per-pair states).

operations = Table(
    "operations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("who", String, nullable=False),
    Column("op", String, nullable=False),
    Column("target", String, nullable=False),
    Column("started_ns", BigInteger, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("result", String, nullable=False),
    Column("details", JSON, nullable=False),
    CheckConstraint("result IN ('ok', 'failed')", name="result"),
    Index(None, "target", "id"),
    Index(None, "op", "id"),
)


# Copy groups, their pairs, and group maps (issue 6). A pair is keyed by its primary address;
# its secondary address is unique too, so no address is in two pairs as the same end. (An
# address that is one group's primary and another's secondary is refused by the catalog.)
# `position` keeps the definition's order. A group map row exists per (group, host, pair)
# once loaded; it goes away with its pair, its group or its host.

copy_groups = Table(
    "copy_groups",
    metadata,
    Column("name", String, primary_key=True),
    Column("options", JSON, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    # True after a failback: the defined secondaries are the primaries (migration 0002).
    Column("reversed", Boolean, nullable=False, default=False, server_default=false()),
)

copy_pairs = Table(
    "copy_pairs",
    metadata,
    Column("primary_address", String, primary_key=True),
    Column("secondary_address", String, nullable=False, unique=True),
    Column(
        "group_name", String, ForeignKey("copy_groups.name", ondelete="CASCADE"), nullable=False
    ),
    Column("position", Integer, nullable=False),
    Column("volser", String, nullable=True),
    Column("mode", String, nullable=False),
    CheckConstraint("primary_address <> secondary_address", name="two_addresses"),
    Index(None, "group_name", "position"),
)

group_maps = Table(
    "group_maps",
    metadata,
    Column(
        "group_name", String, ForeignKey("copy_groups.name", ondelete="CASCADE"), nullable=False
    ),
    Column("host", String, ForeignKey("hosts.name", ondelete="CASCADE"), nullable=False),
    Column("loaded_at_ns", BigInteger, nullable=False),
    PrimaryKeyConstraint("group_name", "host"),
    Index(None, "host"),
)

group_map_rows = Table(
    "group_map_rows",
    metadata,
    Column("group_name", String, nullable=False),
    Column("host", String, nullable=False),
    Column(
        "primary_address",
        String,
        ForeignKey("copy_pairs.primary_address", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("volser", String, nullable=True),
    Column("primary_device", String, nullable=True),
    Column("secondary_device", String, nullable=True),
    PrimaryKeyConstraint("group_name", "host", "primary_address"),
    ForeignKeyConstraint(
        ["group_name", "host"], ["group_maps.group_name", "group_maps.host"], ondelete="CASCADE"
    ),
    Index(None, "primary_address"),
)
