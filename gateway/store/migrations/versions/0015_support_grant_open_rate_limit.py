"""one open support grant per studio as a constraint; rate limits shared through the database

Revision ID: 0015
Revises: 0014

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OPEN = sa.text('closed_at IS NULL')


def upgrade() -> None:
    op.add_column('support_grant', sa.Column('closed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    # Every grant but each studio's newest unrevoked one is closed: revoked ones when they were
    # revoked, the others (replaced or expired) when they expired. Column values only, so the
    # stored time format of either back end is kept.
    op.execute("UPDATE support_grant SET closed_at = COALESCE(revoked_at, expires_at) "
               "WHERE revoked_at IS NOT NULL OR id NOT IN "
               "(SELECT max(id) FROM support_grant WHERE revoked_at IS NULL GROUP BY studio_id)")
    op.create_index('uq_support_grant_studio_open', 'support_grant', ['studio_id'], unique=True,
                    sqlite_where=OPEN, postgresql_where=OPEN)
    op.create_table('rate_limit',
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('window_start', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('blocked_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'key')
    )
    op.create_index('ix_rate_limit_expires', 'rate_limit', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_rate_limit_expires', table_name='rate_limit')
    op.drop_table('rate_limit')
    op.drop_index('uq_support_grant_studio_open', table_name='support_grant',
                  sqlite_where=OPEN, postgresql_where=OPEN)
    op.drop_column('support_grant', 'closed_at')
