"""the inquiry form: its versions, its submissions, spent proof-of-work solutions, the studio's privacy page

Revision ID: 0020
Revises: 0019

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0020'
down_revision: Union[str, Sequence[str], None] = '0019'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('studio', sa.Column('privacy_url', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True))
    op.create_table('form_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('studio_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('definition_json', sa.Text(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('studio_id', 'version', name='uq_form_version_studio_version'),
    sqlite_autoincrement=True,  # ids are never reused (0016)
    )
    op.create_table('form_submission',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('studio_id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('form_version', sa.Integer(), nullable=False),
    sa.Column('answers_json', sa.Text(), nullable=False),
    sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('consent_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'], ),
    sa.ForeignKeyConstraint(['message_id'], ['message.id'], ),
    sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('studio_id', 'token', name='uq_form_submission_studio_token'),
    sqlite_autoincrement=True,  # ids are never reused (0016)
    )
    op.create_index('ix_form_submission_studio_created', 'form_submission', ['studio_id', 'created_at'], unique=False)
    op.create_index(op.f('ix_form_submission_conversation_id'), 'form_submission', ['conversation_id'], unique=False)
    op.create_table('form_challenge_used',
    sa.Column('challenge', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('challenge')
    )
    op.create_index('ix_form_challenge_used_expires', 'form_challenge_used', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_form_challenge_used_expires', table_name='form_challenge_used')
    op.drop_table('form_challenge_used')
    op.drop_index(op.f('ix_form_submission_conversation_id'), table_name='form_submission')
    op.drop_index('ix_form_submission_studio_created', table_name='form_submission')
    op.drop_table('form_submission')
    op.drop_table('form_version')
    with op.batch_alter_table('studio', table_kwargs={'sqlite_autoincrement': True}) as batch:
        batch.drop_column('privacy_url')
