"""A partial index of waiting datasets, for the trainer's stall sweeper (no scan of every dataset)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 14:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY: a big dataset table stays writable while the index builds (outside a transaction).
    with op.get_context().autocommit_block():
        op.create_index('ix_dataset_waiting', 'dataset', ['id'], postgresql_where="state = 'waiting'",
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_dataset_waiting', table_name='dataset', postgresql_concurrently=True, if_exists=True)
