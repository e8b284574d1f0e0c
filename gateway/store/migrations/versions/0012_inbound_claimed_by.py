"""inbound_mail.claimed_by: which worker process holds a claim, so its death frees the claim at once

Revision ID: 0012
Revises: 0011

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('inbound_mail', sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))


def downgrade() -> None:
    op.drop_column('inbound_mail', 'claimed_by')
