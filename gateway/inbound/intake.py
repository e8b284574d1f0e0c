"""Storing raw mail: the statements of a group commit, and nothing else.

`store_batch` writes a batch of accepted messages (raw bytes as blobs, one `inbound_mail` row
each) inside the caller's transaction, with a handful of statements per batch, not per
message: it runs while every sender in the batch waits for its `250`. The flood brake is
decided here too (a sender opening too many conversations at one studio within the hour),
because it must be answered before the `250`. The acceptor (gateway/inbound/acceptor.py)
owns the transactions and the answers; the processor reads these rows later.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.dialects import postgresql

from gateway.inbound.headers import HeaderPeek, peek
from gateway.mail.addresses import parse_studio_address, verify_reply_token
from gateway.mail.subjects import normalize_subject
from gateway.settings import Settings
from gateway.store.blobs import DatabaseBlobStore, blob_store, sha256_hex
from gateway.store.db import bind_processor, driver_execute
from gateway.store.models import utcnow
from gateway.store.tables import BLOB, CONVERSATION, GUEST, INBOUND, MESSAGE, STUDIO


class FloodLimited(Exception):
    """The sender opened too many new conversations at a studio this hour (450 4.7.1)."""


class Replayed(Exception):
    """A webhook request's one-time token was already used with a stored message."""


@dataclass
class Envelope:
    mail_from: str
    rcpt_tos: list[str]
    peer: str = ""
    source: str = "smtp"
    nonce: str | None = None  # a provider's one-time request token, recorded with the message
    authentication: str | None = None  # a provider's SPF/DKIM/DMARC verdicts, JSON (webhooks/verdicts.py)
    studio_ids: list[int] = field(default_factory=list)  # filled in by the Acceptor once stored, for its log line


# Built once: constructing SQLAlchemy statements costs more than SQLite takes to run them,
# and this runs while every sender in a group commit waits for its `250`.
_STUDIOS = select(STUDIO.c.slug, STUDIO.c.id).where(STUDIO.c.slug.in_(bindparam("slugs", expanding=True)))


class StudioIds:
    """slug → studio id for the flood guard, cached briefly by the acceptor (one batch at a time).

    Studios change rarely and this lookup ran in every group commit; a studio created a moment
    ago is looked up at once (only hits are cached), and a stale id for a few seconds after a
    deletion only affects the flood brake, never where mail is filed.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._known: dict[str, tuple[int, float]] = {}

    def lookup(self, conn: Connection, slugs: set[str]) -> dict[str, int]:
        now = time.monotonic()
        found: dict[str, int] = {}
        missing: list[str] = []
        for slug in slugs:
            hit = self._known.get(slug)
            if hit is not None and hit[1] > now:
                found[slug] = hit[0]
            else:
                missing.append(slug)
        if missing:
            for slug, studio_id in conn.execute(_STUDIOS, {"slugs": missing}).all():
                found[slug] = studio_id
                self._known[slug] = (studio_id, now + self.ttl)
        return found

    def known(self, slug: str) -> int | None:
        """The id last looked up for a slug, however old: for log lines, never for filing mail."""
        hit = self._known.get(slug)
        return hit[0] if hit is not None else None


def store_batch(conn: Connection, items: list[tuple[bytes, Envelope]], settings: Settings,
                secret: bytes, studio_ids: StudioIds | None = None) -> list[int | Exception]:
    """Store raw messages inside the caller's transaction; per item an inbound id or FloodLimited.

    A handful of statements per batch, not per message: this runs while every sender in the
    batch waits for its `250`.
    """
    heads = [peek(raw) for raw, _ in items]
    replayed = _replayed(items)
    flooded = _flooded(conn, items, heads, settings, secret, studio_ids or StudioIds()) - replayed
    keep = [i for i in range(len(items)) if i not in flooded and i not in replayed]
    ids: list[int] = []
    if keep:
        now = utcnow()
        together = conn.dialect.name == "postgresql" and isinstance(blob_store, DatabaseBlobStore)
        raws = [items[i][0] for i in keep]
        # PostgreSQL: the blobs go in with the rows' statement (_insert_inbound_pg), one round trip
        digests = [sha256_hex(raw) for raw in raws] if together else blob_store.put_many(conn, raws)
        rows = [{"received_at": now, "source": items[i][1].source, "peer": items[i][1].peer[:200],
                 "mail_from": items[i][1].mail_from[:320], "rcpt_to": json.dumps(items[i][1].rcpt_tos),
                 "raw_sha256": digest, "size": len(items[i][0]), "status": "pending", "attempts": 0,
                 "nonce": items[i][1].nonce, "authentication": items[i][1].authentication}
                for i, digest in zip(keep, digests)]
        if conn.dialect.name == "sqlite":
            ids = _insert_inbound_sqlite(conn, rows)
        else:
            ids = _insert_inbound_pg(conn, rows, raws if together else None)
    stored = dict(zip(keep, ids))
    return [stored[i] if i in stored else Replayed() if i in replayed else FloodLimited(heads[i].from_email)
            for i in range(len(items))]


_INBOUND_COLUMNS = ("received_at", "source", "peer", "mail_from", "rcpt_to", "raw_sha256", "size", "status",
                    "attempts", "nonce", "authentication")


def _insert_inbound_sqlite(conn: Connection, rows: list[dict[str, object]]) -> list[int]:
    """One multi-row INSERT … RETURNING through the driver: the acceptor's hottest statement.

    SQLAlchemy's insertmanyvalues costs more CPU than SQLite takes to run it. Ids are handed
    out in VALUES order (max(rowid)+1 per row, under the write lock this transaction holds),
    so the returned ids sorted ascending line up with `rows`, as SQLAlchemy's own sorting of
    an autoincrement key assumes.
    """
    received = bind_processor(conn, INBOUND.c.received_at)(rows[0]["received_at"])
    ids: list[int] = []
    per_row = ", ".join("?" * len(_INBOUND_COLUMNS))
    for start in range(0, len(rows), 500):  # SQLite allows 32766 parameters per statement
        chunk = rows[start:start + 500]
        sql = (f"INSERT INTO inbound_mail ({', '.join(_INBOUND_COLUMNS)}) VALUES "
               + ", ".join(f"({per_row})" for _ in chunk) + " RETURNING id")
        params = [received if name == "received_at" else row[name] for row in chunk for name in _INBOUND_COLUMNS]
        ids.extend(sorted(r[0] for r in driver_execute(conn, sql, params).fetchall()))
    return ids


def _pg_casts() -> str:
    dialect = postgresql.dialect()
    return ", ".join(f"%s::{INBOUND.c[name].type.compile(dialect=dialect)}" for name in _INBOUND_COLUMNS)


_PG_ROW = _pg_casts()  # one row's placeholders, each cast to its column's type


def _insert_inbound_pg(conn: Connection, rows: list[dict[str, object]], raws: list[bytes] | None = None) -> list[int]:
    """The same for PostgreSQL: one statement through the driver, without insertmanyvalues' CPU
    (about a third of a group commit's, which the acceptor thread spent holding the GIL the
    SMTP loop needs). Ids are drawn in the ORDER BY's order, as SQLAlchemy's own
    sort_by_parameter_order does it, so the ids sorted ascending line up with `rows`.

    With `raws` (the database blob store), the blobs are inserted by the same statement, in a
    WITH clause: one round trip fewer for every group commit, while its senders wait. The
    rows' foreign key to the blob is checked at the statement's end, when the blobs are in."""
    received = bind_processor(conn, INBOUND.c.received_at)(rows[0]["received_at"])
    columns = ", ".join(_INBOUND_COLUMNS)
    ids: list[int] = []
    for start in range(0, len(rows), 500):  # 5,500 parameters (+2,000 with blobs); PostgreSQL allows 65,535
        chunk = rows[start:start + 500]
        params: list[object] = []
        blobs = ""
        if raws is not None:
            created = bind_processor(conn, BLOB.c.created_at)(rows[0]["received_at"])
            unique = {row["raw_sha256"]: raw for row, raw in zip(chunk, raws[start:start + 500])}
            blobs = ("WITH blobs AS (INSERT INTO blob (sha256, size, data, created_at) VALUES "
                     + ", ".join(["(%s, %s, %s, %s)"] * len(unique)) + " ON CONFLICT DO NOTHING) ")
            params = [value for digest, raw in unique.items() for value in (digest, len(raw), raw, created)]
        sql = (f"{blobs}INSERT INTO inbound_mail ({columns}) SELECT {columns} FROM (VALUES "
               + ", ".join(f"({_PG_ROW}, {n})" for n in range(len(chunk)))
               + f") AS row_values ({columns}, row_number) ORDER BY row_number RETURNING id")
        params += [received if name == "received_at" else row[name] for row in chunk for name in _INBOUND_COLUMNS]
        ids.extend(sorted(r[0] for r in driver_execute(conn, sql, params).fetchall()))
    return ids


def _replayed(items: list[tuple[bytes, Envelope]]) -> set[int]:
    """Indexes of items that repeat a one-time token already used earlier in the batch.

    A token used in an earlier transaction makes the insert collide on inbound_mail's unique
    (source, nonce) index instead (replays are rare, so the common case costs nothing extra);
    the Acceptor then stores the batch item by item and answers `Replayed` for that one.
    """
    seen: set[tuple[str, str]] = set()
    replayed: set[int] = set()
    for index, (_, envelope) in enumerate(items):
        if envelope.nonce is not None:
            key = (envelope.source, envelope.nonce)
            if key in seen:
                replayed.add(index)
            seen.add(key)
    return replayed


def _flooded(conn: Connection, items: list[tuple[bytes, Envelope]], heads: list[HeaderPeek],
             settings: Settings, secret: bytes, studio_ids: StudioIds) -> set[int]:
    """Indexes of items that would open one new conversation too many; replies always pass.

    One query finds the senders of this batch who opened conversations at its studios in the
    last hour (through the unique guest index, so its cost does not grow with the studio's
    traffic). Conversations of messages accepted but not yet threaded are not counted: the
    guard is a brake on floods, not an exact quota; messages of the batch itself are.
    """
    wanted: list[tuple[int, str, str]] = []  # (item index, slug, sender) for non-reply-address mail
    for index, ((_, envelope), head) in enumerate(zip(items, heads)):
        sender = head.from_email or envelope.mail_from.lower()
        if not sender:
            continue
        for rcpt in envelope.rcpt_tos:
            address = parse_studio_address(rcpt, settings.mail_domain)
            if address is not None:
                wanted.append((index, address.slug, sender))
    if not wanted:
        return set()
    studios = studio_ids.lookup(conn, {slug for _, slug, _ in wanted})
    if not studios:
        return set()
    opened = _opened(conn, list(set(studios.values())), list({sender for _, _, sender in wanted}),
                     utcnow() - timedelta(hours=1))
    flooded: set[int] = set()
    for index, slug, sender in wanted:
        studio_id = studios.get(slug)
        if studio_id is None or index in flooded:
            continue
        rcpt_details = [a.detail for a in (parse_studio_address(r, settings.mail_domain)
                                           for r in items[index][1].rcpt_tos) if a and a.slug == slug]
        if any(d and verify_reply_token(secret, studio_id, d) is not None for d in rcpt_details):
            continue
        key = (studio_id, sender)
        if opened.get(key, 0) < settings.flood_max_new_per_hour:
            opened[key] = opened.get(key, 0) + 1  # this message may open one more
            continue
        if not _looks_like_reply(conn, studio_id, sender, heads[index], settings):
            flooded.add(index)
    return flooded


def _opened(conn: Connection, studio_ids: list[int], emails: list[str], since: datetime) -> dict[tuple[int, str], int]:
    """Conversations each (studio, sender) opened since `since`. studio_id in the join lets
    ix_conversation_guest_created (studio, guest, created) serve it; without it the database
    scanned every conversation once per group commit.

    The statement goes to the driver: SQLAlchemy re-renders an expanding IN on every
    execution, which cost more than the query (once per group commit, while senders wait; on
    PostgreSQL in the acceptor's thread, holding the GIL the SMTP loop needs).
    """
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    sql = ("SELECT guest.studio_id, guest.email, count(conversation.id) FROM guest "
           "JOIN conversation ON conversation.studio_id = guest.studio_id AND conversation.guest_id = guest.id "
           f"AND conversation.created_at >= {mark} "
           f"WHERE guest.studio_id IN ({', '.join([mark] * len(studio_ids))}) "
           f"AND guest.email IN ({', '.join([mark] * len(emails))}) GROUP BY guest.studio_id, guest.email")
    params = [bind_processor(conn, CONVERSATION.c.created_at)(since), *studio_ids, *emails]
    return {(studio_id, email): count for studio_id, email, count in driver_execute(conn, sql, params).fetchall()}


def _looks_like_reply(conn: Connection, studio_id: int, sender: str, head: HeaderPeek,
                      settings: Settings) -> bool:
    ids = head.reply_ids[:100]
    if ids and conn.execute(
        select(MESSAGE.c.id).where(MESSAGE.c.studio_id == studio_id, MESSAGE.c.message_id.in_(ids)).limit(1)
    ).first():
        return True
    key = normalize_subject(head.subject)
    since = utcnow() - timedelta(days=settings.subject_fallback_days)
    return conn.execute(
        select(CONVERSATION.c.id).join(GUEST, CONVERSATION.c.guest_id == GUEST.c.id)
        .where(CONVERSATION.c.studio_id == studio_id, GUEST.c.email == sender,
               CONVERSATION.c.subject_key == key, CONVERSATION.c.last_message_at >= since).limit(1)
    ).first() is not None


def discard_inbound(conn: Connection, inbound_id: int) -> bool:
    """Delete an accepted mail that no message refers to, with its raw bytes unless another
    row holds the same bytes: its studios were deleted before it was threaded, and an erased
    account's mail must not be kept anywhere, not even in the quarantine."""
    sha = conn.execute(select(INBOUND.c.raw_sha256).where(INBOUND.c.id == inbound_id)).scalar_one_or_none()
    if sha is None:
        return False
    if conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.inbound_mail_id == inbound_id).limit(1)).first():
        return False
    conn.execute(delete(INBOUND).where(INBOUND.c.id == inbound_id))
    blob_store.drop_unreferenced(conn, {sha})
    return True
