"""notifications: an index on the mail that told each row

The processor now only writes the rows; the outbox queues the immediate ones' mails after the
burst (gateway/outbound/notifications.queue_told) and looks for them before each round, and it
finds a row by its mail when it composes the body. Without an index both read the whole table.

Revision ID: 0024_A
Revises: 0023

"""
from typing import Sequence, Union

from alembic import op


revision: str = '0024_A'
down_revision: Union[str, Sequence[str], None] = '0023'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_notification_mail', 'notification', ['mail_ref', 'immediate'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_notification_mail', table_name='notification')
