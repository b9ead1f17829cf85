"""head_version.pseudo_labels: how many unlabelled pool items (kept tag-call inputs) joined the fit as
pseudo-examples (trainer.selftraining); 0 for every fit before it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 02:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: a metadata-only change in Postgres 11+.
    op.add_column('head_version', sa.Column('pseudo_labels', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('head_version', 'pseudo_labels')
