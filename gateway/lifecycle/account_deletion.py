"""Deleting a studio's account, irrevocably, in two steps: a request, then its confirmation.

Anyone can put an owner's address into a From header, so a request deletes nothing: it mails a
confirmation code to the studio's registered owner address (studio.owner_email, never the
request's From or Reply-To), and only that code deletes. The code is valid once and for
CODE_VALIDITY; it needs no API token, since an owner who wants to leave may have lost theirs:
the code itself is the proof, and guessing it is rate-limited at the API edge on top of its
80 random bits.

The code is never stored. The request's row keeps a random nonce and the SHA-256 of the code;
the code is HMAC(GATEWAY_SECRET_KEY, nonce), recomputed when the outbox composes the mail. A
copy of the database (a backup, a support export, the helpdesk reading its own conversation,
where the mail's text shows a masked code) confirms nothing.

The confirmation mail is the helpdesk's (gateway/lifecycle/helpdesk.py): an outbound message in the
helpdesk conversation with the owner, sent through the ordinary outbox, and rendered in the
deleted studio's language. For a LÖSCHEN mail that is the conversation the mail opened; for
the API a new one. So the row survives the studio it is about, and the owner's answer to it
reaches a person.

Confirming deletes in this order: the studio's Stripe subscription is cancelled (a hook the
billing module provides: an error stops everything, nothing is deleted and the code stays
valid), the deletion log gets its entry, then one transaction marks the request used and
erases the studio with every row and byte of it (gateway/lifecycle/erasure.erase_studio), and the owner's
helpdesk conversations too when the address owns no other studio: the LÖSCHEN mail itself and
its quoted signature are the owner's data. Afterwards the address is dropped from this
process's RCPT directory at once.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Connection, Engine, func, insert, select, update

from gateway.store.db import read_tx, write_tx
from gateway.lifecycle.deletion_log import DeletionLog, deletion_log
from gateway.lifecycle.deletion_reason import clean_reason
from gateway.inbound.directory import forget_studio
from gateway.store.tables import GUEST
from gateway.lifecycle.erasure import erase_guest, erase_studio
from gateway.lifecycle.helpdesk import helpdesk_id, open_helpdesk_conversation
from gateway.outbound.render import Rendered, Renderer, shared_renderer
from gateway.outbound.replies import create_reply
from gateway.settings import Settings
from gateway.store.tables import STUDIO
from gateway.store.tables import ACCOUNT_DELETION

CONFIRMATION = "account_deletion"      # Message.auto_kind of the confirmation mail
CODE_VALIDITY = timedelta(hours=48)
# A forged From can make us mail an owner; this many requests per studio a day, then silence.
MAX_REQUESTS_PER_DAY = 3
CONFIRMATION_PATH = "/account/deletion/confirm"
_MASKED_CODE = "••••-••••-••••-••••"
_SUBJECTS = {"de": "Bitte bestätigen: Löschung von {name}", "en": "Please confirm: deletion of {name}"}
# Base32 without the letters people misread: what they type is mapped back before hashing.
_TYPED = str.maketrans({"0": "O", "1": "I", "8": "B"})

CancelSubscription = Callable[[int], None]


def no_subscription_to_cancel(studio_id: int) -> None:
    """The default hook until billing is wired in: there is nothing to cancel."""


class DeletionRefused(Exception):
    """A request or confirmation that is not carried out; the message is safe to show."""


class NotAllowed(DeletionRefused):
    """The studio cannot be deleted this way (the helpdesk itself, or no helpdesk to mail from)."""


class TooManyRequests(DeletionRefused):
    """MAX_REQUESTS_PER_DAY requests for this studio already: the codes already sent are valid."""


class UnknownCode(DeletionRefused):
    """No request has this code (mistyped or guessed)."""


class CodeUsed(DeletionRefused):
    """The code was used, or the studio was deleted with another code."""


class CodeExpired(DeletionRefused):
    """More than CODE_VALIDITY passed since the request."""


@dataclass(frozen=True)
class Requested:
    request_id: int
    studio_id: int
    sent_to: str
    expires_at: datetime


@dataclass(frozen=True)
class Deleted:
    studio_id: int


def confirmation_code(secret: bytes, nonce: str) -> str:
    """The code for a request's nonce: 80 bits in base32, as XXXX-XXXX-XXXX-XXXX."""
    digest = hmac.new(secret, f"account-deletion:{nonce}".encode(), hashlib.sha256).digest()
    letters = base64.b32encode(digest[:10]).decode()
    return "-".join(letters[i:i + 4] for i in range(0, 16, 4))


def code_hash(code: str) -> str:
    """What is stored and looked up: the code as typed, without spaces, dashes or case, hashed."""
    typed = "".join(c for c in code.upper() if c.isalnum()).translate(_TYPED)
    return hashlib.sha256(typed.encode()).hexdigest()


def confirmation_link(settings: Settings, code: str) -> str:
    """The confirmation page with the code filled in; "" without GATEWAY_PUBLIC_URL."""
    return f"{settings.public_url}{CONFIRMATION_PATH}?code={code}" if settings.public_url else ""


# --- the request ------------------------------------------------------------------------------

def request_deletion(conn: Connection, settings: Settings, *, studio_id: int, channel: str, reason: str,
                     helpdesk: int, conversation_id: int, now: datetime) -> Requested:
    """Record a request and queue its confirmation mail to the owner, in the caller's transaction.

    `helpdesk` and `conversation_id` name the helpdesk conversation the mail belongs to."""
    studio = conn.execute(select(STUDIO.c.id, STUDIO.c.slug, STUDIO.c.name, STUDIO.c.owner_email, STUDIO.c.locale,
                                 STUDIO.c.time_zone)
                          .where(STUDIO.c.id == studio_id)).first()
    helpdesk_name = conn.execute(select(STUDIO.c.name).where(STUDIO.c.id == helpdesk)).scalar()
    if studio is None or helpdesk_name is None or studio.id == helpdesk:
        raise NotAllowed("the helpdesk's own studio cannot be deleted this way")
    recent = conn.execute(select(func.count()).select_from(ACCOUNT_DELETION).where(
        ACCOUNT_DELETION.c.studio_ref == studio_id,
        ACCOUNT_DELETION.c.requested_at > now - timedelta(days=1))).scalar_one()
    if recent >= MAX_REQUESTS_PER_DAY:
        raise TooManyRequests("a confirmation was mailed to the owner already; please use its code")
    nonce = secrets.token_hex(16)
    expires_at = now + CODE_VALIDITY
    request_id = conn.execute(insert(ACCOUNT_DELETION).returning(ACCOUNT_DELETION.c.id), {
        "studio_ref": studio_id, "channel": channel, "status": "pending", "nonce": nonce,
        "code_hash": code_hash(confirmation_code(settings.secret(), nonce)), "requested_at": now,
        "expires_at": expires_at, "reason": clean_reason(reason)}).scalar_one()
    renderer = shared_renderer()
    # The stored text is what the helpdesk sees; the code goes only into the mail (see compose).
    masked = _render(renderer, studio, settings, _MASKED_CODE, expires_at, helpdesk_name=helpdesk_name,
                     link=confirmation_link(settings, _MASKED_CODE))
    reply = create_reply(conn, studio_id=helpdesk, conversation_id=conversation_id, text=masked.text,
                         settings=settings, auto_kind=CONFIRMATION, subject=confirmation_subject(renderer, studio),
                         recipient=(studio.owner_email, studio.name))
    if reply is None:
        raise NotAllowed("the helpdesk conversation for the confirmation is gone")
    conn.execute(update(ACCOUNT_DELETION).where(ACCOUNT_DELETION.c.id == request_id)
                 .values(message_ref=reply.message_row_id))
    return Requested(request_id, studio_id, studio.owner_email, expires_at)


def request_by_owner(engine: Engine, settings: Settings, *, studio_id: int, reason: str,
                     now: datetime) -> Requested:
    """The API's request (the caller is the studio's owner): a new helpdesk conversation with the
    owner's registered address carries the confirmation."""
    with write_tx(engine) as conn:
        helpdesk = helpdesk_id(conn, settings)
        studio = conn.execute(select(STUDIO.c.name, STUDIO.c.owner_email, STUDIO.c.locale)
                              .where(STUDIO.c.id == studio_id)).first()
        if helpdesk is None or studio is None:
            raise NotAllowed("account deletion needs the helpdesk (GATEWAY_HELPDESK_ADDRESS) to mail the code")
        _, conversation_id = open_helpdesk_conversation(
            conn, settings, email=studio.owner_email, name=studio.name,
            subject=confirmation_subject(shared_renderer(), studio))
        return request_deletion(conn, settings, studio_id=studio_id, channel="api", reason=reason,
                                helpdesk=helpdesk, conversation_id=conversation_id, now=now)


def confirmation_subject(renderer: Renderer, studio: Any) -> str:
    return _SUBJECTS[renderer.language(studio.locale)].format(name=studio.name)


def _render(renderer: Renderer, studio: Any, settings: Settings, code: str, expires_at: datetime, *,
            helpdesk_name: str, link: str) -> Rendered:
    return renderer.account_deletion(locale=studio.locale, studio_name=studio.name,
                                     studio_address=f"{studio.slug}@{settings.mail_domain}", code=code,
                                     expires_at=expires_at, sender_name=helpdesk_name, link=link,
                                     time_zone=studio.time_zone)


# --- composing the mail (gateway/outbound/compose.py) ---------------------------------------------------

_CONFIRMATIONS = (
    select(ACCOUNT_DELETION.c.message_ref, ACCOUNT_DELETION.c.nonce, ACCOUNT_DELETION.c.expires_at,
           STUDIO.c.slug, STUDIO.c.name, STUDIO.c.locale, STUDIO.c.time_zone)
    .join(STUDIO, STUDIO.c.id == ACCOUNT_DELETION.c.studio_ref)
    .where(ACCOUNT_DELETION.c.status == "pending")
)


def render_confirmations(conn: Connection, senders: dict[int, str], settings: Settings, secret: bytes,
                         renderer: Renderer) -> dict[int, Rendered]:
    """The bodies, with the real code, of the confirmation mails among the outbound messages in
    `senders` (message id → the name of the helpdesk sending it). A request that was used, or
    whose studio was deleted with another of its codes, has none: its mail is not sent."""
    if not senders:
        return {}
    rendered = {}
    for row in conn.execute(_CONFIRMATIONS.where(ACCOUNT_DELETION.c.message_ref.in_(list(senders)))):
        code = confirmation_code(secret, row.nonce)
        rendered[row.message_ref] = _render(renderer, row, settings, code, row.expires_at,
                                            helpdesk_name=senders[row.message_ref],
                                            link=confirmation_link(settings, code))
    return rendered


# --- the confirmation ----------------------------------------------------------------------------

def confirm_deletion(engine: Engine, settings: Settings, code: str, *, now: datetime,
                     cancel_subscription: CancelSubscription = no_subscription_to_cancel) -> Deleted:
    """Delete the studio the code was mailed for, or refuse (UnknownCode, CodeUsed, CodeExpired).

    `cancel_subscription(studio_id)` must stop the studio's billing for good (idempotent: a
    retried confirmation calls it again); if it raises, nothing is deleted."""
    digest = code_hash(code)
    with read_tx(engine) as conn:
        request = conn.execute(select(ACCOUNT_DELETION).where(ACCOUNT_DELETION.c.code_hash == digest)).first()
        studio = None if request is None else conn.execute(
            select(STUDIO.c.id, STUDIO.c.slug, STUDIO.c.owner_email).where(STUDIO.c.id == request.studio_ref)).first()
    if request is None or not hmac.compare_digest(request.code_hash, digest):
        raise UnknownCode("no deletion request has this code")
    if request.status != "pending" or studio is None:
        raise CodeUsed("this code was used already")
    if now >= request.expires_at:
        raise CodeExpired("this code has expired; please request the deletion again")

    cancel_subscription(studio.id)
    log = deletion_log(settings)
    with write_tx(engine) as conn:
        claimed = conn.execute(update(ACCOUNT_DELETION).where(
            ACCOUNT_DELETION.c.id == request.id, ACCOUNT_DELETION.c.status == "pending")
            .values(status="deleted", confirmed_at=now)).rowcount
        if not claimed:  # a concurrent confirmation with the same code won
            raise CodeUsed("this code was used already")
        _erase_account(conn, settings, log, studio, now)
    forget_studio(studio.slug)
    return Deleted(studio.id)


def _erase_account(conn: Connection, settings: Settings, log: DeletionLog, studio: Any, now: datetime) -> None:
    """The studio with every row and byte of it, in the caller's transaction; its other pending
    requests are void (no code of them can delete anything any more)."""
    conn.execute(update(ACCOUNT_DELETION).where(
        ACCOUNT_DELETION.c.studio_ref == studio.id, ACCOUNT_DELETION.c.status == "pending").values(status="void"))
    # Logged inside the transaction, just before erasing (gateway/lifecycle/deletion_log.py): a backup
    # then either holds the erasure or replays this entry after a restore.
    log.append("studio", studio.id, studio.id, at=now)
    erase_studio(conn, studio.id, settings.mail_domain)
    _erase_owner_at_helpdesk(conn, settings, log, studio.owner_email, now)


OPERATOR_CHANNEL = "operator"   # `gateway studio remove`: the request's channel in the helpdesk's list


class UnknownStudio(DeletionRefused):
    pass


def delete_by_operator(engine: Engine, settings: Settings, slug: str, *, now: datetime, reason: str = "",
                       cancel_subscription: CancelSubscription = no_subscription_to_cancel) -> Deleted:
    """`gateway studio remove SLUG`: the same deletion as a confirmed code, for the operator.

    Whoever runs commands on the server holds the database and the secret key already, so no
    code is mailed; everything else is the confirmed path's: the subscription is cancelled first
    (an error stops everything), the deletion log gets its entry, the studio and the owner's
    helpdesk conversations are erased, and a row (channel `operator`, status `deleted`) keeps
    for `gateway helpdesk deletions` what was deleted, when and why."""
    with read_tx(engine) as conn:
        studio = conn.execute(select(STUDIO.c.id, STUDIO.c.slug, STUDIO.c.owner_email)
                              .where(STUDIO.c.slug == slug.lower())).first()
        helpdesk = None if studio is None else helpdesk_id(conn, settings)
    if studio is None:
        raise UnknownStudio(f"no studio {slug.lower()}")
    if studio.id == helpdesk:
        raise NotAllowed("the helpdesk's own studio cannot be removed while GATEWAY_HELPDESK_ADDRESS names it")
    cancel_subscription(studio.id)
    log = deletion_log(settings)
    with write_tx(engine) as conn:
        nonce = secrets.token_hex(16)
        conn.execute(insert(ACCOUNT_DELETION), {
            "studio_ref": studio.id, "channel": OPERATOR_CHANNEL, "status": "deleted", "nonce": nonce,
            # No code exists for this row: the hash of a random value nobody holds keeps the column unique.
            "code_hash": hashlib.sha256(secrets.token_bytes(32)).hexdigest(), "requested_at": now,
            "expires_at": now, "confirmed_at": now, "reason": clean_reason(reason)})
        _erase_account(conn, settings, log, studio, now)
    forget_studio(studio.slug)
    return Deleted(studio.id)


def _erase_owner_at_helpdesk(conn: Connection, settings: Settings, log: DeletionLog, owner_email: str,
                             now: datetime) -> None:
    """The owner's conversations with the helpdesk, unless the address still owns a studio."""
    helpdesk = helpdesk_id(conn, settings)
    address = owner_email.lower()
    if helpdesk is None or conn.execute(select(STUDIO.c.id).where(
            func.lower(STUDIO.c.owner_email) == address).limit(1)).first() is not None:
        return
    for guest_id in list(conn.execute(select(GUEST.c.id).where(
            GUEST.c.studio_id == helpdesk, func.lower(GUEST.c.email) == address)).scalars()):
        log.append("guest", helpdesk, guest_id, at=now)
        erase_guest(conn, helpdesk, guest_id, settings.mail_domain)


# --- the operator's view -------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestInfo:
    id: int
    studio_ref: int
    channel: str
    status: str          # pending | expired | deleted | void
    requested_at: datetime
    confirmed_at: datetime | None
    reason: str


def list_requests(conn: Connection, now: datetime, limit: int = 200) -> list[RequestInfo]:
    """The newest requests first, for `gateway helpdesk deletions`."""
    rows = conn.execute(select(ACCOUNT_DELETION).order_by(ACCOUNT_DELETION.c.id.desc()).limit(limit)).all()
    return [RequestInfo(id=r.id, studio_ref=r.studio_ref, channel=r.channel,
                        status="expired" if r.status == "pending" and now >= r.expires_at else r.status,
                        requested_at=r.requested_at, confirmed_at=r.confirmed_at, reason=r.reason) for r in rows]
