"""Studio addresses and the signed reply addresses that thread a guest's answer.

A reply address is `slug+c<conversation id>-<mac>@domain`. The MAC is an HMAC-SHA256 of the
studio and conversation ids under GATEWAY_SECRET_KEY, truncated to 80 bits and written in
lower-case base32 because mail systems may change the case of local parts. Without the key
nobody can make an address that files mail into someone else's conversation.

A notification address is `slug+n<conversation id>p<profile id>-<mac>@domain`: the Reply-To of
a notification mail (gateway/outbound/notifications.py), through which a profile answers the
guest. Its MAC is over a different purpose ("notify:" rather than "reply:") and the profile, and
its shape differs, so neither kind of token can pass as the other: a guest who learns a reply
address cannot speak as a profile, nor can a profile's address be replayed as a guest's.
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
_NOTIFY_RE = re.compile(r"^n([0-9]{1,18})p([0-9]{1,18})-([a-z2-7]{16})$")

def valid_slug(slug: str) -> bool:
    return bool(_SLUG_RE.match(slug))


def _mac(secret: bytes, studio_id: int, conversation_id: int) -> str:
    digest = hmac.new(secret, f"reply:{studio_id}:{conversation_id}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode().lower()


def reply_token(secret: bytes, studio_id: int, conversation_id: int) -> str:
    return f"c{conversation_id}-{_mac(secret, studio_id, conversation_id)}"


def reply_address(secret: bytes, slug: str, studio_id: int, conversation_id: int, domain: str) -> str:
    return f"{slug}+{reply_token(secret, studio_id, conversation_id)}@{domain}"


# The Reply-To of an hourly digest (gateway/outbound/notifications.send_digests). A digest covers
# several conversations, so an answer to it has no one guest to go to: the SMTP edge refuses
# it at RCPT with a bounce that says where to answer instead (gateway/inbound/smtp.py), and
# mail that reaches it through a provider is never threaded (gateway/inbound/threader.py). Not
# signed: it names nothing, and refusing a stranger's mail to it costs nothing.
DIGEST_DETAIL = "digest"


def digest_address(slug: str, domain: str) -> str:
    return f"{slug}+{DIGEST_DETAIL}@{domain}"


def verify_reply_token(secret: bytes, studio_id: int, token: str) -> int | None:
    """The conversation id a token names, or None if it was not signed by us for this studio."""
    match = _TOKEN_RE.match(token.lower())
    if not match:
        return None
    conversation_id = int(match.group(1))
    if hmac.compare_digest(match.group(2), _mac(secret, studio_id, conversation_id)):
        return conversation_id
    return None


def _notify_mac(secret: bytes, studio_id: int, conversation_id: int, profile_id: int) -> str:
    message = f"notify:{studio_id}:{conversation_id}:{profile_id}".encode()
    return base64.b32encode(hmac.new(secret, message, hashlib.sha256).digest()[:10]).decode().lower()


def notification_token(secret: bytes, studio_id: int, conversation_id: int, profile_id: int) -> str:
    return f"n{conversation_id}p{profile_id}-{_notify_mac(secret, studio_id, conversation_id, profile_id)}"


def notification_address(secret: bytes, slug: str, studio_id: int, conversation_id: int, profile_id: int,
                         domain: str) -> str:
    return f"{slug}+{notification_token(secret, studio_id, conversation_id, profile_id)}@{domain}"


def is_notification_token(token: str) -> bool:
    """Shaped like a notification token (signed or not): mail to it is a profile's answer, never
    a guest's, whatever its signature says."""
    return bool(_NOTIFY_RE.match(token.lower()))


def verify_notification_token(secret: bytes, studio_id: int, token: str) -> tuple[int, int] | None:
    """(conversation id, profile id) a notification token names, or None if we did not sign it
    for this studio."""
    match = _NOTIFY_RE.match(token.lower())
    if not match:
        return None
    conversation_id, profile_id = int(match.group(1)), int(match.group(2))
    if hmac.compare_digest(match.group(3), _notify_mac(secret, studio_id, conversation_id, profile_id)):
        return conversation_id, profile_id
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
