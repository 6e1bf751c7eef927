# ${message}
#
# Migration ${up_revision}, written ${create_date}; it revises ${repr(down_revision)}.
# Applied by Catalog.open() in the same transaction as the migrations before and after it.
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
