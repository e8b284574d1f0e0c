"""The `gateway` command: run roles, migrate, back up and restore, purge deleted data, manage studios,
lockdowns, the quarantine and support access.

This module only assembles the parser: each command group is a module of its own
(`roles`, `studio`, `quarantine`, `support`, ...) with an `add_commands(sub)`, and none of
them imports this one back.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from gateway.cli import dkim, data, helpdesk, lockdown, quarantine, roles, studio, support

# In the order `gateway --help` lists them.
GROUPS = (roles, studio, lockdown, dkim, data, helpdesk, quarantine, support)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
