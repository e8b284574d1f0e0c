"""notifications to profiles: preferences (mode, quiet hours, resumed after a pause) and the
guest messages each profile is to hear about

Revision ID: 0022
Revises: 0021

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0022'
down_revision: Union[str, Sequence[str], None] = '0021'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('notification_preference',
    sa.Column('profile_id', sa.Integer(), nullable=False),
    sa.Column('studio_id', sa.Integer(), nullable=False),
    sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('quiet_from', sqlmodel.sql.sqltypes.AutoString(length=5), nullable=True),
    sa.Column('quiet_to', sqlmodel.sql.sqltypes.AutoString(length=5), nullable=True),
    sa.Column('resumed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['profile_id'], ['profile.id'], ),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('profile_id'),
    )
    op.create_index(op.f('ix_notification_preference_studio_id'), 'notification_preference', ['studio_id'],
                    unique=False)
    op.create_table('notification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('studio_id', sa.Integer(), nullable=False),
    sa.Column('profile_id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('message_ref', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('mail_ref', sa.Integer(), nullable=True),
    sa.Column('immediate', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['profile_id'], ['profile.id'], ),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True,  # ids are never reused (0016)
    )
    op.create_index('ix_notification_profile_conversation', 'notification',
                    ['profile_id', 'conversation_id', 'created_at'], unique=False)
    op.create_index('ix_notification_pending', 'notification', ['studio_id', 'mail_ref'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_notification_pending', table_name='notification')
    op.drop_index('ix_notification_profile_conversation', table_name='notification')
    op.drop_table('notification')
    op.drop_index(op.f('ix_notification_preference_studio_id'), table_name='notification_preference')
    op.drop_table('notification_preference')
