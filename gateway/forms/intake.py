"""One post of the public form, decided: refused quietly, sent back with errors, held off,
or stored as an inquiry. The web edge (gateway/web/inquiry_form.py) only translates the
outcome into a page or JSON; this is the work, callable without a server (`take`).

A post costs one read and one write transaction, each with as few statements as it can:
`look_up` reads the studio, its current form and the double-submit token's earlier inquiry in
one statement; `prepare` decides everything it can without the database (CPU only, so the web
edge may run it on the event loop); the `Pending.write` it returns reads the budgets in one
statement (FormLimits.read) and stores the inquiry. On PostgreSQL every statement is a round
trip (bench/form_submit.py).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sqlalchemy import Connection, Engine, and_, bindparam, func, select
from sqlalchemy.exc import IntegrityError

from gateway.events import Reaction
from gateway.forms import challenge, versions
from gateway.forms.answers import Checked, check_answers
from gateway.forms.issue import HONEYPOT_FIELD, ISSUED_FIELD, token_of, verify
from gateway.forms.limits import FormLimits
from gateway.forms.submit import Studio, Submission, Submitted, find_submitted, store_submission
from gateway.settings import Settings
from gateway.store.db import read_tx, result_processor, write_tx
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import FORM_SUBMISSION, FORM_VERSION, STUDIO

CONSENT_FIELD = "_consent"
MAX_SLUG = 64


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


@dataclass(frozen=True)
class Found:
    """What a form's URL and a post's token name: the studio, its current form, and the
    inquiry the token made before (None when it made none, or for no token)."""

    studio: PublicStudio
    version: versions.Version
    submitted: Submitted | None


_LATEST = (select(func.max(FORM_VERSION.c.version)).where(FORM_VERSION.c.studio_id == STUDIO.c.id)
           .correlate(STUDIO).scalar_subquery())
_LOOK_UP = Prepared(
    select(STUDIO.c.id, STUDIO.c.slug, STUDIO.c.name, STUDIO.c.locale, STUDIO.c.privacy_url,
           FORM_VERSION.c.version, FORM_VERSION.c.definition_json, FORM_VERSION.c.created_at,
           FORM_SUBMISSION.c.conversation_id, FORM_SUBMISSION.c.message_id)
    .select_from(STUDIO.outerjoin(FORM_VERSION, and_(FORM_VERSION.c.studio_id == STUDIO.c.id,
                                                     FORM_VERSION.c.version == _LATEST))
                 .outerjoin(FORM_SUBMISSION, and_(FORM_SUBMISSION.c.studio_id == STUDIO.c.id,
                                                  FORM_SUBMISSION.c.token == bindparam("token"))))
    .where(STUDIO.c.slug == bindparam("slug")))


def look_up(conn: Connection, slug: str, token: str = "") -> Found | None:
    """The form `slug` names; None for an unknown (or erased) studio: 404. `token` is only a
    key here: whether the post's issued fields are ours is decided by `prepare`."""
    if len(slug) > MAX_SLUG:
        return None
    row = _LOOK_UP.execute(conn, slug=slug, token=token).fetchone()
    if row is None:
        return None
    created = result_processor(conn, FORM_VERSION.c.created_at)(row[7])
    return Found(PublicStudio(*row[:5]), versions.from_row(row[5], row[6], created),
                 None if row[8] is None else Submitted(row[8], row[9], True, None))


def find_studio(engine: Engine, slug: str) -> PublicStudio | None:
    """The studio a form URL names; None for an unknown (or erased) one: 404."""
    with read_tx(engine) as conn:
        found = look_up(conn, slug)
    return None if found is None else found.studio


@dataclass
class Pending:
    """A post that passed every check but the limits: `write` decides those and stores it, in
    whichever transaction the caller runs it (the API's group commit, gateway/store/batching.py,
    or one of its own)."""

    write: Callable[[Connection], Outcome]
    studio_id: int
    token: str


def take(engine: Engine, settings: Settings, limits: FormLimits, slug: str, post: Post,
         reactions: Sequence[Reaction]) -> Outcome | None:
    """Decide one post and store it in a transaction of its own; None for an unknown studio."""
    token = token_of((post.fields.get(ISSUED_FIELD) or [""])[0])
    with read_tx(engine) as conn:
        found = look_up(conn, slug, token)
    if found is None:
        return None
    decided = prepare(settings, limits, found, post, reactions)
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


def prepare(settings: Settings, limits: FormLimits, found: Found, post: Post,
            reactions: Sequence[Reaction]) -> Outcome | Pending:
    """Everything but the write, without the database: an Outcome when the post is decided
    already (bots learn nothing from a quiet refusal: it looks like success), else the write
    that stores it, announcing the inquiry to `reactions` as threaded mail is (gateway/events.py)."""
    if any(v.strip() for v in post.fields.get(HONEYPOT_FIELD, [])):
        return Outcome("quiet")
    studio, version = found.studio, found.version
    secret = settings.secret()
    issued = verify(secret, studio.id, (post.fields.get(ISSUED_FIELD) or [""])[0])
    if issued is not None and issued.age < settings.form_min_fill_seconds:
        return Outcome("quiet")
    if issued is not None and found.submitted is not None:
        return Outcome("stored", submitted=found.submitted)  # a double click or a resubmitted page: the first stands
    checked = check_answers(version.definition, post.fields, post.files)
    errors = dict(checked.errors)
    if not any(v == "yes" for v in post.fields.get(CONSENT_FIELD, [])):
        errors[CONSENT_FIELD] = ("consent", {})
    if errors:
        return Outcome("invalid", version=version, checked=checked, errors=errors)
    # Our page with its proof of work solved is trusted most; without JavaScript (no solution)
    # or from the studio's own markup (nothing issued) the post is bare: stricter limits.
    solution = None if issued is None else challenge.verified(secret, studio.id,
                                                              (post.fields.get(challenge.FIELD) or [""])[0])
    email = checked.values[version.definition.email_key]
    token = issued.token if issued is not None else secrets.token_hex(16)
    consent_at = utcnow()

    def write(conn: Connection) -> Outcome:
        """The solution spent, the limits read, the inquiry stored, the limits counted: one
        transaction."""
        bare = solution is None or not challenge.spend(conn, solution)
        budget = limits.read(conn, studio.id, post.client, email, bare, token)
        if budget.token_used:  # the same page posted twice at once: the first one stands
            return Outcome("stored", submitted=find_submitted(conn, studio.id, token))
        if budget.wait is not None:
            return Outcome("later", retry_after=budget.wait, bare=bare)
        submission = Submission(studio=studio, version=version.version, definition=version.definition,
                                checked=checked, token=token, consent_at=consent_at,
                                guest_language=post.guest_language, bare=bare)
        submitted = store_submission(conn, submission, settings, reactions)
        limits.count(conn, studio.id, post.client, email, bare)
        return Outcome("stored", submitted=submitted, version=version, checked=checked, bare=bare)

    return Pending(write, studio.id, token)
