"""What every provider webhook shares: authenticate, extract one email, store it, answer.

Each provider module only knows its own payload and authentication and hands back a
`Delivery` (raw RFC 5322 bytes plus the envelope). Everything after that is common and is the
same pipeline SMTP feeds: the envelope recipients choose the studio exactly as RCPT TO does,
and the answer is `200` only once the Acceptor has durably stored the message.

Answer codes follow each provider's retry rules, which differ (anymail writes its policy the
same way): trouble on our side is always `503`, which every provider retries; a request we
will never take is answered with the code that makes that provider stop.
"""
from __future__ import annotations

import base64
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from litestar import Request, Response

from gateway.inbound.directory import StudioDirectory
from gateway.inbound.acceptor import Acceptor, StorageFull, TemporaryFailure, log_accepted
from gateway.inbound.intake import Envelope, FloodLimited, Replayed
from gateway.settings import Settings

log = logging.getLogger("webhooks")

RETRY_AFTER = "60"


class WebhookError(Exception):
    """A refusal with its HTTP status; the message is shown to the caller, so it never holds
    secrets or payload content."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Delivery:
    raw: bytes
    mail_from: str
    recipients: list[str]
    nonce: str | None = None  # a one-time request token that must not be accepted twice
    authentication: str | None = None  # the provider's SPF/DKIM/DMARC verdicts (webhooks/verdicts.py)


class Receiver:
    """One provider: its authentication, its payload, and its answer codes."""

    name: ClassVar[str]
    paths: ClassVar[tuple[str, ...]]
    status_unknown_recipient: ClassVar[int] = 404
    status_replayed: ClassVar[int] = 403

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def enabled(self) -> bool:
        raise NotImplementedError

    def authenticate(self, request: Request[Any, Any, Any]) -> None:
        """Checks that need only the headers (HTTP basic auth), run before the body is read, so
        a caller without credentials gets its 401 without making us read (and hold) a body of
        up to `webhook_max_body` bytes. Raises WebhookError; checks over the body go in `read`."""

    async def read(self, request: Request[Any, Any, Any], body: bytes) -> Delivery | None:
        """Authenticate what needs the body and extract the email; None acknowledges a request
        that carries none."""
        raise NotImplementedError

    def refused_recipient(self) -> Response[dict[str, Any]]:
        return error(self.status_unknown_recipient, "no studio mailbox at the recipient address")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:
    """The app's JSON error shape (the one Litestar uses for its own errors)."""
    return Response({"status_code": status, "detail": message}, status_code=status, headers=headers)


def check_basic_auth(request: Request[Any, Any, Any], expected: str, status: int) -> None:
    """HTTP basic auth against "user:password", compared in constant time."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    supplied = b""
    if scheme.lower() == "basic":
        try:
            supplied = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            supplied = b""
    if not supplied or not hmac.compare_digest(supplied, expected.encode()):
        raise WebhookError(status, "missing or wrong credentials")


def check_timestamp(timestamp: str, max_age: float, provider: str) -> None:
    """A signed timestamp must be recent: an old (or future) one is a captured request replayed."""
    try:
        age = time.time() - float(timestamp)
    except ValueError:
        raise WebhookError(401, f"malformed {provider} timestamp") from None
    if abs(age) > max_age:
        raise WebhookError(401, f"stale {provider} timestamp")


async def receive(receiver: Receiver, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The shared endpoint body: authenticate → extract → choose studio → store → answer."""
    if not receiver.enabled:
        return error(404, f"the {receiver.name} webhook is not enabled on this gateway")
    settings: Settings = request.app.state.settings
    try:
        receiver.authenticate(request)  # before a byte of the body is read
        body = await request.body()  # bounded by the route's request_max_body_size (413 beyond)
        delivery = await receiver.read(request, body)
    except WebhookError as exc:
        refused(receiver.name, request, exc.status, exc.message)
        return error(exc.status, exc.message, {"Retry-After": RETRY_AFTER} if exc.status >= 500 else None)
    if delivery is None:
        return Response({"status": "ok"}, status_code=200)
    if len(delivery.raw) > settings.smtp_max_message_size:
        refused(receiver.name, request, 413, "message too large")
        return error(413, f"message of {len(delivery.raw)} bytes exceeds the limit of "
                          f"{settings.smtp_max_message_size} bytes")
    directory: StudioDirectory = request.app.state.directory
    acceptor: Acceptor = request.app.state.acceptor
    try:
        recipients = await directory.deliverable(delivery.recipients[:settings.smtp_max_recipients],
                                                 settings.mail_domain)
    except Exception:
        log.warning("%s webhook: studio lookup failed, answering 503", receiver.name, exc_info=True)
        refused(receiver.name, request, 503, "studio lookup failed")
        return error(503, "temporary problem, please retry", {"Retry-After": RETRY_AFTER})
    if not recipients:
        refused(receiver.name, request, receiver.status_unknown_recipient, "unknown recipient")  # the addresses only at DEBUG:
        log.debug("%s webhook recipients refused: %s", receiver.name, ", ".join(delivery.recipients)[:300])
        return receiver.refused_recipient()
    envelope = Envelope(mail_from=delivery.mail_from[:320], rcpt_tos=recipients, peer=_peer(request),
                        source=receiver.name, nonce=delivery.nonce, authentication=delivery.authentication)
    try:
        inbound_id = await acceptor.accept(delivery.raw, envelope)
    except Replayed:
        refused(receiver.name, request, receiver.status_replayed, "replayed a used token")
        return error(receiver.status_replayed, "this request was already received (token used before)")
    except FloodLimited:
        refused(receiver.name, request, 503, "too many new conversations from this sender")
        return error(503, "too many new conversations from this sender, please retry later",
                     {"Retry-After": "600"})
    except StorageFull:
        refused(receiver.name, request, 503, "storage full")
        return error(503, "insufficient storage on our side, please retry", {"Retry-After": RETRY_AFTER})
    except TemporaryFailure:
        refused(receiver.name, request, 503, "temporary problem storing the message")
        return error(503, "temporary problem storing the message, please retry", {"Retry-After": RETRY_AFTER})
    log_accepted(inbound_id, envelope, len(delivery.raw), "200")
    return Response({"status": "stored", "id": inbound_id}, status_code=200)


def refused(provider: str, request: Request[Any, Any, Any], status: int, reason: str) -> None:
    """The one line for each webhook post refused: bad credentials and signatures (someone may be
    probing) and our own trouble (5xx) at WARNING, a provider's malformed or misaddressed post at
    INFO. The reason is ours, never the request's content."""
    level = logging.WARNING if status in (401, 403) or status >= 500 else logging.INFO
    log.log(level, "%s webhook refused from %s (%d): %s", provider, _peer(request), status, reason,
            extra={"event": "webhook_refused", "provider": provider, "reason": reason, "status": status,
                   "peer": _peer(request)})


def _peer(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""
