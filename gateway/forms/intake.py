"""One post of the public form, decided: refused quietly, sent back with errors, held off,
or stored as an inquiry. The web edge (gateway/web/inquiry_form.py) only translates the
outcome into a page or JSON; this is the work, callable without a server.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import IntegrityError

from gateway.forms import challenge, versions
from gateway.forms.answers import Checked, check_answers
from gateway.forms.issue import HONEYPOT_FIELD, ISSUED_FIELD, verify
from gateway.forms.limits import FormLimits
from gateway.forms.submit import Studio, Submission, Submitted, find_submitted, store_submission, submitted_today
from gateway.settings import Settings
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import STUDIO

CONSENT_FIELD = "_consent"


@dataclass(frozen=True)
class PublicStudio(Studio):
    privacy_url: str | None = None


@dataclass
class Post:
    fields: dict[str, list[str]]
    files: dict[str, list[tuple[str, bytes]]]
    client: str              # the client's address, as uvicorn saw it (behind trusted proxies)
    guest_language: str


@dataclass
class Outcome:
    kind: str                                   # stored | quiet | invalid | later
    submitted: Submitted | None = None
    version: versions.Version | None = None
    checked: Checked | None = None
    errors: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    retry_after: int | None = None
    bare: bool = False


_STUDIO = Prepared(select(STUDIO.c.id, STUDIO.c.slug, STUDIO.c.name, STUDIO.c.locale, STUDIO.c.privacy_url)
                   .where(STUDIO.c.slug == bindparam("slug")))


def find_studio(engine: Engine, slug: str) -> PublicStudio | None:
    """The studio a form URL names; None for an unknown (or erased) one: 404."""
    with read_tx(engine) as conn:
        row = _STUDIO.execute(conn, slug=slug).fetchone()
    return None if row is None else PublicStudio(*row)


@dataclass
class Pending:
    """A post that passed every check but the limits: `write` decides those and stores it, in
    whichever transaction the caller runs it (the API's group commit, gateway/store/batching.py,
    or one of its own)."""

    write: Callable[[Connection], Outcome]
    studio_id: int
    token: str


def take(engine: Engine, settings: Settings, limits: FormLimits, studio: PublicStudio, post: Post) -> Outcome:
    """Decide one post and store it in a transaction of its own."""
    decided = prepare(engine, settings, limits, studio, post)
    return decided if isinstance(decided, Outcome) else take_pending(engine, decided)


def take_pending(engine: Engine, pending: Pending) -> Outcome:
    """A prepared post stored in a transaction of its own."""
    try:
        with write_tx(engine) as conn:
            return pending.write(conn)
    except IntegrityError:
        return after_race(engine, pending)


def after_race(engine: Engine, pending: Pending) -> Outcome:
    """The same token raced in from a second click and lost at the unique constraint: the one
    that committed is the inquiry."""
    with read_tx(engine) as conn:
        seen = find_submitted(conn, pending.studio_id, pending.token)
    if seen is None:
        raise LookupError("a form submission failed at a constraint, and not for its token")
    return Outcome("stored", submitted=seen)


def prepare(engine: Engine, settings: Settings, limits: FormLimits, studio: PublicStudio,
            post: Post) -> Outcome | Pending:
    """Everything but the write: an Outcome when the post is decided already (bots learn
    nothing from a quiet refusal: it looks like success), else the write that stores it."""
    if any(v.strip() for v in post.fields.get(HONEYPOT_FIELD, [])):
        return Outcome("quiet")
    secret = settings.secret()
    issued = verify(secret, studio.id, (post.fields.get(ISSUED_FIELD) or [""])[0])
    if issued is not None and issued.age < settings.form_min_fill_seconds:
        return Outcome("quiet")
    solution = (post.fields.get(challenge.FIELD) or [""])[0]
    with read_tx(engine) as conn:
        if issued is not None:
            seen = find_submitted(conn, studio.id, issued.token)
            if seen is not None:  # a double click or a resubmitted page: the first one stands
                return Outcome("stored", submitted=seen)
        version = versions.current(conn, studio.id)
    checked = check_answers(version.definition, post.fields, post.files)
    errors = dict(checked.errors)
    if not any(v == "yes" for v in post.fields.get(CONSENT_FIELD, [])):
        errors[CONSENT_FIELD] = ("consent", {})
    if errors:
        return Outcome("invalid", version=version, checked=checked, errors=errors)
    # Our page with its proof of work solved is trusted most; without JavaScript (no solution)
    # or from the studio's own markup (nothing issued) the post is bare: stricter limits.
    bare = issued is None or not challenge.spend(engine, secret, studio.id, solution)
    email = checked.values[version.definition.email_key]
    token = issued.token if issued is not None else secrets.token_hex(16)
    submission = Submission(studio=studio, version=version.version, definition=version.definition,
                            checked=checked, token=token, consent_at=utcnow(),
                            guest_language=post.guest_language, bare=bare)

    def write(conn: Connection) -> Outcome:
        """The limits read, the inquiry stored, the limits counted: one transaction."""
        wait = limits.retry_after(conn, studio.id, post.client, email, bare)
        if wait is None and submitted_today(conn, studio.id) >= settings.form_daily_cap:
            wait = 3600
        if wait is not None:
            return Outcome("later", retry_after=wait, bare=bare)
        submitted = store_submission(conn, submission, settings)
        if not submitted.duplicate:
            limits.count(conn, studio.id, post.client, email, bare)
        return Outcome("stored", submitted=submitted, version=version, checked=checked, bare=bare)

    return Pending(write, studio.id, token)
