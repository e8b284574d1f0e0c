"""Every table's Core handle, defined once.

The hot paths build SQLAlchemy Core statements (cheaper than ORM sessions, and the same on
SQLite and PostgreSQL); they all name tables through these handles, so a module never
reaches into another domain's module just to get at a table.
"""
from __future__ import annotations

from sqlalchemy import Table

from gateway.store.models import (Studio, Profile, ApiToken, Blob, InboundMail, Guest, Conversation, Message, Attachment, OutboundJob, Subscription, Lockdown, PaymentPause, StripeEvent, Tombstone, BackupSchedule, SupportGrant, SupportToken, AuditEntry, AccountDeletion, RateLimit, AutomaticMail, IdempotencyKey, StudioEventCounter, StudioEvent, FormVersion, FormSubmission, FormChallengeUsed, LoginLink, WebSession, WebhookEndpoint, WebhookDelivery, WebhookAttempt, NotificationPreference, Notification)

STUDIO: Table = Studio.__table__  # type: ignore[attr-defined]
PROFILE: Table = Profile.__table__  # type: ignore[attr-defined]
API_TOKEN: Table = ApiToken.__table__  # type: ignore[attr-defined]
BLOB: Table = Blob.__table__  # type: ignore[attr-defined]
INBOUND: Table = InboundMail.__table__  # type: ignore[attr-defined]
GUEST: Table = Guest.__table__  # type: ignore[attr-defined]
CONVERSATION: Table = Conversation.__table__  # type: ignore[attr-defined]
MESSAGE: Table = Message.__table__  # type: ignore[attr-defined]
ATTACHMENT: Table = Attachment.__table__  # type: ignore[attr-defined]
OUTBOUND_JOB: Table = OutboundJob.__table__  # type: ignore[attr-defined]
SUBSCRIPTION: Table = Subscription.__table__  # type: ignore[attr-defined]
LOCKDOWN: Table = Lockdown.__table__  # type: ignore[attr-defined]
PAYMENT_PAUSE: Table = PaymentPause.__table__  # type: ignore[attr-defined]
STRIPE_EVENT: Table = StripeEvent.__table__  # type: ignore[attr-defined]
TOMBSTONE: Table = Tombstone.__table__  # type: ignore[attr-defined]
BACKUP_SCHEDULE: Table = BackupSchedule.__table__  # type: ignore[attr-defined]
SUPPORT_GRANT: Table = SupportGrant.__table__  # type: ignore[attr-defined]
SUPPORT_TOKEN: Table = SupportToken.__table__  # type: ignore[attr-defined]
AUDIT_ENTRY: Table = AuditEntry.__table__  # type: ignore[attr-defined]
ACCOUNT_DELETION: Table = AccountDeletion.__table__  # type: ignore[attr-defined]
RATE_LIMIT: Table = RateLimit.__table__  # type: ignore[attr-defined]
AUTOMATIC_MAIL: Table = AutomaticMail.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_KEY: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
STUDIO_EVENT_COUNTER: Table = StudioEventCounter.__table__  # type: ignore[attr-defined]
STUDIO_EVENT: Table = StudioEvent.__table__  # type: ignore[attr-defined]
FORM_VERSION: Table = FormVersion.__table__  # type: ignore[attr-defined]
FORM_SUBMISSION: Table = FormSubmission.__table__  # type: ignore[attr-defined]
FORM_CHALLENGE_USED: Table = FormChallengeUsed.__table__  # type: ignore[attr-defined]
LOGIN_LINK: Table = LoginLink.__table__  # type: ignore[attr-defined]
WEB_SESSION: Table = WebSession.__table__  # type: ignore[attr-defined]
WEBHOOK_ENDPOINT: Table = WebhookEndpoint.__table__  # type: ignore[attr-defined]
WEBHOOK_DELIVERY: Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
WEBHOOK_ATTEMPT: Table = WebhookAttempt.__table__  # type: ignore[attr-defined]
NOTIFICATION_PREFERENCE: Table = NotificationPreference.__table__  # type: ignore[attr-defined]
NOTIFICATION: Table = Notification.__table__  # type: ignore[attr-defined]
