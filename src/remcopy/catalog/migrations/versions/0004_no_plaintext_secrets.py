# 0004: the catalog keeps no plaintext secret. Host definitions stored before 0004 may hold
# their host's shared secret inline (`"host": {"name": ..., "secret": "..."}`); from now on a
# definition names its secret file only (`secret_file`, a 0600 file on the machine that runs
# remcopy) and the catalog refuses one with a secret (Catalog.put_host).
#
# This migration removes every inline secret from the stored definitions and says, once per
# host, what the administrator must do: write the secret to a 0600 file (`remcopy secret new
# FILE`, then give the controllers the new secret too, or put the old one in the file) and add
# the host again with `secret_file = "FILE"` (`remcopy host add FILE --replace`). Until then
# the host's commands say the same. The secret cannot be put back by a downgrade: removing it
# is the point.
from __future__ import annotations

import json
import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("remcopy.catalog")


def upgrade() -> None:
    hosts = sa.table("hosts", sa.column("name", sa.String), sa.column("definition", sa.JSON))
    connection = op.get_bind()
    for name, definition in connection.execute(sa.select(hosts.c.name, hosts.c.definition)):
        document = json.loads(definition) if isinstance(definition, str) else definition
        host = document.get("host") if isinstance(document, dict) else None
        if not isinstance(host, dict) or "secret" not in host:
            continue
        del host["secret"]
        connection.execute(hosts.update().where(hosts.c.name == name).values(definition=document))
        log.warning(
            "catalog: host %s: its secret was stored in plaintext and is removed: put it in a "
            "0600 file (remcopy secret new FILE) and add the host again naming it "
            '(secret_file = "FILE", remcopy host add FILE --replace)',
            name,
        )


def downgrade() -> None:
    """Nothing to undo: the removed secrets are not put back."""
