"""head_version.mode: "trained" from reports, or "zero_shot" from a text dataset's tag titles alone

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: a metadata-only change in Postgres 11+; every existing head was fitted from reports.
    op.add_column('head_version', sa.Column('mode', sa.String(length=16), server_default='trained', nullable=False))


def downgrade() -> None:
    op.drop_column('head_version', 'mode')
