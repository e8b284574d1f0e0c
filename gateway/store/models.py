"""SQLModel tables, grouped by family.

All of them in one module, a little over the ~400 lines a module should have: the tables refer
to each other by foreign keys across families, and the migrations (and tests/test_migrations.py)
are checked against this one metadata, which a reader finds whole here. Their Core handles are
in gateway/store/tables.py.

Times are timezone-aware UTC everywhere: SQLModel's UTCDateTime stores them as UTC on both
back ends and hands them back aware, so SQLite and PostgreSQL compare alike.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- studios and who may act for them ------------------------------------------------------

class Studio(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=200)
    owner_email: str = Field(max_length=320)
    locale: str = Field(default="de", max_length=8)
    created_at: datetime = Field(default_factory=utcnow)
    acknowledge_inquiries: bool = False   # send guests an automatic "thanks, we'll answer" for new inquiries
    country: str | None = Field(default=None, max_length=2)   # ISO 3166 code: which lockdowns apply
    time_zone: str = Field(default="Europe/Berlin", max_length=64)  # IANA zone of the dates its mails show
    privacy_url: str | None = Field(default=None, max_length=2000)  # the privacy page the inquiry form's consent links


class Profile(SQLModel, table=True):
    """A person acting for a studio in the messenger: the owner or a connected member."""

    __table_args__ = (
        # One connected profile per address and studio, also when two owners' requests race;
        # a disconnected profile keeps its row (and history), so the address may connect again.
        Index("uq_profile_studio_email_connected", "studio_id", "email", unique=True,
              sqlite_where=text("disconnected_at IS NULL"), postgresql_where=text("disconnected_at IS NULL")),
    )
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    email: str = Field(max_length=320)
    name: str = Field(default="", max_length=200)
    role: str = Field(default="owner", max_length=16)   # owner | member
    created_at: datetime = Field(default_factory=utcnow)
    disconnected_at: datetime | None = None
    # The language the web pages speak to this person (de | en); None: the browser's Accept-Language.
    locale: str | None = Field(default=None, max_length=8)


class ApiToken(SQLModel, table=True):
    """Bearer tokens are stored only as SHA-256 hashes; the prefix lets owners tell them apart."""

    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    prefix: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


# --- bytes -----------------------------------------------------------------------------------

class Blob(SQLModel, table=True):
    """Content-addressed bytes (raw mail, attachments): the same file is stored once."""

    sha256: str = Field(primary_key=True, max_length=64)
    size: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


# --- inbound receipts ------------------------------------------------------------------------

class InboundMail(SQLModel, table=True):
    """One row per accepted delivery, written before `250`/`2xx`; processed afterwards.

    status: pending → processing → done | quarantined. A quarantined row keeps its raw bytes
    and the reason, and `gateway quarantine retry` puts it back to pending.
    """

    __tablename__ = "inbound_mail"
    __table_args__ = (
        Index("ix_inbound_mail_status_id", "status", "id"),
        # A provider's one-time request token (Mailgun's `token`) is stored with the message it
        # came with, in the same transaction: a replayed request collides here and is refused,
        # while a retry after our own failure (nothing committed) is not.
        Index("uq_inbound_mail_source_nonce", "source", "nonce", unique=True),
    )
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow)
    source: str = Field(default="smtp", max_length=32)
    peer: str = Field(default="", max_length=200)
    mail_from: str = Field(default="", max_length=320)
    rcpt_to: str = Field(sa_column=Column(Text, nullable=False))        # JSON list
    raw_sha256: str = Field(foreign_key="blob.sha256", max_length=64)
    size: int = 0
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    claimed_at: datetime | None = None
    # host:pid of the worker process holding the claim: `gateway serve` frees a dead child's
    # claims at once (gateway/worker_process.py) instead of after the lease.
    claimed_by: str | None = Field(default=None, max_length=100)
    processed_at: datetime | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    # A provider webhook's own SPF/DKIM/DMARC verdicts (JSON, gateway/inbound/authentication.py),
    # taken when the mail arrived: the provider, not we, saw the connection it came on.
    authentication: str | None = Field(default=None, sa_column=Column(Text))
    nonce: str | None = Field(default=None, max_length=128)


# --- conversations -----------------------------------------------------------------------------

class Guest(SQLModel, table=True):
    """A guest contact of one studio; guests never have accounts."""

    __table_args__ = (UniqueConstraint("studio_id", "email", name="uq_guest_studio_email"),)
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    email: str = Field(max_length=320)
    name: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class Conversation(SQLModel, table=True):
    """A guest's thread with a studio.

    deleted_at: soft-deleted by the studio (gateway/lifecycle/trash.py): hidden at once, restorable for
    30 days on a paid plan, then erased by the purge. deleted_by is the profile that deleted it,
    kept as a plain id so removing a profile never blocks on, or loses, that record.
    """

    __table_args__ = (
        # The list (deleted_at IS NULL, newest activity first), the trash and the purge
        # (deleted_at set) all start with the studio and its deleted_at.
        Index("ix_conversation_studio_live_activity", "studio_id", "deleted_at", "last_message_at"),
        # The inbox page, in its exact order (newest activity, then id) over live conversations:
        # read backwards it yields the first page without sorting the studio's every
        # conversation, which PostgreSQL did at 10,000 (6 ms → 0.1 ms, bench/web_inbox.py).
        Index("ix_conversation_inbox", "studio_id", "last_message_at", "id",
              sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
        Index("ix_conversation_guest_subject", "studio_id", "guest_id", "subject_key"),
        Index("ix_conversation_guest_created", "studio_id", "guest_id", "created_at"),
        Index("ix_conversation_studio_updated", "studio_id", "updated_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    guest_id: int = Field(foreign_key="guest.id")
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    subject_key: str = Field(default="", max_length=200)   # normalised subject for the fallback
    status: str = Field(default="open", max_length=16)      # open | closed
    created_at: datetime = Field(default_factory=utcnow)
    last_message_at: datetime = Field(default_factory=utcnow)
    message_count: int = 0
    read_at: datetime | None = None   # when the studio last read it: unread while last_message_at is later
    deleted_at: datetime | None = None
    deleted_by: int | None = None     # profile id
    # When anything a client shows of it last changed: a message, read state, status, deletion
    # or restore. Set by every statement that changes those (not an onupdate: the prepared
    # statements bind every value themselves); GET /api/v1/conversations?updated_since= reads it.
    updated_at: datetime = Field(default_factory=utcnow)


# Mail in no conversation (a notification or digest to a profile) that bounced or failed. Literal
# values: SQLite uses a partial index only for a query that repeats its WHERE term as written.
TOLD_BOUNCED = "conversation_id IS NULL AND delivery IN ('bounced', 'failed')"


class Message(SQLModel, table=True):
    """A message in a conversation, inbound or outbound.

    state: visible | held (sender is not a participant: the studio accepts or rejects it) | rejected.
    dedupe_key is unique per studio so a retried delivery is stored once even when two
    processors race on PostgreSQL; outbound messages leave it NULL. deleted_at/deleted_by: the
    message alone was soft-deleted (as for Conversation); a message of a deleted conversation
    keeps its own deleted_at, so restoring the conversation brings back exactly what it showed.
    """

    __table_args__ = (
        Index("ix_message_studio_message_id", "studio_id", "message_id"),
        Index("ix_message_conversation", "conversation_id", "id"),
        # A reply answers the conversation's latest guest message: found without walking
        # every reply of a long conversation (bench/outbound.py grew slower with each reply).
        Index("ix_message_conversation_inbound", "conversation_id", "direction", "received_at"),
        Index("ix_message_studio_deleted", "studio_id", "deleted_at"),   # the trash and the purge
        # A studio's acknowledgements of the last hour, counted before each one (their hourly cap).
        Index("ix_message_studio_auto", "studio_id", "auto_kind", "received_at"),
        # The notification mails that bounced or failed (few): a profile's pause is counted from
        # them, not from every notification it got (gateway/outbound/notify_preferences.py).
        Index("ix_message_told_bounced", "id", sqlite_where=text(TOLD_BOUNCED), postgresql_where=text(TOLD_BOUNCED)),
        UniqueConstraint("studio_id", "dedupe_key", name="uq_message_studio_dedupe"),
    )
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id")
    inbound_mail_id: int | None = Field(default=None, foreign_key="inbound_mail.id", index=True)
    direction: str = Field(max_length=8)                    # inbound | outbound
    state: str = Field(default="visible", max_length=16)
    from_email: str = Field(default="", max_length=320)
    from_name: str = Field(default="", max_length=200)
    to_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    cc_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    full_text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    html: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str = Field(max_length=998)
    in_reply_to: str | None = Field(default=None, sa_column=Column(Text))
    references_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    sent_at: datetime | None = None
    received_at: datetime = Field(default_factory=utcnow)
    thread_rule: str = Field(default="new", max_length=32)
    automatic: bool = False
    auto_kind: str | None = Field(default=None, max_length=32)
    delivery: str | None = Field(default=None, max_length=16)   # outbound: queued|sending|sent|failed|bounced|cancelled
    bounce_of_id: int | None = Field(default=None, foreign_key="message.id")
    raw_sha256: str | None = Field(default=None, foreign_key="blob.sha256", max_length=64)
    dedupe_key: str | None = Field(default=None, max_length=64)
    parser: str = Field(default="", max_length=16)
    defects_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    deleted_at: datetime | None = None
    deleted_by: int | None = None     # profile id
    # RFC 8601 Authentication-Results summary (without the header name) of an inbound message:
    # SPF, DKIM and DMARC as checked on receipt or as the provider reported them.
    authentication_results: str | None = Field(default=None, sa_column=Column(Text))


class AutomaticMail(SQLModel, table=True):
    """Automatic mail (bounces, auto-replies, lists, newsletters) that opened no conversation.

    It is never shown as chat, but nothing accepted may be invisible: GET /api/v1/automatic
    lists it for the studio. The raw bytes stay in inbound_mail; inbound_mail_id is a plain
    reference, not a foreign key, so erasing a guest's inbound mail elsewhere never trips over it.
    """

    __tablename__ = "automatic_mail"
    __table_args__ = (
        Index("ix_automatic_mail_studio_received", "studio_id", "received_at", "id"),
        UniqueConstraint("studio_id", "dedupe_key", name="uq_automatic_mail_studio_dedupe"),
    )
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    inbound_mail_id: int | None = None
    received_at: datetime = Field(default_factory=utcnow)
    auto_kind: str = Field(max_length=32)
    from_email: str = Field(default="", max_length=320)
    from_name: str = Field(default="", max_length=200)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    message_id: str = Field(default="", max_length=998)
    dedupe_key: str = Field(max_length=64)
    authentication_results: str | None = Field(default=None, sa_column=Column(Text))


class Attachment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=255)
    size: int
    sha256: str = Field(foreign_key="blob.sha256", max_length=64)
    inline: bool = False
    content_id: str | None = Field(default=None, max_length=998)


# --- outbound ----------------------------------------------------------------------------------

class OutboundJob(SQLModel, table=True):
    """One email to send, committed with its outbound message (the transactional outbox).

    status: queued → sending → sent | failed | cancelled (an automatic mail withdrawn because
    what it told of was erased: gateway/outbound/compose.Withdrawn); a temporary failure goes back to queued with a
    later next_attempt_at. `sending` carries a lease (claimed_at): a worker that died mid-way
    leaves the job to be claimed again after it. Marked `sent` right after the relay's 250, so
    a restarted worker does not send again what the relay already accepted.
    """

    __tablename__ = "outbound_job"
    __table_args__ = (Index("ix_outbound_job_status_due", "status", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    message_id: int = Field(foreign_key="message.id", unique=True)
    status: str = Field(default="queued", max_length=16)
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    next_attempt_at: datetime = Field(default_factory=utcnow)
    claimed_at: datetime | None = None
    sent_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))


# --- billing -----------------------------------------------------------------------------------

class Subscription(SQLModel, table=True):
    """A studio's plan as Stripe last told us; no row (or plan `free`) means the free plan.

    Stripe is the source of truth and its events arrive late, twice, or out of order:
    `stripe_as_of` is the creation time of the newest event applied, so an older one never
    moves the state back (gateway/billing/state.py).
    """

    studio_id: int = Field(primary_key=True, foreign_key="studio.id")
    plan: str = Field(default="free", max_length=16)         # free | monthly | yearly
    status: str = Field(default="none", max_length=32)        # Stripe's subscription status; none: never subscribed
    stripe_customer_id: str | None = Field(default=None, max_length=255, index=True)
    stripe_subscription_id: str | None = Field(default=None, max_length=255, unique=True)
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    ended_at: datetime | None = None
    collection_paused: bool = False                           # Stripe's pause_collection is set
    past_due_since: datetime | None = None
    stripe_as_of: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


class Lockdown(SQLModel, table=True):
    """A lockdown during which every payment is suspended (an operator starts and ends it)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    countries: str = Field(default="", max_length=400)        # comma-separated ISO codes; empty: everywhere
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


class PaymentPause(SQLModel, table=True):
    """One studio's payments paused by one lockdown: exactly one row per (lockdown, studio).

    state: pausing (recorded, Stripe not yet confirmed) → paused → resuming → resumed. The
    intermediate states make `gateway lockdown start|end` resumable after a crash.
    """

    __tablename__ = "payment_pause"
    __table_args__ = (UniqueConstraint("lockdown_id", "studio_id", name="uq_payment_pause_lockdown_studio"),)
    id: int | None = Field(default=None, primary_key=True)
    lockdown_id: int = Field(foreign_key="lockdown.id")
    studio_id: int = Field(foreign_key="studio.id", index=True)
    stripe_subscription_id: str = Field(max_length=255)
    state: str = Field(default="pausing", max_length=16)
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


class StripeEvent(SQLModel, table=True):
    """Stripe events applied, by id: a redelivered or concurrently delivered event applies once."""

    __tablename__ = "stripe_event"
    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100)
    created: int
    studio_id: int | None = Field(default=None, foreign_key="studio.id", index=True)
    received_at: datetime = Field(default_factory=utcnow)


# --- erasure -----------------------------------------------------------------------------------

class Tombstone(SQLModel, table=True):
    """The dedupe key of an erased inbound message: a late or retried delivery of the same mail
    must not bring an erased conversation back. A hash, no personal data."""

    studio_id: int = Field(primary_key=True, foreign_key="studio.id")
    dedupe_key: str = Field(primary_key=True, max_length=64)
    erased_at: datetime = Field(default_factory=utcnow)


# --- backups -----------------------------------------------------------------------------------

class BackupSchedule(SQLModel, table=True):
    """The scheduled backups' state, shared by every worker on the database. It is read and
    written only under the backup lock (gateway/backup/schedule.py), so workers on several
    hosts take one backup per interval between them, not one each."""

    __tablename__ = "backup_schedule"
    name: str = Field(primary_key=True, max_length=32)        # "scheduled"
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    last_file: str | None = Field(default=None, max_length=1024)
    last_error: str | None = Field(default=None, sa_column=Column(Text))


# --- support and audit -------------------------------------------------------------------------

class SupportGrant(SQLModel, table=True):
    """The owner's leave for support to read the studio's conversations until expires_at.

    Active while not revoked and not expired; a new grant replaces the studio's active one,
    so revoking the grant the owner sees ends support's access.

    closed_at: when the grant stopped being the studio's current one (revoked, or replaced by
    a newer grant, or, for one that had expired, closed when the next was made). The partial
    unique index lets the database, not only the code, hold "one open grant per studio": two
    owners granting at once cannot leave two active grants behind.
    """

    __tablename__ = "support_grant"
    __table_args__ = (
        Index("ix_support_grant_studio_expires", "studio_id", "expires_at"),
        Index("uq_support_grant_studio_open", "studio_id", unique=True,
              sqlite_where=text("closed_at IS NULL"), postgresql_where=text("closed_at IS NULL")),
    )
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    profile_id: int = Field(foreign_key="profile.id")   # the owner who granted it
    note: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    revoked_at: datetime | None = None
    closed_at: datetime | None = None


class SupportToken(SQLModel, table=True):
    """A support operator's bearer token (SHA-256 only, like ApiToken); reads need a grant."""

    __tablename__ = "support_token"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)                    # the operator, as the audit log names them
    prefix: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class AuditEntry(SQLModel, table=True):
    """Who read or changed access to a studio's data, when and why. Append-only: the code has
    no update or delete for it; rows go only when the whole studio is erased.

    Never holds message bodies, subjects or secrets: the target is a kind and an id.
    """

    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_entry_studio_id", "studio_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    created_at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=400)                  # owner:<email>, support:<name>, operator:<name>
    action: str = Field(max_length=64)                  # conversation.read, support_grant.create, ...
    target: str = Field(default="", max_length=100)     # conversation 12, attachment 7, ...
    reason: str = Field(default="", max_length=500)


# --- rate limits -------------------------------------------------------------------------------

class RateLimit(SQLModel, table=True):
    """Failed guesses per client address, shared by every process on the database
    (gateway/access/ratelimit.py): a token or deletion-code brake that each web process kept
    on its own let N processes take N times the budget.

    One row per (scope, address) while it says something: `failures` counted since
    `window_start`, and `blocked_until` once they reached the limit. `expires_at` is when the
    row says nothing any more, so old rows are dropped by an index range.
    """

    __tablename__ = "rate_limit"
    __table_args__ = (Index("ix_rate_limit_expires", "expires_at"),)
    scope: str = Field(primary_key=True, max_length=32)    # auth | deletion_code
    key: str = Field(primary_key=True, max_length=200)     # the client address
    window_start: datetime
    failures: int = 0
    blocked_until: datetime | None = None
    expires_at: datetime


class IdempotencyKey(SQLModel, table=True):
    """A client's `Idempotency-Key` on a POST that creates something, per studio and key
    (gateway/access/idempotency.py): the first request claims the row (the primary key makes
    the claim exact across every web process), and its 2xx answer is kept for 24 hours so a
    retry gets the same answer instead of a second reply mail.

    `fingerprint` is the SHA-256 of the route and the request body: the same key with another
    body is refused. While the first request runs, `status_code` is NULL; `started_at` lets a
    claim left by a dead process be taken over. Secrets shown once (a new token) are never
    kept: `body` holds the answer with them set to null.
    """

    __tablename__ = "idempotency_key"
    __table_args__ = (Index("ix_idempotency_key_expires", "expires_at"),)
    studio_id: int = Field(primary_key=True, foreign_key="studio.id")
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    path: str = Field(max_length=500)                     # the request's path, to forget it with its data
    started_at: datetime
    expires_at: datetime
    status_code: int | None = None                        # NULL: the first request is still running
    headers: str | None = Field(default=None, sa_column=Column(Text))   # JSON [[name, value], ...]
    body: bytes | None = Field(default=None, sa_column=Column(LargeBinary))


# --- account deletion --------------------------------------------------------------------------

class AccountDeletion(SQLModel, table=True):
    """One request to delete a studio's account: LÖSCHEN mailed to the helpdesk, or the API.

    Deliberately no `studio_id` column and no foreign key to the studio: the row must outlive
    the studio (gateway/lifecycle/erasure.py removes every row of every table with a studio_id), so the
    operator can see what was deleted, when and why. It holds no personal data: the studio's id
    number, times, and the reason with addresses, numbers and signatures removed
    (gateway/lifecycle/deletion_reason.py). The confirmation code itself is never stored: only its
    SHA-256 for the lookup, and the random nonce it is derived from with GATEWAY_SECRET_KEY
    (gateway/lifecycle/account_deletion.py), so a copy of the database alone confirms nothing.

    status: pending → deleted | void (another request of the same studio was confirmed first).
    """

    __tablename__ = "account_deletion"
    __table_args__ = (Index("ix_account_deletion_studio_requested", "studio_ref", "requested_at"),)
    id: int | None = Field(default=None, primary_key=True)
    studio_ref: int                                            # the studio's id, no foreign key
    channel: str = Field(max_length=8)                         # email | api | operator (`gateway studio remove`)
    status: str = Field(default="pending", max_length=16)
    nonce: str = Field(max_length=32)
    code_hash: str = Field(max_length=64, unique=True)
    requested_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    confirmed_at: datetime | None = None
    message_ref: int | None = None    # the helpdesk's outbound message carrying the code (no key: it may be erased)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


# --- the web messenger's sign-in ---------------------------------------------------------------

class LoginLink(SQLModel, table=True):
    """A one-time sign-in link mailed to a connected profile (gateway/access/web_sessions.py).

    The token in the link is HMAC(GATEWAY_SECRET_KEY, nonce) and only its SHA-256 is kept, so a
    copy of the database signs nobody in; the outbox recomputes the link from the nonce when it
    composes the mail, whose stored text shows it masked (as for account deletion)."""

    __tablename__ = "login_link"
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    nonce: str = Field(max_length=32)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None
    message_ref: int | None = None    # the helpdesk's outbound message carrying it (no key: it may be erased)


class WebSession(SQLModel, table=True):
    """A signed-in browser: the cookie holds a random token, the row only its SHA-256.

    Ends when `ended_at` is set (logout), when idle for longer than the idle limit
    (`last_seen_at`), and at once when its profile is disconnected or its studio erased: the
    lookup on every request joins the connected profile."""

    __tablename__ = "web_session"
    __table_args__ = (Index("ix_web_session_last_seen", "last_seen_at"),)
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


# --- the inquiry form (gateway/forms/) -------------------------------------------------------

class FormVersion(SQLModel, table=True):
    """Every save of a studio's inquiry form is a new row: a submission names the version it
    answered, so an old inquiry still reads with the labels the guest saw."""

    __tablename__ = "form_version"
    __table_args__ = (UniqueConstraint("studio_id", "version", name="uq_form_version_studio_version"),)
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    version: int
    definition_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class FormSubmission(SQLModel, table=True):
    """A guest's answers to the form, beside the conversation and message they became.

    `token` is the double-submit token issued with the page: a second post with it finds this
    row and makes no second conversation. `form_version_id` is NULL for the built-in default
    form a studio never edited (its version 0). The consent is stored as when and under which
    version it was given."""

    __tablename__ = "form_submission"
    __table_args__ = (UniqueConstraint("studio_id", "token", name="uq_form_submission_studio_token"),
                      Index("ix_form_submission_studio_created", "studio_id", "created_at"))
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    message_id: int = Field(foreign_key="message.id")
    form_version: int
    answers_json: str = Field(sa_column=Column(Text, nullable=False))
    token: str = Field(max_length=64)
    consent_at: datetime
    created_at: datetime = Field(default_factory=utcnow)


class FormChallengeUsed(SQLModel, table=True):
    """ALTCHA proof-of-work solutions already spent (gateway/forms/challenge.py): a solution
    is accepted once, so it is kept until its challenge expires and is dropped after."""

    __tablename__ = "form_challenge_used"
    __table_args__ = (Index("ix_form_challenge_used_expires", "expires_at"),)
    challenge: str = Field(primary_key=True, max_length=128)
    expires_at: datetime


# --- the studio's event log (gateway/eventlog.py) ----------------------------------------------

class StudioEventCounter(SQLModel, table=True):
    """Each studio's last event number. Taking the next one updates this row, so its row lock
    orders the transactions that write a studio's events: number n+1 can only be taken once the
    transaction holding n has committed (or rolled back, giving n back). A reader that sees n
    therefore sees every number below it, with no gap, which `id > last` over an autoincrement
    column cannot promise on PostgreSQL."""

    __tablename__ = "studio_event_counter"
    studio_id: int = Field(primary_key=True, foreign_key="studio.id", sa_column_kwargs={"autoincrement": False})
    seq: int = 0


class StudioEvent(SQLModel, table=True):
    """One thing that happened in a studio, as the live stream (GET /api/v1/events) and the
    studio's outgoing webhooks send it; kept 24 hours. `seq` is the event's id, per studio."""

    __tablename__ = "studio_event"
    __table_args__ = (Index("ix_studio_event_created_at", "created_at"),)
    studio_id: int = Field(primary_key=True, foreign_key="studio.id", sa_column_kwargs={"autoincrement": False})
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    type: str = Field(max_length=32)                    # message.created, conversation.updated, ...
    created_at: datetime = Field(default_factory=utcnow)
    data: str = Field(sa_column=Column(Text, nullable=False))   # JSON: the ids of what changed


# --- webhooks to the studio's own systems (gateway/outbound/webhooks.py) ---------------------

class WebhookEndpoint(SQLModel, table=True):
    """A URL of the studio's own system that is posted the events it chose.

    The secret signs each post, so it cannot be hashed: it is kept encrypted (AES-GCM, a key
    derived from the instance's secret key; gateway/outbound/webhook_secrets.py). After a
    rotation the previous secret still signs until `previous_until`. `scanned_seq` is the last
    event of the studio's log this endpoint has been given deliveries for."""

    __tablename__ = "webhook_endpoint"
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    url: str = Field(max_length=2000)
    event_types: str = Field(max_length=200)            # comma-separated, of gateway/eventlog.TYPES
    secret_enc: str = Field(max_length=200)
    previous_secret_enc: str | None = Field(default=None, max_length=200)
    previous_until: datetime | None = None
    scanned_seq: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    failing_since: datetime | None = None               # first failure since the last success
    disabled_at: datetime | None = None                 # failed for 3 days: no more posts


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint, with its own copy of the event (the log keeps 24 hours, the
    retries go on for 3 days). Pending until posted with a 2xx answer, or failed for good."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (UniqueConstraint("endpoint_id", "event_seq", name="uq_webhook_delivery_endpoint_event"),
                      Index("ix_webhook_delivery_status_due", "status", "next_attempt_at"))
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    endpoint_id: int = Field(foreign_key="webhook_endpoint.id")
    event_seq: int
    event_type: str = Field(max_length=32)
    conversation_id: int | None = None                  # in order per conversation
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=16)   # pending, sending, delivered, failed
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    claimed_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class WebhookAttempt(SQLModel, table=True):
    """One post of a delivery and the endpoint's answer: its status, or why there was none."""

    __tablename__ = "webhook_attempt"
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)   # erased with the studio (lifecycle/erasure.py)
    delivery_id: int = Field(foreign_key="webhook_delivery.id", index=True)
    attempted_at: datetime = Field(default_factory=utcnow)
    status_code: int | None = None
    answer: str = Field(default="", max_length=1000)


# --- notifications to profiles (gateway/outbound/notifications.py) -------------------------------

class NotificationPreference(SQLModel, table=True):
    """How a profile hears about guest mail; no row: the default of its role (owner immediately,
    members off). `resumed_at`: notifications bounced before it no longer count towards the
    pause (a PATCH resumes a paused profile)."""

    __tablename__ = "notification_preference"
    profile_id: int = Field(foreign_key="profile.id", primary_key=True)
    studio_id: int = Field(foreign_key="studio.id", index=True)
    mode: str = Field(default="off", max_length=16)          # immediately | hourly | off
    quiet_from: str | None = Field(default=None, max_length=5)  # HH:MM in the studio's time zone
    quiet_to: str | None = Field(default=None, max_length=5)
    resumed_at: datetime | None = None


class Notification(SQLModel, table=True):
    """One guest message a profile is to hear about. `mail_ref` is the outbound message that told
    it (an immediate notification or a digest), 0 when nobody will be; NULL while it waits: for
    the next digest, or (`immediate`) for the outbox to queue its mail after the burst
    (gateway/outbound/notifications.py). The storm limit and the digest both read these rows."""

    __table_args__ = (
        Index("ix_notification_profile_conversation", "profile_id", "conversation_id", "created_at"),
        # The immediate rows whose mail is not queued yet (mail_ref NULL), and the rows of a mail.
        # No index leads with studio_id: only a studio's erasure asks by it (rare, and the table
        # holds 30 days), while every index costs the processor's insert of each row.
        Index("ix_notification_mail", "mail_ref", "immediate"),
    )
    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studio.id")
    profile_id: int = Field(foreign_key="profile.id")
    conversation_id: int   # plain references: erasing a conversation never trips over them
    message_ref: int
    created_at: datetime = Field(default_factory=utcnow)
    mail_ref: int | None = None
    immediate: bool = False   # told at once (counts for the storm limit), not in a digest


def _ids_never_reused() -> None:
    """AUTOINCREMENT on SQLite for every table keyed by an integer `id` (migration 0016).

    Without it SQLite hands out max(id) + 1, so erasing a studio's newest rows gave their ids
    to another studio's next ones, and an app's cache keyed by id showed someone else's data.
    PostgreSQL's sequences never reuse a number. A new table gets this by being defined here;
    its migration must say `sqlite_autoincrement=True` (tests/test_api_ids.py checks both)."""
    for table in SQLModel.metadata.tables.values():
        key = list(table.primary_key.columns)
        if len(key) == 1 and key[0].name == "id" and key[0].type.python_type is int:
            table.dialect_kwargs["sqlite_autoincrement"] = True


_ids_never_reused()

