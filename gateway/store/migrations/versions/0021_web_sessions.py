"""web messenger sign-in: one-time login links, server-side sessions, a profile's page language;
the inbox page's index on live conversations

Revision ID: 0021
Revises: 0020

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0021'
down_revision: Union[str, Sequence[str], None] = '0020'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


LIVE = sa.text('deleted_at IS NULL')


def upgrade() -> None:
    op.create_index('ix_conversation_inbox', 'conversation', ['studio_id', 'last_message_at', 'id'], unique=False,
                    sqlite_where=LIVE, postgresql_where=LIVE)
    op.add_column('profile', sa.Column('locale', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True))
    op.create_table('login_link',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('studio_id', sa.Integer(), nullable=False),
    sa.Column('profile_id', sa.Integer(), nullable=False),
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('message_ref', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['profile_id'], ['profile.id'], ),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash'),
    sqlite_autoincrement=True,  # ids are never reused (0016)
    )
    op.create_index(op.f('ix_login_link_profile_id'), 'login_link', ['profile_id'], unique=False)
    op.create_index(op.f('ix_login_link_studio_id'), 'login_link', ['studio_id'], unique=False)
    op.create_table('web_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('studio_id', sa.Integer(), nullable=False),
    sa.Column('profile_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('ended_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['profile_id'], ['profile.id'], ),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash'),
    sqlite_autoincrement=True,  # ids are never reused (0016)
    )
    op.create_index('ix_web_session_last_seen', 'web_session', ['last_seen_at'], unique=False)
    op.create_index(op.f('ix_web_session_profile_id'), 'web_session', ['profile_id'], unique=False)
    op.create_index(op.f('ix_web_session_studio_id'), 'web_session', ['studio_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_web_session_studio_id'), table_name='web_session')
    op.drop_index(op.f('ix_web_session_profile_id'), table_name='web_session')
    op.drop_index('ix_web_session_last_seen', table_name='web_session')
    op.drop_table('web_session')
    op.drop_index(op.f('ix_login_link_studio_id'), table_name='login_link')
    op.drop_index(op.f('ix_login_link_profile_id'), table_name='login_link')
    op.drop_table('login_link')
    with op.batch_alter_table('profile', table_kwargs={'sqlite_autoincrement': True}) as batch:
        batch.drop_column('locale')
    op.drop_index('ix_conversation_inbox', table_name='conversation', sqlite_where=LIVE, postgresql_where=LIVE)
