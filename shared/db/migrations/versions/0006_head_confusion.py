"""head_version.confusion: each fit's out-of-fold confusion counts, for dataset_info and the console

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a metadata-only change; versions fitted before it have no counts (null).
    op.add_column('head_version', sa.Column('confusion', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('head_version', 'confusion')
