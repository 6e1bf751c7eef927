# 0002: copy groups record their current direction (issue 14): `reversed` is true after a
# failback, when the defined secondaries are the primaries, so the CLI acts on the pairs the
# way they copy now and can give the primary role back to the defined primaries.
#
# Existing groups are as defined (false).
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "copy_groups",
        sa.Column("reversed", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("copy_groups", "reversed")
