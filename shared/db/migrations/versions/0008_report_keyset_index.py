"""An index of reports by (dataset, item, tag), for the trainer's keyset pages of a dataset's reports

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 21:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY: the report table stays writable while the index builds (outside a transaction).
    with op.get_context().autocommit_block():
        op.create_index('ix_report_dataset_item', 'report', ['dataset_id', 'item_id', 'tag_id'],
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_report_dataset_item', table_name='report', postgresql_concurrently=True, if_exists=True)
