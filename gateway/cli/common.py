"""What every command needs: strictly parsed settings, a migrated database, logging.

Commands import their domain modules inside their own functions: `gateway --help` and the
small commands then start without loading the web stack, the SMTP server and the parser.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Engine

from gateway.logs import configure_logging  # noqa: F401 - every command sets logging up through here
from gateway.settings import Settings, SettingsFileError, get_settings, private_dir
from gateway.store.db import get_engine, is_sqlite, migrate, read_tx, schema_revision


def fail(message: str) -> int:
    """Say what went wrong on stderr, as every command does; exit status 1."""
    print(f"gateway: {message}", file=sys.stderr)
    return 1


def settings() -> Settings:
    """The settings, checked; and the data directory made private (0700) before anything is
    written into it (docs/operations.md, "Files")."""
    try:
        loaded = get_settings()
        private_dir(loaded.data_dir)
        return loaded
    except SettingsFileError as exc:
        for line in str(exc).splitlines():
            print(f"gateway: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValidationError as exc:
        for error in exc.errors():
            name = "GATEWAY_" + "_".join(str(p) for p in error["loc"]).upper()
            print(f"gateway: invalid setting {name}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def migrated(settings: Settings) -> Engine:
    """The database, brought up to date first: any command may be the first one run."""
    migrate(settings.resolved_database_url)
    return get_engine(settings.resolved_database_url)


# Set by readable() when the schema is not this gateway's: a read that fails on it is then
# answered with what to do (cli.main), not a traceback.
schema_behind = ""
NOT_SET_UP = "the database has no schema yet (nothing to show); `gateway migrate` or any role creates it"


def readable(settings: Settings) -> Engine | None:
    """The database as it is, for the read-only commands (`studio list|show`, `quarantine list`,
    `purge --dry-run`): looking must not change it, so they never migrate, and never create a
    SQLite file that is not there. None when there is no schema yet: they answer "nothing"
    (an empty list), with a note on stderr. On a schema older than this gateway's they read
    what they can and say so; `gateway migrate` brings it up to date."""
    url = settings.resolved_database_url
    if is_sqlite(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not Path(path).exists():
            print(f"gateway: {NOT_SET_UP}", file=sys.stderr)
            return None
    engine = get_engine(url)
    with read_tx(engine) as conn:
        revision = schema_revision(conn)
    if not revision:
        print(f"gateway: {NOT_SET_UP}", file=sys.stderr)
        return None
    head = head_revision()
    if revision != head:
        global schema_behind
        schema_behind = revision
        print(f"gateway: note: the database schema is at {revision}, this gateway's at {head}; "
              "`gateway migrate` brings it up to date", file=sys.stderr)
    return engine


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from gateway.store.db import migrations_dir

    return ",".join(sorted(ScriptDirectory(str(migrations_dir())).get_heads()))
