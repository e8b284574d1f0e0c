"""The proof of work our page asks of browsers: ALTCHA's protocol v1, verified by the PyPI
`altcha` library (the widget is vendored, gateway/web/static/form/altcha/VERSIONS).

A challenge is bound to the studio (a parameter in its signed salt) and expires after
CHALLENGE_LIFETIME. A solution is accepted once: it is recorded in form_challenge_used until
its challenge expires, so a bot that solved one challenge cannot post a thousand times with it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from altcha import create_challenge_v1, extract_params_v1, verify_solution_v1
from sqlalchemy import Connection, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import FORM_CHALLENGE_USED

FIELD = "altcha"
CHALLENGE_LIFETIME = timedelta(minutes=20)
# About 0.05-0.5 s of SHA-256 on a phone (the widget's workers search 0..max_number).
MAX_NUMBER = 50_000


def _key(secret: bytes) -> str:
    return hmac.new(secret, b"form-altcha", hashlib.sha256).hexdigest()


def new_challenge(secret: bytes, studio_id: int, max_number: int = MAX_NUMBER) -> dict[str, Any]:
    """A fresh challenge as the widget fetches it (JSON)."""
    challenge = create_challenge_v1(hmac_key=_key(secret), max_number=max_number,
                                    expires=utcnow() + CHALLENGE_LIFETIME, params={"studio": str(studio_id)})
    return challenge.to_dict()


@dataclass(frozen=True)
class Solution:
    """A verified solution, not yet spent: the challenge it solves and when that expires."""

    challenge: str
    expires: datetime


def verified(secret: bytes, studio_id: int, payload: str) -> Solution | None:
    """The solution if it solves an unexpired challenge of ours for this studio (CPU only: it
    runs before the post's transaction, `spend` records it inside)."""
    if not payload or len(payload) > 4000:
        return None
    ok, _ = verify_solution_v1(payload, _key(secret), check_expires=True)
    if not ok:
        return None
    try:
        decoded = json.loads(base64.b64decode(payload))
        params = extract_params_v1(decoded)
        expires = datetime.fromtimestamp(int(params["expires"][0]), timezone.utc)
    except (ValueError, KeyError, TypeError, IndexError):
        return None   # we always sign an expiry; a challenge without one is not ours
    if params.get("studio") != [str(studio_id)]:
        return None
    return Solution(str(decoded["challenge"])[:128], expires)


def spend(conn: Connection, solution: Solution) -> bool:
    """True the first time, in the caller's transaction (the post's own); False when it was
    spent before. Two posts racing with one solution meet at the primary key: the second
    waits for the first's commit (PostgreSQL) or for the write lock (SQLite), then finds it
    spent. Spent solutions are dropped once their challenge has expired."""
    _DROP_EXPIRED.execute(conn, now=utcnow())
    # RETURNING, not rowcount: psycopg's rowcount for this INSERT came back -1 through SQLAlchemy.
    return _SPEND[conn.dialect.name].execute(conn, challenge=solution.challenge,
                                             expires_at=solution.expires).fetchone() is not None


_STAMP = FORM_CHALLENGE_USED.c.expires_at.type
_DROP_EXPIRED = Prepared(delete(FORM_CHALLENGE_USED).where(FORM_CHALLENGE_USED.c.expires_at <= bindparam("now", type_=_STAMP)))


def _spend(dialect: Any) -> Prepared:
    return Prepared(dialect.insert(FORM_CHALLENGE_USED).values(
        challenge=bindparam("challenge"), expires_at=bindparam("expires_at", type_=_STAMP))
        .on_conflict_do_nothing().returning(FORM_CHALLENGE_USED.c.challenge))


_SPEND = {"sqlite": _spend(sqlite), "postgresql": _spend(postgresql)}
