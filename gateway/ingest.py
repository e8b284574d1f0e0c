"""The one ingest pipeline's front half: every accepted message is durably stored here first.

SMTP and the provider webhooks both call `Acceptor.accept`. It answers only after the raw
bytes and the envelope are committed (fsync'd), and it does so in group commits: all messages
that arrive while one transaction is being written share the next transaction and its single
fsync. That is what lets acceptance keep pace with a do-nothing server while every `250` is
durable. Parsing and threading happen afterwards (see `processor.py`), as in Mailman, Zulip
and Action Mailbox, so a message that cannot be parsed is never refused for that.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import OperationalError

from gateway.blobs import blob_store
from gateway.conversations import normalize_subject, parse_studio_address, verify_reply_token
from gateway.db import write_tx
from gateway.headers import HeaderPeek, peek
from gateway.models import Conversation, Guest, InboundMail, Message, Studio, utcnow
from gateway.settings import Settings

log = logging.getLogger(__name__)

INBOUND = InboundMail.__table__  # type: ignore[attr-defined]
STUDIO = Studio.__table__  # type: ignore[attr-defined]
GUEST = Guest.__table__  # type: ignore[attr-defined]
CONVERSATION = Conversation.__table__  # type: ignore[attr-defined]
MESSAGE = Message.__table__  # type: ignore[attr-defined]


class TemporaryFailure(Exception):
    """Storage is unavailable: the sender must keep the message and retry (451 / 503)."""


class FloodLimited(Exception):
    """The sender opened too many new conversations at a studio this hour (450 4.7.1)."""


@dataclass
class Envelope:
    mail_from: str
    rcpt_tos: list[str]
    peer: str = ""
    source: str = "smtp"


@dataclass
class _Pending:
    raw: bytes
    envelope: Envelope
    future: asyncio.Future[int] = field(repr=False)


def store_batch(conn: Connection, items: list[tuple[bytes, Envelope]], settings: Settings,
                secret: bytes) -> list[int | Exception]:
    """Store raw messages inside the caller's transaction; per item an inbound id or FloodLimited."""
    results: list[int | Exception] = []
    now = utcnow()
    for raw, envelope in items:
        head = peek(raw)
        try:
            _check_flood(conn, head, envelope, settings, secret)
        except FloodLimited as exc:
            results.append(exc)
            continue
        digest = blob_store.put(conn, raw)
        inbound_id = conn.execute(
            insert(INBOUND).returning(INBOUND.c.id),
            {"received_at": now, "source": envelope.source, "peer": envelope.peer[:200],
             "mail_from": envelope.mail_from[:320], "rcpt_to": json.dumps(envelope.rcpt_tos),
             "raw_sha256": digest, "size": len(raw), "status": "pending", "attempts": 0},
        ).scalar_one()
        results.append(inbound_id)
    return results


def _check_flood(conn: Connection, head: HeaderPeek, envelope: Envelope, settings: Settings,
                 secret: bytes) -> None:
    """Refuse new conversations beyond the hourly limit; replies always pass.

    Counted from committed conversations, so messages accepted but not yet threaded (a few
    milliseconds' worth) are not counted: the guard is a brake on floods, not an exact quota.
    """
    sender = head.from_email or envelope.mail_from.lower()
    if not sender:
        return
    since = utcnow() - timedelta(hours=1)
    for rcpt in envelope.rcpt_tos:
        address = parse_studio_address(rcpt, settings.mail_domain)
        if address is None:
            continue
        studio_id = conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == address.slug)).scalar()
        if studio_id is None:
            continue
        if address.detail and verify_reply_token(secret, studio_id, address.detail) is not None:
            continue
        opened = conn.execute(
            select(func.count()).select_from(CONVERSATION.join(GUEST, CONVERSATION.c.guest_id == GUEST.c.id))
            .where(CONVERSATION.c.studio_id == studio_id, GUEST.c.email == sender,
                   CONVERSATION.c.created_at >= since)
        ).scalar_one()
        if opened < settings.flood_max_new_per_hour:
            continue
        if _looks_like_reply(conn, studio_id, sender, head, settings):
            continue
        raise FloodLimited(sender)


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


class Acceptor:
    """Group-commit writer shared by all receivers in one process.

    One writer thread owns the write transactions, so on SQLite there is never more than one
    writer from this process, and on PostgreSQL one connection suffices for ingest.
    """

    def __init__(self, engine: Engine, settings: Settings, *, max_batch: int = 256,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.secret = settings.secret()
        self.max_batch = max_batch
        self.on_stored = on_stored
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acceptor")
        self._lock = threading.Lock()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="acceptor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def accept(self, raw: bytes, envelope: Envelope) -> int:
        """The inbound id once committed; raises TemporaryFailure or FloodLimited."""
        if self._queue is None:
            raise RuntimeError("Acceptor.start() was not awaited")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(raw, envelope, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._executor, self._write, batch)
            except Exception as exc:  # database or disk trouble: nothing of the batch was committed
                log.warning("storing %d message(s) failed, answering temporary failure: %s",
                            len(batch), type(exc).__name__)
                log.debug("store failure detail", exc_info=True)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(TemporaryFailure(type(exc).__name__))
                continue
            for item, result in zip(batch, results):
                if item.future.done():  # the client went away; the message is stored regardless
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            if self.on_stored and any(not isinstance(r, Exception) for r in results):
                self.on_stored()

    def _write(self, batch: list[_Pending]) -> list[int | Exception]:
        items = [(p.raw, p.envelope) for p in batch]
        try:
            with write_tx(self.engine) as conn:
                return store_batch(conn, items, self.settings, self.secret)
        except OperationalError:
            raise  # the database is unreachable or locked: every item of the batch must retry
        except Exception:
            if len(items) == 1:
                raise
        # Something in one message upset the database: store the others one by one, so an
        # innocent sender in the same group commit is not told to retry because of it.
        results: list[int | Exception] = []
        for item in items:
            try:
                with write_tx(self.engine) as conn:
                    results.extend(store_batch(conn, [item], self.settings, self.secret))
            except OperationalError:
                raise
            except Exception as exc:
                log.warning("storing one message failed: %s", type(exc).__name__, exc_info=True)
                results.append(TemporaryFailure(type(exc).__name__))
        return results
