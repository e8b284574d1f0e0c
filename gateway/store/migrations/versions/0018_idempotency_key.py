"""Idempotency-Key: the first answer to a creating POST, kept per studio and key for 24 hours

Revision ID: 0018
Revises: 0017

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0018'
down_revision: Union[str, Sequence[str], None] = '0017'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('idempotency_key',
    sa.Column('studio_id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('headers', sa.Text(), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('studio_id', 'key')
    )
    op.create_index('ix_idempotency_key_expires', 'idempotency_key', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_idempotency_key_expires', table_name='idempotency_key')
    op.drop_table('idempotency_key')
