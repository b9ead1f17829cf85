"""The human loop (v0.2): head versions with evaluation and a held state, threshold overrides, webhooks and
their deliveries, suggestions, keep_inputs and item origin, and an index for list_items' newest-first pages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 16:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Columns with constant defaults: metadata-only changes in Postgres 11+, no table rewrite.
    op.add_column('dataset', sa.Column('keep_inputs', sa.Boolean(), server_default='false', nullable=False))
    op.add_column('tag', sa.Column('threshold_override', sa.Float(), nullable=True))
    op.add_column('data_item', sa.Column('origin', sa.String(length=16), server_default='report', nullable=False))
    op.add_column('head_version', sa.Column('held', sa.Boolean(), server_default='false', nullable=False))
    op.add_column('head_version', sa.Column('evaluation', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('head_version', sa.Column('macro_f1', sa.Float(), nullable=True))
    op.add_column('head_version', sa.Column('tags', postgresql.JSONB(astext_type=sa.Text()), nullable=True))

    op.create_table(
        'webhook',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('account_id', sa.BigInteger(), nullable=False),
        sa.Column('dataset_id', sa.BigInteger(), nullable=True),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('events', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('secret', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_webhook_account_id_account'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_webhook_dataset_id_dataset'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook')),
    )
    op.create_index(op.f('ix_webhook_account_id'), 'webhook', ['account_id'], unique=False)
    op.create_index(op.f('ix_webhook_dataset_id'), 'webhook', ['dataset_id'], unique=False)

    op.create_table(
        'webhook_delivery',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('webhook_id', sa.BigInteger(), nullable=False),
        sa.Column('event', sa.String(length=40), nullable=False),
        sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('state', sa.String(length=16), server_default='pending', nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['webhook_id'], ['webhook.id'], name=op.f('fk_webhook_delivery_webhook_id_webhook'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_delivery')),
    )
    op.create_index('ix_webhook_delivery_pending', 'webhook_delivery', ['id'], unique=False,
                    postgresql_where=sa.text("state = 'pending'"))
    op.create_index('ix_webhook_delivery_webhook_newest', 'webhook_delivery', ['webhook_id', sa.text('id DESC')],
                    unique=False)

    op.create_table(
        'suggestion',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('dataset_id', sa.BigInteger(), nullable=False),
        sa.Column('item_id', sa.BigInteger(), nullable=False),
        sa.Column('tag_id', sa.BigInteger(), nullable=False),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('probability', sa.Float(), nullable=False),
        sa.Column('rank', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_suggestion_dataset_id_dataset'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['item_id'], ['data_item.id'], name=op.f('fk_suggestion_item_id_data_item'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['tag_id'], ['tag.id'], name=op.f('fk_suggestion_tag_id_tag'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_suggestion')),
    )
    op.create_index('ix_suggestion_dataset_rank', 'suggestion', ['dataset_id', 'rank'], unique=False)
    op.create_index(op.f('ix_suggestion_item_id'), 'suggestion', ['item_id'], unique=False)
    op.create_index(op.f('ix_suggestion_tag_id'), 'suggestion', ['tag_id'], unique=False)

    # CONCURRENTLY: a big item table stays writable while the index builds (outside a transaction).
    with op.get_context().autocommit_block():
        op.create_index('ix_data_item_dataset_newest', 'data_item', ['dataset_id', sa.text('id DESC')],
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_data_item_dataset_newest', table_name='data_item', postgresql_concurrently=True,
                      if_exists=True)
    op.drop_table('suggestion')
    op.drop_table('webhook_delivery')
    op.drop_table('webhook')
    op.drop_column('head_version', 'tags')
    op.drop_column('head_version', 'macro_f1')
    op.drop_column('head_version', 'evaluation')
    op.drop_column('head_version', 'held')
    op.drop_column('data_item', 'origin')
    op.drop_column('tag', 'threshold_override')
    op.drop_column('dataset', 'keep_inputs')
