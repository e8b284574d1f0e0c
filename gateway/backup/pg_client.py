"""Running PostgreSQL's own client programs (pg_dump, pg_restore) on the configured database.

pg_dump is the one tool that knows every object type and version quirk of the server, so the
gateway calls it rather than copying tables itself. The password goes to the programs through
PGPASSWORD in their environment, never on the command line, where `ps` would show it to every
user of the machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from sqlalchemy.engine import make_url

from gateway.backup.archive import BackupError
from gateway.store.db import libpq_url, normalise_url
from gateway.settings import Settings


def program(name: str, settings: Settings) -> str:
    """The path of a PostgreSQL client program: from GATEWAY_PG_BIN_DIR, else from PATH."""
    if settings.pg_bin_dir is not None:
        candidate = settings.pg_bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise BackupError(f"{name} not found in GATEWAY_PG_BIN_DIR ({settings.pg_bin_dir})")
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client programs (Debian: postgresql-client, "
                          "the server's major version or newer) or set GATEWAY_PG_BIN_DIR")
    return found


def target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and an environment that carries it."""
    parsed = make_url(normalise_url(url))
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    # URL.set(password=None) keeps the password (None means "unchanged" there), which put it on
    # pg_dump's command line, readable by every local user in `ps`: _replace clears it.
    conninfo = libpq_url(parsed._replace(password=None))
    return conninfo, env


def run(args: list[str], env: dict[str, str], what: str) -> None:
    """Run one client program; its own error output is the message when it fails."""
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BackupError(f"{what} could not start: {exc}") from None
    if done.returncode != 0:
        raise BackupError(f"{what} failed (exit {done.returncode}): {_tail(done.stderr)}")


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:]) or "no message"
