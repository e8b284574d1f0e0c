"""Studio addresses and the signed reply addresses that thread a guest's answer.

A reply address is `slug+c<conversation id>-<mac>@domain`. The MAC is an HMAC-SHA256 of the
studio and conversation ids under GATEWAY_SECRET_KEY, truncated to 80 bits and written in
lower-case base32 because mail systems may change the case of local parts. Without the key
nobody can make an address that files mail into someone else's conversation.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache

_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_TOKEN_RE = re.compile(r"^c([0-9]{1,18})-([a-z2-7]{16})$")

def valid_slug(slug: str) -> bool:
    return bool(_SLUG_RE.match(slug))


def _mac(secret: bytes, studio_id: int, conversation_id: int) -> str:
    digest = hmac.new(secret, f"reply:{studio_id}:{conversation_id}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode().lower()


def reply_token(secret: bytes, studio_id: int, conversation_id: int) -> str:
    return f"c{conversation_id}-{_mac(secret, studio_id, conversation_id)}"


def reply_address(secret: bytes, slug: str, studio_id: int, conversation_id: int, domain: str) -> str:
    return f"{slug}+{reply_token(secret, studio_id, conversation_id)}@{domain}"


def verify_reply_token(secret: bytes, studio_id: int, token: str) -> int | None:
    """The conversation id a token names, or None if it was not signed by us for this studio."""
    match = _TOKEN_RE.match(token.lower())
    if not match:
        return None
    conversation_id = int(match.group(1))
    if hmac.compare_digest(match.group(2), _mac(secret, studio_id, conversation_id)):
        return conversation_id
    return None


@dataclass(frozen=True)
class StudioAddress:
    slug: str
    detail: str  # the part after "+", "" if none


@lru_cache(maxsize=4096)
def parse_studio_address(address: str, domain: str) -> StudioAddress | None:
    """`slug@domain` or `slug+detail@domain` (RFC 5233 subaddress), else None.

    Cached: every accepted message asks this for each recipient several times (RCPT or the
    webhook's envelope, the flood guard, threading), mostly for the same few addresses.
    """
    address = address.strip().strip("<>").strip()
    local, sep, addr_domain = address.rpartition("@")
    if not sep or addr_domain.lower().rstrip(".") != domain:
        return None
    local = local.strip('"').lower()
    slug, _, detail = local.partition("+")
    if not valid_slug(slug):
        return None
    return StudioAddress(slug=slug, detail=detail)
