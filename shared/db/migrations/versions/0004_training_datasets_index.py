"""A partial index of datasets in training, for the stall sweeper's orphaned refits (no scan of every dataset)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 15:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY: a big dataset table stays writable while the index builds (outside a transaction).
    with op.get_context().autocommit_block():
        op.create_index('ix_dataset_training', 'dataset', ['id'], postgresql_where="state = 'training'",
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_dataset_training', table_name='dataset', postgresql_concurrently=True, if_exists=True)
