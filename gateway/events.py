"""The moment a guest's message is filed: "message threaded", and the reactions to it.

The processor announces each message the threader stored; reactions listen: an
acknowledgement for a new inquiry (gateway/outbound/acknowledgements.py), the helpdesk's
LÖSCHEN command (gateway/lifecycle/helpdesk_mail.py), the profiles' notifications
(gateway/outbound/notifications.py) and their answers by mail (gateway/outbound/notify_answers.py),
and next the outgoing webhooks. An inquiry form's submission is announced the same way
(gateway/forms/submit.py), so a form inquiry is told like a mail one. The processor knows none of them: the edge that runs it
(gateway/runtime.py, the CLI) hands it the list, so inbound never imports what reacts.

A reaction runs inside the transaction that stored the message, so what it queues (an
outbound job, a deletion request) commits or rolls back with it, and a retried delivery,
which the threader sees as a duplicate, announces nothing again. A reaction must be cheap
(it holds the write transaction) and raise only for database trouble: an exception redoes
the chunk message by message and then counts against that message like any processing
failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from sqlalchemy import Connection

from gateway.settings import Settings


@dataclass(frozen=True)
class Threaded:
    """One message filed into one studio's conversation (a mail to two studios is two)."""
    studio_id: int
    message_id: int
    conversation_id: int
    rule: str            # the threading rule that placed it (reply-address, in-reply-to, ..., new)
    opened: bool         # the message opened this conversation: a new inquiry
    visible: bool        # shown to the studio, not held for it to accept
    automatic: bool      # an auto-reply, bounce or list mail (RFC 3834): never answered automatically
    guest_id: int | None  # the conversation's guest (None when the message did not open it)
    sender_name: str     # the display name the mail came with
    # Whether SPF or DKIM passed for the From domain (gateway/inbound/authentication.py): only
    # then does an automatic answer go to the sender, never to a forged or unchecked address.
    sender_aligned: bool = False
    guest_from_reply_to: bool = False  # the guest came from Reply-To (a website form), not From


@dataclass
class Chunk:
    """What the reactions of one processor transaction share (a chunk of up to 16 messages)."""
    studio_ids: dict[str, int | None]  # slug → id of the studios this chunk's mail went to
    memo: dict[str, Any] = field(default_factory=dict)  # a reaction's own cache, under its name
    # Whether the transaction is rolled back whole when any message fails (the processor's
    # optimistic chunk, no savepoint per message): a reaction may then leave rows for the end
    # (`at_end`), written together in fewer statements (round trips on PostgreSQL).
    batched: bool = False
    at_end: list[Callable[[Connection], None]] = field(default_factory=list)


def finish(conn: Connection, chunk: Chunk) -> None:
    """Run what the reactions left for the chunk's end, before its transaction commits."""
    for write in chunk.at_end:
        write(conn)


class Reaction(Protocol):
    def __call__(self, conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None: ...


def announce(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk,
             reactions: Sequence[Reaction]) -> None:
    """Tell every reaction, in order, in the caller's transaction: the processor for threaded
    mail, the inquiry form for a submission (gateway/forms/submit.py), one path for both."""
    for react in reactions:
        react(conn, event, settings, chunk)
