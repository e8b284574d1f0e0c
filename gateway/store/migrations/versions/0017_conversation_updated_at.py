"""conversation.updated_at: when anything a client shows of it last changed (updated_since)

Revision ID: 0017
Revises: 0016

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0017'
down_revision: Union[str, Sequence[str], None] = '0016'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Existing rows: the latest change we know of (a message, a read, a deletion). A client
    # catching up with an older `updated_since` sees them; nothing is missed, at worst resent.
    with op.batch_alter_table('conversation') as batch:
        batch.add_column(sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    conversation = sa.table('conversation', *(sa.column(name, sa.DateTime(timezone=True)) for name in
                                              ('updated_at', 'last_message_at', 'read_at', 'deleted_at')))
    latest = conversation.c.last_message_at
    for later in (conversation.c.read_at, conversation.c.deleted_at):
        latest = sa.case((later.is_not(None) & (later > latest), later), else_=latest)
    op.execute(conversation.update().values(updated_at=latest))
    # The rebuild SQLite needs for NOT NULL keeps AUTOINCREMENT (0016: ids are never reused).
    with op.batch_alter_table('conversation', table_kwargs={'sqlite_autoincrement': True}) as batch:
        batch.alter_column('updated_at', nullable=False)
    op.create_index('ix_conversation_studio_updated', 'conversation', ['studio_id', 'updated_at'])


def downgrade() -> None:
    op.drop_index('ix_conversation_studio_updated', table_name='conversation')
    with op.batch_alter_table('conversation', table_kwargs={'sqlite_autoincrement': True}) as batch:
        batch.drop_column('updated_at')
