"""work claims: leases on coarse units of work; publication and recovery claims on their rows

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import models.types

revision = '0007'
# 0006 was reserved for a movement-deduplication migration that turned out to need no schema change.
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('work_claim',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
    sa.Column('claimed_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('claimed_until', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('position', schema=None) as batch_op:
        batch_op.add_column(sa.Column('publication_claimed_until', models.types.UTCDateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table('reporting_line', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recovery_claimed_until', models.types.UTCDateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table('payment_attempt', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recovery_claimed_until', models.types.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('payment_attempt', schema=None) as batch_op:
        batch_op.drop_column('recovery_claimed_until')
    with op.batch_alter_table('reporting_line', schema=None) as batch_op:
        batch_op.drop_column('recovery_claimed_until')
    with op.batch_alter_table('position', schema=None) as batch_op:
        batch_op.drop_column('publication_claimed_until')
    op.drop_table('work_claim')
