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
from datetime import datetime, timedelta, timezone
from typing import Any

from altcha import create_challenge_v1, extract_params_v1, verify_solution_v1
from sqlalchemy import Engine, delete, insert, literal
from sqlalchemy.exc import IntegrityError

from gateway.store.db import write_tx
from gateway.store.models import utcnow
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


def spend(engine: Engine, secret: bytes, studio_id: int, payload: str) -> bool:
    """True once for a valid, unexpired solution of this studio's challenge; False for anything
    else, including the same solution a second time (two posts racing with one solution meet
    at the primary key, and one of them gets False)."""
    if not payload or len(payload) > 4000:
        return False
    ok, _ = verify_solution_v1(payload, _key(secret), check_expires=True)
    if not ok:
        return False
    try:
        decoded = json.loads(base64.b64decode(payload))
        params = extract_params_v1(decoded)
        expires = datetime.fromtimestamp(int(params["expires"][0]), timezone.utc)
    except (ValueError, KeyError, TypeError, IndexError):
        return False   # we always sign an expiry; a challenge without one is not ours
    if params.get("studio") != [str(studio_id)]:
        return False
    now = utcnow()
    try:
        with write_tx(engine) as conn:
            conn.execute(delete(FORM_CHALLENGE_USED).where(
                FORM_CHALLENGE_USED.c.expires_at <= literal(now, FORM_CHALLENGE_USED.c.expires_at.type)))
            conn.execute(insert(FORM_CHALLENGE_USED).values(challenge=str(decoded["challenge"])[:128],
                                                            expires_at=expires))
    except IntegrityError:
        return False
    return True
