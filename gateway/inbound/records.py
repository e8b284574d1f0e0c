"""What the threader looks up before it files a message, and the first rows a guest's mail creates.

Every message asks whether it was seen (stored before, or erased: the erasure leaves its
dedupe key as a tombstone, so a late or retried delivery cannot bring an erased conversation
back) and who its sender is as a guest. `ChunkLookups` asks both once for a processor chunk.
Guests and conversations are created here too, also for conversations the gateway opens
itself (the helpdesk writing to a studio owner).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, update

from gateway.inbound.headers import normalize_email
from gateway.inbound.mime import Address
from gateway.mail.subjects import normalize_subject
from gateway.store.db import DriverSQL, bind_processor
from gateway.store.models import utcnow
from gateway.store.tables import CONVERSATION, GUEST

# Stored already ("duplicate"), or erased (gateway/lifecycle/erasure.py left its dedupe key behind as a
# tombstone: a late or retried delivery must not bring the erased conversation back). One
# statement for both: it runs for every message.
_SEEN = DriverSQL(
    "SELECT 'duplicate' FROM message WHERE studio_id = ? AND dedupe_key = ? "
    "UNION ALL SELECT 'erased' FROM tombstone WHERE studio_id = ? AND dedupe_key = ? LIMIT 1")
_GUEST = DriverSQL("SELECT id, email, name FROM guest WHERE studio_id = ? AND email = ?")
_NEW_GUEST = DriverSQL("INSERT INTO guest (studio_id, email, name, created_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT DO NOTHING RETURNING id")
# A guest of a moment ago (another processor, PostgreSQL) makes _NEW_GUEST return no row.
_NEW_CONVERSATION = DriverSQL(
    "INSERT INTO conversation (studio_id, guest_id, subject, subject_key, status, created_at, last_message_at, "
    "updated_at, message_count) VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?) RETURNING id")
# PostgreSQL: a new guest and the conversation their first mail opens in one statement, one
# round trip instead of two for every new inquiry. No row back when the guest exists already
# (another processor created it a moment ago): then as with _NEW_GUEST.
_NEW_GUEST_CONVERSATION_PG = DriverSQL(
    "WITH new_guest AS (INSERT INTO guest (studio_id, email, name, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING RETURNING id) "
    "INSERT INTO conversation (studio_id, guest_id, subject, subject_key, status, created_at, last_message_at, "
    "updated_at, message_count) SELECT ?, new_guest.id, ?, ?, 'open', ?, ?, ?, ? FROM new_guest RETURNING id, guest_id")
_GUEST_NAME = update(GUEST).where(GUEST.c.id == bindparam("guest_id")).values(name=bindparam("name"))


class KnownGuest(NamedTuple):
    id: int
    email: str
    name: str


def find_guest(conn: Connection, studio_id: int, email: str) -> KnownGuest | None:
    row = _GUEST(conn, (studio_id, email)).fetchone()
    return None if row is None else KnownGuest(*row)


class ChunkLookups:
    """What a chunk's messages will ask first, asked once for the whole chunk.

    Every message asks whether it was seen (stored or erased) and who its sender is as a
    guest: two statements per message, or two per chunk when asked together beforehand
    (`prefetch`). Answers are kept current with what the chunk itself writes (a message
    stored, a guest created or named), so the second of two deliveries in one chunk is still
    a duplicate and a guest's second mail finds the guest. A key that was not prefetched is
    asked of the database as before. Only valid while the chunk's transaction is whole: the
    processor drops it when it redoes a chunk with a savepoint per message.
    """

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], str | None] = {}
        self.guests: dict[tuple[int, str], KnownGuest | None] = {}

    def prefetch(self, conn: Connection, keys: list[tuple[int, str, str]]) -> None:
        """`keys`: (studio id, dedupe key, sender email) of each message about to be threaded."""
        if not keys:
            return
        studio_ids = sorted({k[0] for k in keys})
        dedupe_keys = sorted({k[1] for k in keys})
        emails = sorted({k[2] for k in keys})
        studios = ", ".join("?" * len(studio_ids))
        dedupes = ", ".join("?" * len(dedupe_keys))
        found: dict[tuple[int, str], str] = {}
        for studio_id, dedupe_key, seen in DriverSQL(
                f"SELECT studio_id, dedupe_key, 'duplicate' FROM message WHERE studio_id IN ({studios}) "
                f"AND dedupe_key IN ({dedupes}) UNION ALL SELECT studio_id, dedupe_key, 'erased' FROM tombstone "
                f"WHERE studio_id IN ({studios}) AND dedupe_key IN ({dedupes})")(
                conn, [*studio_ids, *dedupe_keys, *studio_ids, *dedupe_keys]).fetchall():
            if found.get((studio_id, dedupe_key)) != "duplicate":  # as _SEEN: stored before erased
                found[(studio_id, dedupe_key)] = seen
        guests = {(row[0], row[2]): KnownGuest(*row[1:]) for row in DriverSQL(
            f"SELECT studio_id, id, email, name FROM guest WHERE studio_id IN ({studios}) "
            f"AND email IN ({', '.join('?' * len(emails))})")(conn, [*studio_ids, *emails]).fetchall()}
        for studio_id, dedupe_key, email in keys:
            self.seen[(studio_id, dedupe_key)] = found.get((studio_id, dedupe_key))
            self.guests[(studio_id, email)] = guests.get((studio_id, email))


def seen_before(conn: Connection, lookups: ChunkLookups | None, studio_id: int, dedupe_key: str) -> str | None:
    if lookups is not None and (studio_id, dedupe_key) in lookups.seen:
        return lookups.seen[(studio_id, dedupe_key)]
    row = _SEEN(conn, (studio_id, dedupe_key, studio_id, dedupe_key)).fetchone()
    return None if row is None else str(row[0])


def guest_of(conn: Connection, lookups: ChunkLookups | None, studio_id: int, email: str) -> KnownGuest | None:
    if lookups is not None and (studio_id, email) in lookups.guests:
        return lookups.guests[(studio_id, email)]
    return find_guest(conn, studio_id, email)


def remember_guest(lookups: ChunkLookups | None, studio_id: int, guest: KnownGuest) -> None:
    if lookups is not None:
        lookups.guests[(studio_id, guest.email)] = guest


def name_guest(conn: Connection, lookups: ChunkLookups | None, studio_id: int, guest: KnownGuest,
               name: str) -> None:
    """A guest first known by address alone gets the name a later mail of theirs came with."""
    conn.execute(_GUEST_NAME, {"guest_id": guest.id, "name": name[:200]})
    remember_guest(lookups, studio_id, guest._replace(name=name[:200]))


def open_conversation(conn: Connection, studio_id: int, guest_id: int, subject: str, now: datetime, *,
                      message_count: int = 0) -> int:
    """A new open conversation of the studio with the guest; its id."""
    when = bind_processor(conn, CONVERSATION.c.created_at)(now)
    return int(_NEW_CONVERSATION(conn, (studio_id, guest_id, subject, normalize_subject(subject), when, when,
                                        when, message_count)).fetchone()[0])


def open_guest_conversation(conn: Connection, studio_id: int, sender: Address, guest: KnownGuest | None,
                            subject: str, now: datetime, lookups: ChunkLookups | None = None, *,
                            message_count: int = 0) -> tuple[int, int]:
    """`ensure_known_guest`, then `open_conversation`: (conversation id, guest id). On PostgreSQL
    a guest not known yet is inserted together with the conversation, in one statement."""
    if guest is None and conn.dialect.name == "postgresql":
        opened = open_new_guest_conversation(conn, studio_id, sender, subject, now, lookups,
                                             message_count=message_count)
        if opened is not None:
            return opened
        guest = find_guest(conn, studio_id, sender.email)  # created a moment ago by another processor
        if guest is None:
            raise LookupError(f"guest {sender.email!r} neither inserted nor found")
    guest_id = ensure_known_guest(conn, studio_id, sender, guest, lookups)
    return open_conversation(conn, studio_id, guest_id, subject, now, message_count=message_count), guest_id


def open_new_guest_conversation(conn: Connection, studio_id: int, sender: Address, subject: str, now: datetime,
                                lookups: ChunkLookups | None = None, *,
                                message_count: int = 0) -> tuple[int, int] | None:
    """A new guest and the conversation their first message opens: (conversation id, guest id);
    None, with nothing written, when the guest exists already. One statement on PostgreSQL
    (a round trip of its own each is what the form's group commit waits for, bench/form_submit.py)."""
    if conn.dialect.name != "postgresql":
        created = insert_guest(conn, studio_id, sender, lookups)
        if created is None:
            return None
        return open_conversation(conn, studio_id, created, subject, now, message_count=message_count), created
    when = bind_processor(conn, CONVERSATION.c.created_at)(now)
    email, name = sender.email[:320], sender.name[:200]
    row = _NEW_GUEST_CONVERSATION_PG(conn, (
        studio_id, email, name, bind_processor(conn, GUEST.c.created_at)(utcnow()),
        studio_id, subject, normalize_subject(subject), when, when, when, message_count)).fetchone()
    if row is None:
        return None
    remember_guest(lookups, studio_id, KnownGuest(int(row[1]), email, name))
    return int(row[0]), int(row[1])


def ensure_guest(conn: Connection, studio_id: int, email: str, name: str = "") -> int:
    """The studio's guest with this address, created when new: for conversations the gateway opens
    itself (the helpdesk writing to a studio owner), not only those a guest's mail opens."""
    sender = Address(email=normalize_email(email), name=name)
    return ensure_known_guest(conn, studio_id, sender, find_guest(conn, studio_id, sender.email))


def insert_guest(conn: Connection, studio_id: int, sender: Address, lookups: ChunkLookups | None = None) -> int | None:
    """A new guest's id; None when the guest exists already (created a moment ago by another
    transaction). A caller that inserted the guest knows it has no history yet: the inquiry
    form then skips asking whether this address was confirmed today."""
    created = _NEW_GUEST(conn, (studio_id, sender.email[:320], sender.name[:200],
                                bind_processor(conn, GUEST.c.created_at)(utcnow()))).fetchone()
    if created is None:
        return None
    remember_guest(lookups, studio_id, KnownGuest(int(created[0]), sender.email[:320], sender.name[:200]))
    return int(created[0])


def ensure_known_guest(conn: Connection, studio_id: int, sender: Address, guest: Any,
                  lookups: ChunkLookups | None = None) -> int:
    if guest is not None:
        if not guest.name and sender.name:
            name_guest(conn, lookups, studio_id, guest, sender.name)
        return int(guest.id)
    created = insert_guest(conn, studio_id, sender, lookups)
    if created is not None:
        return created
    # Another processor created this guest a moment ago (PostgreSQL, several workers).
    again = find_guest(conn, studio_id, sender.email)
    if again is None:
        raise LookupError(f"guest {sender.email!r} neither inserted nor found")
    return again.id
