"""What every command needs: strictly parsed settings, a migrated database, logging.

Commands import their domain modules inside their own functions: `gateway --help` and the
small commands then start without loading the web stack, the SMTP server and the parser.
"""
from __future__ import annotations

import sys

from pydantic import ValidationError
from sqlalchemy import Engine

from gateway.logs import configure_logging  # noqa: F401 - every command sets logging up through here
from gateway.settings import Settings, SettingsFileError, get_settings, private_dir
from gateway.store.db import get_engine, migrate


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
