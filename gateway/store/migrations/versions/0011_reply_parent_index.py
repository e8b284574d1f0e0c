"""message (conversation_id, direction, received_at): a reply finds the latest guest message fast

Revision ID: 0011
Revises: 0010

"""
from typing import Sequence, Union

from alembic import op


revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_message_conversation_inbound', 'message', ['conversation_id', 'direction', 'received_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_message_conversation_inbound', table_name='message')
