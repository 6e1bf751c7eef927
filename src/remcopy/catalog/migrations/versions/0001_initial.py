# 0001: the initial schema: hosts, device maps (scans, entries, failures), the operation log,
# copy groups, their pairs, and group maps.
#
# Applied by Catalog.open() in the same transaction as any migrations after it. Constraint and
# index names are the ones schema.py's naming convention gives, so later migrations can name them.
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_hosts")),
    )
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("scanned_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("partial", sa.Boolean(), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host"], ["hosts.name"], name=op.f("fk_scans_host_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
    )
    op.create_index(op.f("ix_scans_host_id"), "scans", ["host", "id"])
    op.create_table(
        "map_entries",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("device_number", sa.String(), nullable=False),
        sa.Column("hardware_address", sa.String(), nullable=False),
        sa.Column("volser", sa.String(), nullable=False),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("controller", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_map_entries_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("scan_id", "device_number", name=op.f("pk_map_entries")),
    )
    op.create_table(
        "scan_failures",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("device_number", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"],
            ["scans.id"],
            name=op.f("fk_scan_failures_scan_id_scans"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("scan_id", "device_number", name=op.f("pk_scan_failures")),
    )
    op.create_table(
        "operations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("who", sa.String(), nullable=False),
        sa.Column("op", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("started_ns", sa.BigInteger(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("result", sa.String(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.CheckConstraint("result IN ('ok', 'failed')", name=op.f("ck_operations_result")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operations")),
    )
    op.create_index(op.f("ix_operations_target_id"), "operations", ["target", "id"])
    op.create_index(op.f("ix_operations_op_id"), "operations", ["op", "id"])
    op.create_table(
        "copy_groups",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_copy_groups")),
    )
    op.create_table(
        "copy_pairs",
        sa.Column("primary_address", sa.String(), nullable=False),
        sa.Column("secondary_address", sa.String(), nullable=False),
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("volser", sa.String(), nullable=True),
        sa.Column("mode", sa.String(), nullable=False),
        sa.CheckConstraint(
            "primary_address <> secondary_address", name=op.f("ck_copy_pairs_two_addresses")
        ),
        sa.ForeignKeyConstraint(
            ["group_name"],
            ["copy_groups.name"],
            name=op.f("fk_copy_pairs_group_name_copy_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("primary_address", name=op.f("pk_copy_pairs")),
        sa.UniqueConstraint("secondary_address", name=op.f("uq_copy_pairs_secondary_address")),
    )
    op.create_index(
        op.f("ix_copy_pairs_group_name_position"), "copy_pairs", ["group_name", "position"]
    )
    op.create_table(
        "group_maps",
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("loaded_at_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_name"],
            ["copy_groups.name"],
            name=op.f("fk_group_maps_group_name_copy_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host"], ["hosts.name"], name=op.f("fk_group_maps_host_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("group_name", "host", name=op.f("pk_group_maps")),
    )
    op.create_index(op.f("ix_group_maps_host"), "group_maps", ["host"])
    op.create_table(
        "group_map_rows",
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("primary_address", sa.String(), nullable=False),
        sa.Column("volser", sa.String(), nullable=True),
        sa.Column("primary_device", sa.String(), nullable=True),
        sa.Column("secondary_device", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_name", "host"],
            ["group_maps.group_name", "group_maps.host"],
            name=op.f("fk_group_map_rows_group_name_host_group_maps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["primary_address"],
            ["copy_pairs.primary_address"],
            name=op.f("fk_group_map_rows_primary_address_copy_pairs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "group_name", "host", "primary_address", name=op.f("pk_group_map_rows")
        ),
    )
    op.create_index(
        op.f("ix_group_map_rows_primary_address"), "group_map_rows", ["primary_address"]
    )


def downgrade() -> None:
    for table in (
        "group_map_rows",
        "group_maps",
        "copy_pairs",
        "copy_groups",
        "operations",
        "scan_failures",
        "map_entries",
        "scans",
        "hosts",
    ):
        op.drop_table(table)
