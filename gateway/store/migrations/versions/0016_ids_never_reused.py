"""ids are never reused: AUTOINCREMENT on SQLite

Revision ID: 0016
Revises: 0015

An id that leaves the database (in the API, a log line, a support note, an app's cache) must
name one row for ever. SQLite's plain INTEGER PRIMARY KEY hands out max(rowid) + 1, so once a
studio's newest conversations were erased, the next studio's new conversation got the same id,
and an app's cache keyed by id pointed at someone else's data (issue 14). With AUTOINCREMENT,
SQLite keeps the highest id ever given in `sqlite_sequence` and never goes below it
(https://sqlite.org/autoinc.html). PostgreSQL's `serial` sequences never hand a number out
twice already, so this changes nothing there.

Why not public ids that are not row ids (random or hashed ones)? Every route, cursor, audit
target and test speaks row ids; a second id per table would be a second lookup on every
request and a column to keep unique, for the same promise AUTOINCREMENT gives in the engine
that broke it. The cost is one `sqlite_sequence` update per insert, and rebuilding the tables
once, here (SQLite cannot add AUTOINCREMENT to an existing table): alembic's batch mode copies
each table with its rows, indexes and constraints (foreign keys are off while it does, see
migrations/env.py). Ids given out before this migration and erased since, above the highest
one left, may be handed out once more; none after it.

Every table whose integer id is surrogate gets it, not only those the API shows today: an id
that reaches a log or the command line is quoted just the same.
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Parents before children does not matter (foreign keys are off), but keep the model order.
TABLES = ('studio', 'profile', 'api_token', 'inbound_mail', 'guest', 'conversation', 'message',
          'automatic_mail', 'attachment', 'outbound_job', 'lockdown', 'payment_pause', 'support_grant',
          'support_token', 'audit_entry', 'account_deletion')


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate='always',
                                  table_kwargs={'sqlite_autoincrement': autoincrement}):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
