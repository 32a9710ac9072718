"""reconciliation write cost: fewer indexes on position, collection and transfer_label; room for HOT updates

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 13:00:00.000000

Reconciliation turns hundreds of thousands of collections INCASSATA and their positions INCASSATA in one run.
On PostgreSQL every updated row costs an entry in each index of its table, unless the update is HOT (no
indexed column changes and the new version fits in the same page). Measured on ``bench/reconcile.py`` (1M
receipts), index upkeep was most of the first run: 11 indexes on ``position``, 8 on ``collection``.

* ``ix_position_state`` goes: ``state`` alone has five values, every query that filters on it also names the
  EC, and indexing it made every change of state (paid, cashed) touch all eleven indexes. Without it, and
  with free space in the page, the cashing update of a position stays in its page and touches none.
  ``ix_position_iupd``, ``ix_position_updated_at`` and ``ix_position_due_date`` go too: no query looks
  positions up by the first two, and the third served only the EC's list of expired positions, which
  filters on the EC first. Two indexes become partial, so a position outside them has no entry to rewrite:
  the publication queue (``publication_state`` PENDING or FAILED: a published position leaves it) and
  the document index (only positions that belong to a document).
* ``ix_collection_state`` (EC, state) and ``ix_collection_movement_id`` go for the same reason: cashing sets
  both columns. The collections a movement cashed are found through the flow's lines or the IUV instead
  (``store.reconciliation.cashed_by``). ``ix_collection_receipt_pk`` goes because ``uq_collection_receipt``
  (receipt_pk, transfer_index) already serves lookups by receipt.
* ``collection.movement_id`` loses its foreign key, as ``transfer_label.movement_id`` did in 0005: the check
  ran once per cashed collection and locked the movement row each time (``FOR KEY SHARE``, 49 times per
  movement in the benchmark), and deleting a movement (an API copy joined to the journal's) scanned the
  collections. Reconciliation writes it, and ``store.movement_dedupe`` moves it before deleting a movement.
* ``transfer_label``: ``subject_key`` becomes an integer (every subject is a row id): the unique index then
  grows at its right edge as labels are written in id order, where text keys ('10' before '9') sent each
  insert to another leaf (1M labels: 6.8 s as text, 3.9 s as integers). ``uq_transfer_label`` becomes
  (EC, label, subject, subject key), which also serves every lookup ``ix_transfer_label`` (EC, label)
  served, so that index goes: a label written maintains two indexes instead of three.
* ``fillfactor`` 70 on position and collection (PostgreSQL only; SQLite has no such notion) leaves room in each page for
  the next version of its rows. It applies to pages written from now on; ``VACUUM FULL position`` (or
  ``pg_repack``) rewrites existing ones during a quiet window.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

FILLFACTOR = 70
_NAMES = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}
_QUEUED = sa.text("publication_state IN ('PENDING', 'FAILED')")
_DOCUMENTED = sa.text("document_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table('position', schema=None) as batch_op:
        batch_op.drop_index('ix_position_state')
        batch_op.drop_index('ix_position_iupd')
        batch_op.drop_index('ix_position_updated_at')
        batch_op.drop_index('ix_position_due_date')
        batch_op.drop_index('ix_position_publication')
        batch_op.create_index('ix_position_publication_queue', ['publication_state', 'id'], unique=False,
                              postgresql_where=_QUEUED, sqlite_where=_QUEUED)
        batch_op.drop_index('ix_position_document')
        batch_op.create_index('ix_position_document', ['id_dominio', 'document_id'], unique=False,
                              postgresql_where=_DOCUMENTED, sqlite_where=_DOCUMENTED)
    # 0001 left the foreign key unnamed: PostgreSQL named it so, SQLite's copy gets the name from the convention
    with op.batch_alter_table('collection', schema=None, naming_convention=_NAMES) as batch_op:
        batch_op.drop_constraint('collection_movement_id_fkey', type_='foreignkey')
        batch_op.drop_index('ix_collection_state')
        batch_op.drop_index('ix_collection_receipt_pk')
        batch_op.drop_index('ix_collection_movement_id')
    with op.batch_alter_table('transfer_label', schema=None) as batch_op:
        batch_op.drop_index('ix_transfer_label')
        batch_op.drop_constraint('uq_transfer_label', type_='unique')
        batch_op.alter_column('subject_key', existing_type=sa.String(length=120), type_=sa.Integer(),
                              existing_nullable=False, postgresql_using='subject_key::integer')
        batch_op.create_unique_constraint('uq_transfer_label', ['id_dominio', 'label', 'subject', 'subject_key'])
    if op.get_bind().dialect.name == "postgresql":
        for table in ("position", "collection"):
            op.execute(f'ALTER TABLE "{table}" SET (fillfactor = {FILLFACTOR})')


def downgrade() -> None:
    with op.batch_alter_table('transfer_label', schema=None) as batch_op:
        batch_op.drop_constraint('uq_transfer_label', type_='unique')
        batch_op.alter_column('subject_key', existing_type=sa.Integer(), type_=sa.String(length=120),
                              existing_nullable=False, postgresql_using='subject_key::text')
        batch_op.create_unique_constraint('uq_transfer_label', ['id_dominio', 'subject', 'subject_key', 'label'])
        batch_op.create_index('ix_transfer_label', ['id_dominio', 'label'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        for table in ("position", "collection"):
            op.execute(f'ALTER TABLE "{table}" RESET (fillfactor)')
    with op.batch_alter_table('collection', schema=None) as batch_op:
        batch_op.create_index('ix_collection_receipt_pk', ['receipt_pk'], unique=False)
        batch_op.create_index('ix_collection_movement_id', ['movement_id'], unique=False)
        batch_op.create_foreign_key('collection_movement_id_fkey', 'treasury_movement', ['movement_id'], ['id'])
        batch_op.create_index('ix_collection_state', ['id_dominio', 'state'], unique=False)
    with op.batch_alter_table('position', schema=None) as batch_op:
        batch_op.create_index('ix_position_state', ['state'], unique=False)
        batch_op.create_index('ix_position_iupd', ['iupd'], unique=False)
        batch_op.create_index('ix_position_updated_at', ['updated_at'], unique=False)
        batch_op.create_index('ix_position_due_date', ['due_date'], unique=False)
        batch_op.drop_index('ix_position_publication_queue')
        batch_op.create_index('ix_position_publication', ['publication_state', 'version', 'published_version'],
                              unique=False)
        batch_op.drop_index('ix_position_document')
        batch_op.create_index('ix_position_document', ['id_dominio', 'document_id'], unique=False)
