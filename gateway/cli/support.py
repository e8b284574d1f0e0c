"""`gateway support ...`: the operators' side of support access (rules in gateway/access/support.py).

`read` shows a studio's conversations only under its owner's active grant and audits each
read as operator:<name>; `token` issues a support token for reading over HTTP (audited as
support:<name>) and `revoke-token` ends one.
"""
from __future__ import annotations

import argparse
import getpass
import json

import msgspec
from sqlalchemy import Engine

from gateway.cli import common
from gateway.store.db import write_tx
from gateway.store.models import utcnow
from gateway.access.studios import StudioError
from gateway.access.support import (SupportDenied, check_operator, issue_support_token, open_read, record_read,
                                    revoke_support_token)


def _engine() -> Engine:
    return common.migrated(common.settings())


def cmd_read(args: argparse.Namespace) -> int:
    """Read the studio's conversation list, or one conversation with its messages; exit 1
    and read nothing without an active grant."""
    from gateway.inbox.reading import ConversationDetailOut, ConversationList, conversation_detail, list_conversations

    try:
        operator = check_operator(args.operator or getpass.getuser())
    except (StudioError, OSError) as exc:
        return common.fail(f"{exc}; name yourself with --operator")
    if args.conversation is None:
        action, target = "conversation.list", "conversations"
    else:
        action, target = "conversation.read", f"conversation {args.conversation}"
    result: ConversationList | ConversationDetailOut | None
    actor = f"operator:{operator}"
    try:
        with write_tx(_engine()) as conn:
            studio_id = open_read(conn, args.studio, actor=actor, reason=args.reason,
                                  action=action, target=target, now=utcnow())
            if args.conversation is None:
                result = list_conversations(conn, studio_id, limit=args.limit)
            else:
                result = conversation_detail(conn, studio_id, args.conversation)
            if result is None:  # read nothing: its entry as a read is rolled back with the transaction
                raise LookupError(f"studio {args.studio!r} has no conversation {args.conversation}")
    except (SupportDenied, StudioError) as exc:
        return common.fail(str(exc))
    except LookupError as exc:
        with write_tx(_engine()) as conn:   # the attempt, as over HTTP (gateway/api/auth.py)
            record_read(conn, studio_id, actor=actor, action=f"{action}.rejected", target=target,
                        reason=args.reason, now=utcnow())
        return common.fail(str(exc))
    if args.json:
        print(msgspec.json.encode(result).decode())
    elif isinstance(result, ConversationList):
        for c in result.items:
            print(f"{c.id}\t{c.status}\t{c.last_message_at:%Y-%m-%d %H:%M}\t{c.message_count}\t"
                  f"{c.guest.email}\t{c.subject}")
        print(f"{len(result.items)} conversations" + (" (more: raise --limit)" if result.next_cursor else ""))
    else:
        print(f"conversation {result.id} ({result.status}) with {result.guest.email}: {result.subject}")
        for m in result.messages:
            files = ", ".join(a.filename for a in m.attachments)
            print(f"\n--- {m.direction} #{m.id} from {m.from_.email} at {m.received_at:%Y-%m-%d %H:%M}"
                  + (f" [attachments: {files}]" if files else ""))
            print(m.text)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Issue a support token for an operator; shown once."""
    try:
        with write_tx(_engine()) as conn:
            new = issue_support_token(conn, args.name, utcnow())
    except StudioError as exc:
        return common.fail(str(exc))
    if args.json:
        print(json.dumps({"id": new.id, "name": new.name, "prefix": new.prefix, "token": new.token}))
    else:
        print(f"support token {new.id} for {new.name} (shown once): {new.token}")
    return 0


def cmd_revoke_token(args: argparse.Namespace) -> int:
    with write_tx(_engine()) as conn:
        found = revoke_support_token(conn, args.id, utcnow())
    if not found:
        return common.fail(f"no support token {args.id}")
    print(f"support token {args.id} revoked")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `gateway support read|token|revoke-token` on the main parser's subcommands."""
    support = sub.add_parser("support", help="read a studio under its owner's grant; support tokens")
    commands = support.add_subparsers(dest="support_command", required=True)
    read = commands.add_parser("read", help="a studio's conversations (or one), audited; needs its owner's grant")
    read.add_argument("--studio", required=True, help="the studio's slug")
    read.add_argument("--reason", required=True, help="why you read: shown to the owner in the audit log")
    read.add_argument("--conversation", type=int, help="one conversation with its messages")
    read.add_argument("--limit", type=int, default=50, choices=range(1, 201), metavar="1-200",
                      help="at most this many conversations (default: 50)")
    read.add_argument("--operator", help="your name in the audit log (default: your login name)")
    read.add_argument("--json", action="store_true", help="print JSON instead of text")
    read.set_defaults(func=cmd_read)
    token = commands.add_parser("token", help="issue a support token for reading over HTTP (shown once)")
    token.add_argument("--name", required=True, help="the operator, as the audit log names them")
    token.add_argument("--json", action="store_true", help="print JSON instead of text")
    token.set_defaults(func=cmd_token)
    revoke = commands.add_parser("revoke-token", help="revoke a support token at once")
    revoke.add_argument("id", type=int, help="the token's id, from `support token` or the audit log")
    revoke.set_defaults(func=cmd_revoke_token)
