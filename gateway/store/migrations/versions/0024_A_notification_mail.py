"""notifications: the rows by the mail that told them, instead of by studio and mail

The processor now only writes the rows; the outbox queues the immediate ones' mails after the
burst (gateway/outbound/notifications.queue_told) and looks for them before each round, and it
finds a row by its mail when it composes the body. Without an index on mail_ref both read the
whole table: ix_notification_pending led with studio_id, which none of them knows. It goes, so
the processor's insert of each row maintains no more indexes than before.

And ix_message_told_bounced: the notification mails that bounced or failed, which a profile's
pause counts (checked for every chunk of guest mail the processor threads); the count walked
every notification row of the profile (30 days of them) before.

Revision ID: 0024_A
Revises: 0023

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

TOLD_BOUNCED = "conversation_id IS NULL AND delivery IN ('bounced', 'failed')"   # as gateway/store/models.py


revision: str = '0024_A'
down_revision: Union[str, Sequence[str], None] = '0023'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_notification_mail', 'notification', ['mail_ref', 'immediate'], unique=False)
    op.drop_index('ix_notification_pending', table_name='notification')
    op.create_index('ix_message_told_bounced', 'message', ['id'], unique=False,
                    sqlite_where=sa.text(TOLD_BOUNCED), postgresql_where=sa.text(TOLD_BOUNCED))


def downgrade() -> None:
    op.drop_index('ix_message_told_bounced', table_name='message',
                  sqlite_where=sa.text(TOLD_BOUNCED), postgresql_where=sa.text(TOLD_BOUNCED))
    op.create_index('ix_notification_pending', 'notification', ['studio_id', 'mail_ref'], unique=False)
    op.drop_index('ix_notification_mail', table_name='notification')
