"""Signing in to the web messenger without passwords: one-time links and server-side sessions.

A link is asked for by address (gateway/lifecycle/login_mail.py mails it) or printed by the
operator (`gateway studio login-link`). Its token is HMAC(GATEWAY_SECRET_KEY, nonce): the row
keeps the nonce and the token's SHA-256, never the token, so a copy of the database (a backup,
the helpdesk reading its own conversation, where the mail's text shows the link masked) signs
nobody in; the outbox recomputes the link from the nonce when it composes the mail.

A link is valid for LINK_VALIDITY and once. Opening it only shows a button: mail scanners
fetch links before the person does, so only the button's POST (`consume_link`) uses it up, in
one conditional UPDATE, so two concurrent POSTs cannot both win.

A session is a random 256-bit token in a cookie; the row keeps its SHA-256 (a fast hash is
right for a high-entropy token). `session_caller` runs on every request and refuses a session
that was ended, idle for longer than IDLE_LIMIT, whose profile was disconnected or whose studio
was erased (the rows go with it): access ends with the commit that ends any of them. Activity
is written at most every TOUCH_EVERY, so reading pages does not write on every request.

Plain functions on a connection; the web edge (gateway/web/) translates HTTP to them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, insert, select, update

from gateway.access.studios import Caller, hash_token
from gateway.store.prepared import Prepared
from gateway.store.tables import LOGIN_LINK, PROFILE, STUDIO, WEB_SESSION

LINK_VALIDITY = timedelta(minutes=15)
IDLE_LIMIT = timedelta(days=14)
TOUCH_EVERY = timedelta(minutes=10)
LOGIN_PATH = "/app/login/link"       # the page a link opens: GET shows the button, POST signs in
SESSION_PREFIX = "gwsess_"
# The session cookie (gateway/web/session.py sets it): `__Host-` + Secure over https, the plain
# name on http. Here, below the edges, so the API's caller can read a page's session too.
SECURE_COOKIE, PLAIN_COOKIE = "__Host-gw_session", "gw_session"


def cookie_name_for(public_url: str | None, scheme: str) -> str:
    """The session cookie's name: browsers reach us over https when GATEWAY_PUBLIC_URL says so,
    else when the request came over https (uvicorn trusts X-Forwarded-Proto only from its proxies)."""
    secure = public_url.startswith("https://") if public_url else scheme == "https"
    return SECURE_COOKIE if secure else PLAIN_COOKIE


@dataclass(frozen=True)
class Recipient:
    """A connected profile an address belongs to: who a login link is mailed to."""

    studio_id: int
    profile_id: int
    email: str
    studio_name: str
    studio_slug: str
    locale: str
    time_zone: str


@dataclass(frozen=True)
class NewLink:
    link_id: int
    token: str              # goes only into the mail or the operator's terminal
    expires_at: datetime


@dataclass(frozen=True)
class SessionCaller:
    """A signed-in browser: the caller it acts as, and the session row (for logout)."""

    caller: Caller
    session_id: int
    locale: str | None


class LinkRefused(Exception):
    """A link that signs nobody in: unknown (mistyped, forged), used, or expired. The pages show
    one clear page for all three and say which, since none of them helps a guesser."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason    # unknown | used | expired


def link_token(secret: bytes, nonce: str) -> str:
    """The token of a link's nonce: 256 bits, URL-safe."""
    digest = hmac.new(secret, f"login-link:{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def link_url(public_url: str, token: str) -> str:
    """The sign-in page for a token, on GATEWAY_PUBLIC_URL (never the request's Host, which a
    client chooses: a forged Host would mail people a link to someone else's site)."""
    return f"{public_url.rstrip('/')}{LOGIN_PATH}?token={token}"


def recipients(conn: Connection, email: str, studio_id: int | None = None) -> list[Recipient]:
    """Every connected profile with this address (one person may work for several studios),
    optionally only in one studio."""
    query = (select(PROFILE.c.id, PROFILE.c.studio_id, PROFILE.c.email, PROFILE.c.locale.label("profile_locale"),
                    STUDIO.c.name, STUDIO.c.slug, STUDIO.c.locale, STUDIO.c.time_zone)
             .join(STUDIO, STUDIO.c.id == PROFILE.c.studio_id)
             .where(PROFILE.c.email == email.strip().lower(), PROFILE.c.disconnected_at.is_(None)))
    if studio_id is not None:
        query = query.where(PROFILE.c.studio_id == studio_id)
    return [Recipient(studio_id=r.studio_id, profile_id=r.id, email=r.email, studio_name=r.name,
                      studio_slug=r.slug, locale=r.profile_locale or r.locale, time_zone=r.time_zone)
            for r in conn.execute(query.order_by(PROFILE.c.studio_id))]


def create_link(conn: Connection, secret: bytes, recipient: Recipient, now: datetime) -> NewLink:
    """A new one-time link for a connected profile; older unused links stay valid until they expire."""
    nonce = secrets.token_hex(16)
    token = link_token(secret, nonce)
    expires_at = now + LINK_VALIDITY
    conn.execute(delete(LOGIN_LINK).where(LOGIN_LINK.c.expires_at < now - IDLE_LIMIT))  # keep the table small
    link_id = conn.execute(insert(LOGIN_LINK).returning(LOGIN_LINK.c.id), {
        "studio_id": recipient.studio_id, "profile_id": recipient.profile_id, "nonce": nonce,
        "token_hash": hash_token(token), "created_at": now, "expires_at": expires_at}).scalar_one()
    return NewLink(link_id, token, expires_at)


def check_link(conn: Connection, token: str, now: datetime) -> None:
    """LinkRefused unless `token` is a link that would sign in now (the GET shows its button)."""
    _usable_link(conn, token, now)


def consume_link(conn: Connection, token: str, now: datetime) -> tuple[SessionCaller, str]:
    """Use a link up and start a session: (the session's caller, the cookie's token).
    LinkRefused when it is unknown, used (also by a concurrent POST) or expired."""
    row = _usable_link(conn, token, now)
    won = conn.execute(update(LOGIN_LINK).where(LOGIN_LINK.c.id == row.id, LOGIN_LINK.c.used_at.is_(None))
                       .values(used_at=now)).rowcount
    if not won:
        raise LinkRefused("used")
    return start_session(conn, row.studio_id, row.profile_id, row.role, row.locale, now)


def start_session(conn: Connection, studio_id: int, profile_id: int, role: str, locale: str | None,
                  now: datetime) -> tuple[SessionCaller, str]:
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    conn.execute(delete(WEB_SESSION).where(WEB_SESSION.c.last_seen_at < now - IDLE_LIMIT))  # idle ones are over
    session_id = conn.execute(insert(WEB_SESSION).returning(WEB_SESSION.c.id), {
        "studio_id": studio_id, "profile_id": profile_id, "token_hash": hash_token(token),
        "created_at": now, "last_seen_at": now}).scalar_one()
    return SessionCaller(Caller(studio_id=studio_id, profile_id=profile_id, role=role), session_id, locale), token


def _usable_link(conn: Connection, token: str, now: datetime) -> Any:
    if not token or len(token) > 100:
        raise LinkRefused("unknown")
    digest = hash_token(token)
    row = conn.execute(
        select(LOGIN_LINK.c.id, LOGIN_LINK.c.token_hash, LOGIN_LINK.c.studio_id, LOGIN_LINK.c.profile_id,
               LOGIN_LINK.c.expires_at, LOGIN_LINK.c.used_at, PROFILE.c.role, PROFILE.c.locale,
               PROFILE.c.disconnected_at)
        .join(PROFILE, PROFILE.c.id == LOGIN_LINK.c.profile_id)
        .where(LOGIN_LINK.c.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.disconnected_at is not None:
        raise LinkRefused("unknown")
    if row.used_at is not None:
        raise LinkRefused("used")
    if now >= row.expires_at:
        raise LinkRefused("expired")
    return row


# One prepared statement per page view (gateway/store/prepared.py): it runs on every request
# behind sign-in, where SQLAlchemy's per-execution work cost more than SQLite took to answer
# (bench/web_inbox.py). Whether the activity is due to be written is decided in SQL too, so
# the row needs no datetime converted on the way out.
_SESSION = Prepared(
    select(WEB_SESSION.c.id, WEB_SESSION.c.token_hash, WEB_SESSION.c.studio_id, WEB_SESSION.c.profile_id,
           PROFILE.c.role, PROFILE.c.locale,
           case((WEB_SESSION.c.last_seen_at <= bindparam("touch_before", type_=WEB_SESSION.c.last_seen_at.type),
                 1), else_=0))
    .join(PROFILE, PROFILE.c.id == WEB_SESSION.c.profile_id)
    .where(WEB_SESSION.c.token_hash == bindparam("token_hash"), WEB_SESSION.c.ended_at.is_(None),
           WEB_SESSION.c.last_seen_at > bindparam("idle_since", type_=WEB_SESSION.c.last_seen_at.type),
           PROFILE.c.disconnected_at.is_(None), PROFILE.c.studio_id == WEB_SESSION.c.studio_id))


def session_caller(conn: Connection, token: str, now: datetime) -> tuple[SessionCaller | None, bool]:
    """The signed-in caller of a session cookie, or None (ended, idle, disconnected, unknown);
    and whether its activity is due to be written (`touch`)."""
    if not token.startswith(SESSION_PREFIX) or len(token) > 200:
        return None, False
    digest = hash_token(token)
    row = _SESSION.execute(conn, token_hash=digest, idle_since=now - IDLE_LIMIT,
                           touch_before=now - TOUCH_EVERY).fetchone()
    if row is None:
        return None, False
    session_id, token_hash, studio_id, profile_id, role, locale, due = row
    if not hmac.compare_digest(token_hash, digest):
        return None, False
    return SessionCaller(Caller(studio_id=studio_id, profile_id=profile_id, role=role), session_id, locale), bool(due)


def touch(conn: Connection, session_id: int, now: datetime) -> None:
    """Record activity: the idle limit counts from here."""
    conn.execute(update(WEB_SESSION).where(WEB_SESSION.c.id == session_id, WEB_SESSION.c.ended_at.is_(None))
                 .values(last_seen_at=now))


def end_session(conn: Connection, session_id: int, now: datetime) -> None:
    """Logout: the cookie's token stops working with this commit (a copy of it too)."""
    conn.execute(update(WEB_SESSION).where(WEB_SESSION.c.id == session_id, WEB_SESSION.c.ended_at.is_(None))
                 .values(ended_at=now))
