"""Creating studios and their owners' API tokens.

Tokens are random 256-bit strings shown once; only their SHA-256 is stored (a fast hash is
right for high-entropy tokens: there is nothing to brute-force), so a leaked database does
not leak working tokens.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from gateway.conversations import valid_slug
from gateway.models import ApiToken, Profile, Studio, utcnow

TOKEN_PREFIX = "gw_"
PROFILE = Profile.__table__  # type: ignore[attr-defined]
TOKEN = ApiToken.__table__  # type: ignore[attr-defined]
STUDIO = Studio.__table__  # type: ignore[attr-defined]


class StudioError(ValueError):
    """Bad input for a studio operation; the message is safe to show."""


@dataclass(frozen=True)
class Caller:
    studio_id: int
    profile_id: int
    role: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: Connection, studio_id: int, profile_id: int) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn.execute(insert(TOKEN), {"studio_id": studio_id, "profile_id": profile_id,
                                 "prefix": token[:len(TOKEN_PREFIX) + 6], "token_hash": hash_token(token),
                                 "created_at": utcnow()})
    return token


def authenticate(conn: Connection, token: str) -> Caller | None:
    """The caller a bearer token belongs to, or None (revoked, disconnected, unknown)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    row = conn.execute(
        select(TOKEN.c.token_hash, TOKEN.c.studio_id, TOKEN.c.profile_id, PROFILE.c.role)
        .join(PROFILE, PROFILE.c.id == TOKEN.c.profile_id)
        .where(TOKEN.c.token_hash == digest, TOKEN.c.revoked_at.is_(None),
               PROFILE.c.disconnected_at.is_(None), PROFILE.c.studio_id == TOKEN.c.studio_id)
    ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return Caller(studio_id=row.studio_id, profile_id=row.profile_id, role=row.role)


def add_studio(conn: Connection, slug: str, name: str, owner_email: str, locale: str = "de") -> tuple[int, str]:
    """Create a studio with its owner profile; returns (studio id, the owner's new token)."""
    slug = slug.strip().lower()
    if not valid_slug(slug):
        raise StudioError("slug must be 1-64 characters of a-z, 0-9 and inner hyphens")
    if any(c in name for c in "\r\n\0\u2028\u2029") or not name.strip():
        raise StudioError("name must be a single non-empty line")
    owner_email = owner_email.strip()
    if "@" not in owner_email or any(c in owner_email for c in " \r\n\0<>,;"):
        raise StudioError("owner email must be a plain address like owner@example.com")
    if conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == slug)).first():
        raise StudioError(f"a studio with the slug {slug!r} exists already")
    now = utcnow()
    studio_id = conn.execute(insert(STUDIO).returning(STUDIO.c.id), {
        "slug": slug, "name": name.strip(), "owner_email": owner_email.lower(), "locale": locale,
        "created_at": now}).scalar_one()
    profile_id = conn.execute(insert(PROFILE).returning(PROFILE.c.id), {
        "studio_id": studio_id, "email": owner_email.lower(), "name": name.strip(), "role": "owner",
        "created_at": now}).scalar_one()
    return studio_id, create_token(conn, studio_id, profile_id)
