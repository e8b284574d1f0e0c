"""the studio's event log: a per-studio counter and the events of the last 24 hours

Revision ID: 0019
Revises: 0018

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0019'
down_revision: Union[str, Sequence[str], None] = '0018'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('studio_event_counter',
    sa.Column('studio_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('studio_id')
    )
    op.create_table('studio_event',
    sa.Column('studio_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('studio_id', 'seq')
    )
    op.create_index('ix_studio_event_created_at', 'studio_event', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_studio_event_created_at', table_name='studio_event')
    op.drop_table('studio_event')
    op.drop_table('studio_event_counter')
