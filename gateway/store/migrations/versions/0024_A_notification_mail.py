"""notifications: the rows by the mail that told them, instead of by studio and mail

The processor now only writes the rows; the outbox queues the immediate ones' mails after the
burst (gateway/outbound/notifications.queue_told) and looks for them before each round, and it
finds a row by its mail when it composes the body. Without an index on mail_ref both read the
whole table: ix_notification_pending led with studio_id, which none of them knows. It goes, so
the processor's insert of each row maintains no more indexes than before.

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
    op.drop_index('ix_notification_pending', table_name='notification')


def downgrade() -> None:
    op.create_index('ix_notification_pending', 'notification', ['studio_id', 'mail_ref'], unique=False)
    op.drop_index('ix_notification_mail', table_name='notification')
