"""The fields our own page issues as hidden inputs: when it was served and a one-time token.

`_issued` is "<unix time>.<token>.<mac>", signed with the gateway's secret so a bot cannot
backdate its fill time or mint tokens for another studio. The token is the double-submit key:
a second post carrying it finds the first submission (unique per studio) instead of opening a
second conversation. A post without a valid `_issued` (the studio's own markup, an old cached
page) is a *bare* post: stricter limits, and a confirmation that echoes nothing
(gateway/forms/limits.py).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

ISSUED_FIELD = "_issued"
HONEYPOT_FIELD = "_website"   # hidden from people by CSS; bots fill what they find
MAX_AGE = 24 * 3600.0         # a page left open longer is reloaded, not trusted


@dataclass(frozen=True)
class Issued:
    token: str
    age: float     # seconds since the page was served


def issue(secret: bytes, studio_id: int, now: float | None = None) -> str:
    at = int(now if now is not None else time.time())
    token = secrets.token_hex(16)
    return f"{at}.{token}.{_mac(secret, studio_id, at, token)}"


def verify(secret: bytes, studio_id: int, value: str, now: float | None = None) -> Issued | None:
    """The issued fields if they are ours, for this studio, and not older than MAX_AGE."""
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[1]) != 32:
        return None
    at, token, mac = int(parts[0]), parts[1], parts[2]
    if not hmac.compare_digest(mac, _mac(secret, studio_id, at, token)):
        return None
    age = (now if now is not None else time.time()) - at
    if age < -60 or age > MAX_AGE:   # a minute of clock skew between web processes
        return None
    return Issued(token, max(age, 0.0))


def token_of(value: str) -> str:
    """The token an `_issued` value carries, unverified: a key to look the earlier inquiry up
    with in the same statement as the studio (gateway/forms/intake.look_up), before the
    studio's id is known to check the MAC with. "" when the value has no token's shape."""
    parts = value.split(".")
    return parts[1] if len(parts) == 3 and len(parts[1]) == 32 else ""


def _mac(secret: bytes, studio_id: int, at: int, token: str) -> str:
    return hmac.new(secret, f"form:{studio_id}:{at}:{token}".encode(), hashlib.sha256).hexdigest()[:32]
