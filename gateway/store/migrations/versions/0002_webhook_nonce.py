"""inbound_mail.nonce: replay protection for provider webhooks

Revision ID: 0002
Revises: 0001

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('inbound_mail', sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))
    op.create_index('uq_inbound_mail_source_nonce', 'inbound_mail', ['source', 'nonce'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_inbound_mail_source_nonce', table_name='inbound_mail')
    with op.batch_alter_table('inbound_mail') as batch:
        batch.drop_column('nonce')
