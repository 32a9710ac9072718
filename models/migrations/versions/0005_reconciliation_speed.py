"""reconciliation speed: one riconciliazione per movement (unique index), labels without a movement foreign key

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 00:20:00.000000

``reconcile`` upserts a movement's riconciliazione on ``movement_id`` and the API Ragioneria adopts the row of
a journal movement, so a movement has at most one. Before the index, a race between the two could leave a
second row: the derived ones (``TES-<movement>``, no request hash, rewritten by every run) are dropped in
favour of the API's row or of the oldest; two rows posted through the API for one movement stop the upgrade.

``transfer_label.movement_id`` loses its foreign key: labels are recomputed from existing movements by every
run, and the check per label written was a third of the cost of writing a large EC's labels.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_NAMES = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    op.execute(
        "DELETE FROM reconciliation WHERE request_hash IS NULL AND movement_id IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM reconciliation other WHERE other.movement_id = reconciliation.movement_id "
        "AND other.id <> reconciliation.id AND (other.request_hash IS NOT NULL OR other.id < reconciliation.id))"
    )
    twice = op.get_bind().execute(sa.text(
        "SELECT movement_id FROM reconciliation WHERE movement_id IS NOT NULL "
        "GROUP BY movement_id HAVING count(*) > 1 ORDER BY movement_id"
    )).scalars().all()
    if twice:
        raise RuntimeError(
            "reconciliation: movements with more than one riconciliazione posted through the API Ragioneria "
            f"(movement_id {', '.join(map(str, twice[:20]))}{' …' if len(twice) > 20 else ''}): keep one each, "
            "then upgrade again"
        )
    with op.batch_alter_table('reconciliation', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciliation_movement_id')
        batch_op.create_index('ix_reconciliation_movement_id', ['movement_id'], unique=True)
    # 0001 left the foreign key unnamed: PostgreSQL named it so, SQLite's copy gets the name from the convention
    with op.batch_alter_table('transfer_label', schema=None, naming_convention=_NAMES) as batch_op:
        batch_op.drop_constraint('transfer_label_movement_id_fkey', type_='foreignkey')


def downgrade() -> None:
    with op.batch_alter_table('transfer_label', schema=None) as batch_op:
        batch_op.create_foreign_key('transfer_label_movement_id_fkey', 'treasury_movement', ['movement_id'], ['id'])
    with op.batch_alter_table('reconciliation', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciliation_movement_id')
        batch_op.create_index('ix_reconciliation_movement_id', ['movement_id'], unique=False)
