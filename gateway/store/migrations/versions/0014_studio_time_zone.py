"""studio.time_zone: the IANA zone its mails show dates in (default Europe/Berlin)

Revision ID: 0014
Revises: 0013

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Existing studios get the default the product starts with: the studios are in Germany.
    op.add_column('studio', sa.Column('time_zone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False,
                                      server_default='Europe/Berlin'))


def downgrade() -> None:
    with op.batch_alter_table('studio') as batch:
        batch.drop_column('time_zone')
