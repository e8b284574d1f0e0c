"""The `gateway` command: run roles, migrate, back up and restore, purge deleted data, manage studios,
lockdowns, the quarantine and support access.

This module only assembles the parser: each command group is a module of its own
(`roles`, `studio`, `quarantine`, `support`, ...) with an `add_commands(sub)`, and none of
them imports this one back.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from sqlalchemy.exc import SQLAlchemyError

from gateway.cli import common, dkim, data, helpdesk, lockdown, quarantine, roles, studio, support

# In the order `gateway --help` lists them.
GROUPS = (roles, studio, lockdown, dkim, data, helpdesk, quarantine, support)


DISTRIBUTION = "studio-mail-gateway"


def version() -> str:
    """The installed package's version (pyproject.toml), as backups record it."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a bare checkout on PYTHONPATH, never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"gateway {version()}",
                        help="print the gateway's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SQLAlchemyError as exc:
        if not common.schema_behind:
            raise
        return common.fail(f"cannot read the database at schema {common.schema_behind} "
                           f"({type(exc.orig or exc).__name__}): run `gateway migrate` first")
