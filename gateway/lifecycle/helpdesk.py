"""The operator's helpdesk: a studio of its own at GATEWAY_HELPDESK_ADDRESS.

Why a studio: then its mail needs nothing of its own. RCPT, the webhooks, threading, the
messenger API and the outbox work for it as for any studio, and the operator answers guests
and studio owners in the same app with the helpdesk's owner token (`gateway helpdesk token`).

The helpdesk studio is created when the setting is set (at every start and by `gateway
migrate`), named GATEWAY_HELPDESK_NAME, with the helpdesk address itself as its owner address,
so that no LÖSCHEN mail can ever name it. A studio that already has the slug (one made with
`gateway studio add helpdesk ...`) is used as it is. What the helpdesk does beyond filing
mail is in gateway/lifecycle/helpdesk_mail.py.
"""
from __future__ import annotations

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.settings import Settings
from gateway.store.tables import STUDIO
from gateway.access.studios import add_studio, create_token
from gateway.inbound.records import ensure_guest, open_conversation
from gateway.store.tables import PROFILE



class NoHelpdesk(LookupError):
    """GATEWAY_HELPDESK_ADDRESS is not set: there is no helpdesk to send from or to answer in."""


def helpdesk_id(conn: Connection, settings: Settings) -> int | None:
    """The helpdesk studio's id; None when there is no helpdesk (not configured, not created yet)."""
    if not settings.helpdesk_slug:
        return None
    found = conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == settings.helpdesk_slug)).scalar()
    return int(found) if found is not None else None


def ensure_helpdesk(engine: Engine, settings: Settings) -> int | None:
    """Create the helpdesk studio when it is configured and missing; its id (None: not configured).

    Several processes may start at once on one PostgreSQL database: the one that loses the race
    for the unique slug reads the winner's studio."""
    if not settings.helpdesk_slug:
        return None
    with read_tx(engine) as conn:
        existing = helpdesk_id(conn, settings)
    if existing is not None:
        return existing
    try:
        with write_tx(engine) as conn:
            studio_id, _ = add_studio(conn, settings.helpdesk_slug, settings.helpdesk_name,
                                      settings.helpdesk_address)  # its token is issued on demand
        return studio_id
    except IntegrityError:
        with read_tx(engine) as conn:
            return helpdesk_id(conn, settings)


def issue_helpdesk_token(engine: Engine, settings: Settings) -> str:
    """A new owner token for the helpdesk studio (shown once; earlier ones stay valid)."""
    studio_id = ensure_helpdesk(engine, settings)
    if studio_id is None:
        raise NoHelpdesk("GATEWAY_HELPDESK_ADDRESS is not set")
    with write_tx(engine) as conn:
        owner = conn.execute(select(PROFILE.c.id).where(
            PROFILE.c.studio_id == studio_id, PROFILE.c.role == "owner", PROFILE.c.disconnected_at.is_(None))
            .order_by(PROFILE.c.id).limit(1)).scalar()
        if owner is None:
            raise NoHelpdesk(f"the helpdesk studio {settings.helpdesk_slug!r} has no connected owner")
        return create_token(conn, studio_id, int(owner))


def open_helpdesk_conversation(conn: Connection, settings: Settings, *, email: str, name: str,
                               subject: str) -> tuple[int, int]:
    """A new helpdesk conversation with `email`, for mail the helpdesk starts itself;
    (helpdesk id, conversation id)."""
    studio_id = helpdesk_id(conn, settings)
    if studio_id is None:
        raise NoHelpdesk("GATEWAY_HELPDESK_ADDRESS is not set")
    guest_id = ensure_guest(conn, studio_id, email, name)
    return studio_id, open_conversation(conn, studio_id, guest_id, subject, utcnow())
