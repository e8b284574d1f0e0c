"""Who sent it: Authentication-Results on messages, provider verdicts on inbound mail, the
automatic mail that opened no conversation (listed by GET /api/v1/automatic), and an index for
the studio's hourly cap on acknowledgements

Revision ID: 0013
Revises: 0012

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('message', sa.Column('authentication_results', sa.Text(), nullable=True))
    op.create_index('ix_message_studio_auto', 'message', ['studio_id', 'auto_kind', 'received_at'])
    op.add_column('inbound_mail', sa.Column('authentication', sa.Text(), nullable=True))
    op.create_table(
        'automatic_mail',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('studio_id', sa.Integer(), nullable=False),
        sa.Column('inbound_mail_id', sa.Integer(), nullable=True),
        sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('auto_kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('from_email', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column('from_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=998), nullable=False),
        sa.Column('dedupe_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('authentication_results', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['studio_id'], ['studio.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('studio_id', 'dedupe_key', name='uq_automatic_mail_studio_dedupe'),
    )
    op.create_index('ix_automatic_mail_studio_received', 'automatic_mail', ['studio_id', 'received_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_automatic_mail_studio_received', table_name='automatic_mail')
    op.drop_table('automatic_mail')
    op.drop_column('inbound_mail', 'authentication')
    op.drop_index('ix_message_studio_auto', table_name='message')
    op.drop_column('message', 'authentication_results')
