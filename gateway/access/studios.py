"""Creating studios, and the API tokens of their owners and members.

Tokens are random 256-bit strings shown once; only their SHA-256 is stored (a fast hash is
right for high-entropy tokens: there is nothing to brute-force), so a leaked database does
not leak working tokens. The stored prefix (`gw_` and six characters) lets people tell their
tokens apart without revealing them.

Token management is scoped like every other query: to the caller's studio, and for members to
their own profile. A token outside that scope is "not found", never "forbidden", so the API
never confirms that it exists.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, bindparam, func, insert, select, update

from gateway.mail.addresses import valid_slug
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import STUDIO, PROFILE, API_TOKEN
from gateway.store.paging import Order, Page, keyset_page, with_items

TOKEN_PREFIX = "gw_"


class StudioError(ValueError):
    """Bad input for a studio operation; the message is safe to show."""


SUPPORT_ROLE = "support"


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: a studio profile (role owner or member), or support reading a
    studio under its owner's grant (role support, profile_id 0: support has no profile)."""

    studio_id: int
    profile_id: int
    role: str
    token_id: int | None = None  # the token this request came with


@dataclass(frozen=True)
class TokenInfo:
    """A stored token as its owners may see it: never the token or its hash."""

    id: int
    prefix: str
    profile_id: int
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewToken:
    id: int
    prefix: str
    token: str  # shown once: only its hash is kept
    created_at: datetime


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint_token(kind: str) -> tuple[str, str]:
    """A new random token starting with `kind` (gw_, gws_), and the prefix stored to recognise it."""
    token = kind + secrets.token_urlsafe(32)
    return token, token[:len(kind) + 6]


# The rules below as JSON-schema patterns, for the API's bodies (gateway/api/profiles.py,
# support_grants.py): what a client or a generated client can check before sending, and what
# schemathesis generates as valid. Leading and trailing white space is allowed since it is
# stripped; control characters (Cc) and line or paragraph separators are not.
_NO_CONTROL = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
_VISIBLE = r"[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]"
SINGLE_LINE_PATTERN = rf"^\s*{_NO_CONTROL}*{_VISIBLE}{_NO_CONTROL}*\s*$"
OPTIONAL_LINE_PATTERN = rf"^\s*{_NO_CONTROL}*\s*$"
_ADDRESS_PART = r'[^\s\x00-\x1f\x7f-\x9f@<>,;"()\[\]\\]'
EMAIL_PATTERN = rf"^\s*{_ADDRESS_PART}{{1,64}}@{_ADDRESS_PART}+\s*$"


def single_line(value: str, what: str, max_length: int, *, required: bool = True) -> str:
    """`value` stripped, or StudioError naming `what`. Names and notes end up in mail headers,
    logs and terminals, where a line break or control character would forge a new line."""
    value = value.strip()
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise StudioError(f"{what} must be a single line without control characters")
    if required and not value:
        raise StudioError(f"{what} must not be empty")
    if len(value) > max_length:
        raise StudioError(f"{what} must be at most {max_length} characters")
    return value


def check_email(value: str, what: str = "email") -> str:
    """A plain address (local@domain), lower-cased, or StudioError naming `what`.

    Deliberately plainer than RFC 5322 allows: no display names, comments or quoting, since
    the address is compared, shown and used as a recipient as it stands."""
    address = value.strip().lower()
    local, at, domain = address.rpartition("@")
    if (not at or not local or not domain or "@" in local or len(address) > 320 or len(local) > 64
            or any(c.isspace() or unicodedata.category(c) == "Cc" or c in '<>,;"()[]\\' for c in address)):
        raise StudioError(f"{what} must be a plain address like name@example.com")
    return address


def issue_token(conn: Connection, studio_id: int, profile_id: int) -> NewToken:
    token, prefix = mint_token(TOKEN_PREFIX)
    now = utcnow()
    token_id = conn.execute(insert(API_TOKEN).returning(API_TOKEN.c.id), {
        "studio_id": studio_id, "profile_id": profile_id, "prefix": prefix,
        "token_hash": hash_token(token), "created_at": now}).scalar_one()
    return NewToken(id=token_id, prefix=prefix, token=token, created_at=now)


def create_token(conn: Connection, studio_id: int, profile_id: int) -> str:
    return issue_token(conn, studio_id, profile_id).token


def _visible_to(caller: Caller) -> ColumnElement[bool]:
    """The tokens a caller may see and revoke: the owner all of the studio's, a member their own."""
    scope = API_TOKEN.c.studio_id == caller.studio_id
    if caller.role != "owner":
        scope = scope & (API_TOKEN.c.profile_id == caller.profile_id)
    return scope


TOKENS = Order(id=API_TOKEN.c.id, descending=False)


def list_tokens(conn: Connection, caller: Caller, *, limit: int, cursor: str | None = None) -> Page[TokenInfo]:
    """The caller's visible tokens, revoked ones included, oldest (lowest id) first, a page of
    `limit` after `cursor` (BadCursor if forged)."""
    page = keyset_page(conn, select(API_TOKEN.c.id, API_TOKEN.c.prefix, API_TOKEN.c.profile_id,
                                    API_TOKEN.c.created_at, API_TOKEN.c.revoked_at).where(_visible_to(caller)),
                       TOKENS, limit=limit, cursor=cursor)
    return with_items(page, [TokenInfo(id=r.id, prefix=r.prefix, profile_id=r.profile_id, created_at=r.created_at,
                                       revoked_at=r.revoked_at) for r in page.items])


def create_own_token(conn: Connection, caller: Caller) -> NewToken:
    """A new token for the caller's own profile (never someone else's: that would be a login as them)."""
    return issue_token(conn, caller.studio_id, caller.profile_id)


def revoke_token(conn: Connection, caller: Caller, token_id: int) -> bool:
    """Revoke a token the caller may see; False when there is none such (answer 404).

    Idempotent: revoking a revoked token succeeds and keeps the first revocation time.
    `authenticate` checks `revoked_at` on every request, so the token stops working as soon
    as this transaction commits.
    """
    found = conn.execute(
        update(API_TOKEN).where(API_TOKEN.c.id == token_id, _visible_to(caller))
        .values(revoked_at=func.coalesce(API_TOKEN.c.revoked_at, utcnow()))
    ).rowcount
    return bool(found)


# Run for every API request: compiled once (gateway/store/prepared.py).
_CALLER = Prepared(
    select(API_TOKEN.c.id, API_TOKEN.c.token_hash, API_TOKEN.c.studio_id, API_TOKEN.c.profile_id, PROFILE.c.role)
    .join(PROFILE, PROFILE.c.id == API_TOKEN.c.profile_id)
    .where(API_TOKEN.c.token_hash == bindparam("token_hash"), API_TOKEN.c.revoked_at.is_(None),
           PROFILE.c.disconnected_at.is_(None), PROFILE.c.studio_id == API_TOKEN.c.studio_id))


def authenticate(conn: Connection, token: str) -> Caller | None:
    """The caller a bearer token belongs to, or None (revoked, disconnected, unknown)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    row = _CALLER.execute(conn, token_hash=digest).fetchone()
    if row is None:
        return None
    token_id, token_hash, studio_id, profile_id, role = row
    if not hmac.compare_digest(token_hash, digest):
        return None
    return Caller(studio_id=studio_id, profile_id=profile_id, role=role, token_id=token_id)


def add_studio(conn: Connection, slug: str, name: str, owner_email: str, locale: str = "de",
               country: str | None = None) -> tuple[int, str]:
    """Create a studio with its owner profile; returns (studio id, the owner's new token).

    `country` (ISO 3166 alpha-2) decides which lockdowns pause the studio's payments."""
    slug = slug.strip().lower()
    if not valid_slug(slug):
        raise StudioError("slug must be 1-64 characters of a-z, 0-9 and inner hyphens")
    name = single_line(name, "name", 200)
    owner_email = check_email(owner_email, "owner email")
    if country is not None:
        country = country.strip().upper()
        if len(country) != 2 or not country.isascii() or not country.isalpha():
            raise StudioError("country must be a two-letter ISO 3166 code such as DE")
    if conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == slug)).first():
        raise StudioError(f"a studio with the slug {slug!r} exists already")
    now = utcnow()
    studio_id = conn.execute(insert(STUDIO).returning(STUDIO.c.id), {
        "slug": slug, "name": name, "owner_email": owner_email, "locale": locale,
        "country": country, "created_at": now}).scalar_one()
    profile_id = conn.execute(insert(PROFILE).returning(PROFILE.c.id), {
        "studio_id": studio_id, "email": owner_email, "name": name, "role": "owner",
        "created_at": now}).scalar_one()
    return studio_id, create_token(conn, studio_id, profile_id)
