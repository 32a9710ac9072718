"""operator console: the audit trail of operator actions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import models.types

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('operator_action',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', models.types.UTCDateTime(), nullable=False),
    sa.Column('username', sqlmodel.sql.sqltypes.AutoString(length=140), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('entity_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('id_dominio', sqlmodel.sql.sqltypes.AutoString(length=11), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('before', models.types.JSONText(), nullable=True),
    sa.Column('after', models.types.JSONText(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('operator_action', schema=None) as batch_op:
        batch_op.create_index('ix_operator_action_at', ['at'], unique=False)
        batch_op.create_index('ix_operator_action_ec', ['id_dominio', 'at'], unique=False)
        batch_op.create_index('ix_operator_action_subject', ['entity', 'entity_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_operator_action_username'), ['username'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('operator_action', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_operator_action_username'))
        batch_op.drop_index('ix_operator_action_subject')
        batch_op.drop_index('ix_operator_action_ec')
        batch_op.drop_index('ix_operator_action_at')

    op.drop_table('operator_action')
