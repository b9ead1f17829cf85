"""head_version.fingerprint: what a head was fitted from, so a refit that would change nothing is skipped

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: heads fitted before this column are refitted by their next request (nothing to compare).
    op.add_column('head_version', sa.Column('fingerprint', sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column('head_version', 'fingerprint')
