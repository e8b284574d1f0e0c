"""soft deletion: conversation and message deleted_at/deleted_by, indexes for the list, trash and purge

Revision ID: 0008
Revises: 0007

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('deleted_by', sa.Integer(), nullable=True))
        # The list now filters on deleted_at IS NULL: the index leads with it after the studio.
        batch_op.drop_index('ix_conversation_studio_activity')
        batch_op.create_index('ix_conversation_studio_live_activity', ['studio_id', 'deleted_at', 'last_message_at'],
                              unique=False)

    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('deleted_by', sa.Integer(), nullable=True))
        batch_op.create_index('ix_message_studio_deleted', ['studio_id', 'deleted_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index('ix_message_studio_deleted')
        batch_op.drop_column('deleted_by')
        batch_op.drop_column('deleted_at')

    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.drop_index('ix_conversation_studio_live_activity')
        batch_op.create_index('ix_conversation_studio_activity', ['studio_id', 'last_message_at'], unique=False)
        batch_op.drop_column('deleted_by')
        batch_op.drop_column('deleted_at')
