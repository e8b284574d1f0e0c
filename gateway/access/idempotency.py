"""Idempotency keys: a retried POST gets the first answer again instead of doing the work twice.

A messenger app on a train sends a reply, the connection drops before the `202` arrives, and
the app sends it again: without a key the guest got two mails. With `Idempotency-Key` the
first request *claims* (studio, key) by inserting a row; the primary key makes that claim
exact across every web process on one database (`INSERT ... ON CONFLICT DO NOTHING`, no
process memory). Its answer is kept for `TTL` and replayed to every retry with the same key.

The rules (the HTTP side is gateway/api/idempotency.py, documented in docs/api.md):

- Only a 2xx answer is kept. A 4xx or 5xx releases the claim (the row is deleted), so a
  retry after a `503` or a fixed body runs again: nothing was created the first time.
- The same key with another body or on another path is `KeyReused` (422): the client has
  a bug, and replaying an answer to a different request would hide it.
- The same key while the first request runs is `InProgress` (409). A claim whose request
  died with its process (no answer after `TAKEOVER_AFTER`) is taken over by the next retry;
  a request still running that long is past every client's timeout anyway.
- Secrets shown once are never stored (the caller redacts the body before `complete`).
- Rows live `TTL` after their answer; expired ones count as absent (and are taken over),
  and the periodic purge deletes them (`purge_expired`).

Ownership of a claim is its `started_at`: `complete` and `release` only touch the row while
it is still the claim they were given, so a request that was taken over cannot overwrite the
answer of the one that took it over.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update

from gateway.store.db import dialect_insert
from gateway.store.tables import IDEMPOTENCY_KEY

TTL = timedelta(hours=24)
TAKEOVER_AFTER = timedelta(minutes=5)
MAX_KEY = 255
# Printable ASCII without spaces: a key is an opaque token (a UUID, usually), and one that
# differs from another only by surrounding whitespace is a client bug we should not guess at.
KEY_PATTERN = r"^[!-~]{1,255}$"
_KEY = re.compile(KEY_PATTERN)
_PATH = IDEMPOTENCY_KEY.c.path.type.length


class KeyReused(Exception):
    """The key was used for a different request (another body or path) within `TTL`."""


class InProgress(Exception):
    """The first request with this key has not answered yet."""


@dataclass(frozen=True)
class Claim:
    studio_id: int
    key: str
    started_at: datetime  # which claim this is: a takeover gives the row a new one


@dataclass(frozen=True)
class Stored:
    """The first request's answer, as the retry gets it."""

    status_code: int
    headers: list[tuple[str, str]]
    body: bytes


def valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same": method, path and body. A JSON body is compared
    parsed (key order and spacing do not matter, as a client library re-encoding it may change
    them); anything else as given. (Multipart forms arrive here already in a canonical form:
    gateway/api/idempotency.py, since libraries draw a new boundary for every attempt.)"""
    canonical = body
    if body.strip():
        try:
            canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
        except ValueError:
            pass  # not JSON: the bytes as sent
    digest = hashlib.sha256(f"{method.upper()} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def claim(conn: Connection, studio_id: int, key: str, fingerprint: str, path: str, now: datetime) -> Claim | Stored:
    """Claim (studio, key) for a new request, or the stored answer to replay.

    Raises KeyReused or InProgress. Call in a transaction of its own, committed before the
    work starts, so that concurrent requests see the claim."""
    fresh = {"fingerprint": fingerprint, "path": path[:_PATH], "started_at": now, "expires_at": now + TTL,
             "status_code": None, "headers": None, "body": None}
    for _ in range(2):  # a row deleted between the insert and the read: insert again
        # RETURNING says whether the row went in (psycopg reports no rowcount for ON CONFLICT).
        if conn.execute(dialect_insert(conn, IDEMPOTENCY_KEY).values(studio_id=studio_id, key=key, **fresh)
                        .on_conflict_do_nothing(index_elements=["studio_id", "key"])
                        .returning(IDEMPOTENCY_KEY.c.key)).first() is not None:
            return Claim(studio_id, key, now)
        row = conn.execute(select(IDEMPOTENCY_KEY).where(
            IDEMPOTENCY_KEY.c.studio_id == studio_id, IDEMPOTENCY_KEY.c.key == key)).first()
        if row is None:
            continue
        expired = row.expires_at <= now
        if not expired and row.fingerprint != fingerprint:
            raise KeyReused(f"this Idempotency-Key was used for a different request in the last "
                            f"{int(TTL.total_seconds() // 3600)} hours")
        if not expired and row.status_code is not None:
            return Stored(row.status_code, [(str(n), str(v)) for n, v in json.loads(row.headers or "[]")],
                          row.body or b"")
        if not expired and row.started_at > now - TAKEOVER_AFTER:
            raise InProgress("a request with this Idempotency-Key is still being processed")
        # Expired, or abandoned by a process that died: take it over, unless another retry just did.
        taken = conn.execute(update(IDEMPOTENCY_KEY).where(*_same(Claim(studio_id, key, row.started_at)))
                             .values(**fresh)).rowcount
        if taken == 1:
            return Claim(studio_id, key, now)
        raise InProgress("a request with this Idempotency-Key is still being processed")
    raise InProgress("a request with this Idempotency-Key is still being processed")


def complete(conn: Connection, claim: Claim, status_code: int, headers: list[tuple[str, str]], body: bytes,
             now: datetime) -> bool:
    """Keep the answer for `TTL`; False when the claim was taken over meanwhile."""
    return conn.execute(update(IDEMPOTENCY_KEY).where(*_same(claim), IDEMPOTENCY_KEY.c.status_code.is_(None)).values(
        status_code=status_code, headers=json.dumps(headers), body=body, expires_at=now + TTL)).rowcount == 1


def release(conn: Connection, claim: Claim) -> None:
    """Forget a claim whose request failed, so that a retry runs it again."""
    conn.execute(delete(IDEMPOTENCY_KEY).where(*_same(claim), IDEMPOTENCY_KEY.c.status_code.is_(None)))


def purge_expired(conn: Connection, now: datetime) -> int:
    """Delete the answers older than `TTL` (an index range on expires_at); how many went."""
    return conn.execute(delete(IDEMPOTENCY_KEY).where(IDEMPOTENCY_KEY.c.expires_at <= now)).rowcount


def forget_conversation(conn: Connection, studio_id: int, conversation_id: int) -> None:
    """Drop the stored answers to replies in a conversation being erased (gateway/lifecycle/
    erasure.py): a reply's answer holds its text, which must not outlive the erasure by a day.
    The path is the API's (`/api/v1/conversations/{id}/replies...`); a retry after this runs
    again and finds the conversation gone."""
    conn.execute(delete(IDEMPOTENCY_KEY).where(
        IDEMPOTENCY_KEY.c.studio_id == studio_id,
        IDEMPOTENCY_KEY.c.path.startswith(f"/api/v1/conversations/{conversation_id}/", autoescape=True)))


def _same(claim: Claim) -> tuple[Any, ...]:
    return (IDEMPOTENCY_KEY.c.studio_id == claim.studio_id, IDEMPOTENCY_KEY.c.key == claim.key,
            IDEMPOTENCY_KEY.c.started_at == claim.started_at)

