"""SendGrid Inbound Parse: each inbound email posted as multipart/form-data.

Two payloads exist: the default parsed fields, and "POST the raw, full MIME message", which
puts the whole message in the `email` field. Both carry `envelope` (JSON with the SMTP
`from` and `to`), which chooses the studio, and `charsets`, which says how each parsed field
is encoded (honoured in webhooks/compose.py).

Authentication, as SendGrid offers it:
- signed requests, when the Parse webhook has a security policy with signature verification:
  ECDSA P-256/SHA-256 over the timestamp header followed by the exact body bytes, checked
  with the policy's public key (Twilio SendGrid "Securing your Inbound Parse Webhooks"); and/or
- credentials in the Parse URL (https://user:password@host/webhooks/sendgrid), which arrive as
  HTTP basic auth.
Every configured mechanism must pass; with none configured the receiver is off.

SendGrid retries non-2xx answers for up to 3 days and documents a 2xx as the way to stop, so
mail for an unknown studio is answered `200` with status "refused" (and stored nowhere).
"""
from __future__ import annotations

import base64
import binascii
import json
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from litestar import Request, Response

from gateway.settings import Settings
from webhooks.base import Delivery, Receiver, WebhookError, check_basic_auth, check_timestamp
from webhooks.compose import ComposeError, mime_from_sendgrid
from webhooks.forms import FormError, parse_form
from webhooks import verdicts

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"


class SendGridReceiver(Receiver):
    name = "sendgrid"
    paths = ("/webhooks/sendgrid",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        try:
            self.public_key  # a bad key stops the gateway at start, not each request with a 500
        except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
            raise ValueError("GATEWAY_SENDGRID_VERIFICATION_KEY is not SendGrid's public key "
                             f"(base64 DER or PEM of an ECDSA key): {type(exc).__name__}") from None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.sendgrid_verification_key) or self.settings.sendgrid_basic_auth is not None

    @cached_property
    def public_key(self) -> ec.EllipticCurvePublicKey | None:
        text = self.settings.sendgrid_verification_key.strip()
        if not text:
            return None
        key = (load_pem_public_key(text.encode()) if text.startswith("-----BEGIN")
               else load_der_public_key(base64.b64decode(text)))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("GATEWAY_SENDGRID_VERIFICATION_KEY is not an ECDSA public key")
        return key

    def refused_recipient(self) -> Response[dict[str, Any]]:
        return Response({"status": "refused", "detail": "no studio mailbox at the recipient address"},
                        status_code=200)

    def authenticate(self, request: Request[Any, Any, Any]) -> None:
        if self.settings.sendgrid_basic_auth is not None:
            check_basic_auth(request, self.settings.sendgrid_basic_auth.get_secret_value(), 401)
        if self.public_key is not None and not (request.headers.get(SIGNATURE_HEADER)
                                                and request.headers.get(TIMESTAMP_HEADER)):
            raise WebhookError(401, "missing SendGrid signature headers")

    async def read(self, request: Request[Any, Any, Any], body: bytes) -> Delivery:
        if self.public_key is not None:  # the signature covers the body: checked once it is read
            self._verify_signature(request, body)
        try:
            form = parse_form(body, request.headers.get("content-type", ""))
        except FormError as exc:
            raise WebhookError(400, str(exc)) from None
        try:
            envelope = json.loads(form.text("envelope") or "null")
        except ValueError:
            raise WebhookError(400, "field 'envelope' is not JSON") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("to"), list):
            raise WebhookError(400, "field 'envelope' must be a JSON object with a 'to' list")
        recipients = [str(r) for r in envelope["to"] if isinstance(r, str)]
        mail_from = envelope.get("from") if isinstance(envelope.get("from"), str) else ""
        raw = form.raw("email")
        if raw is None:
            try:
                raw = mime_from_sendgrid(form)
            except ComposeError as exc:
                raise WebhookError(400, str(exc)) from None
        return Delivery(raw=raw, mail_from=mail_from or "", recipients=recipients,
                        authentication=verdicts.sendgrid(form.text("SPF"), form.text("dkim")))

    def _verify_signature(self, request: Request[Any, Any, Any], body: bytes) -> None:
        assert self.public_key is not None
        signature = request.headers.get(SIGNATURE_HEADER, "")
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        if not signature or not timestamp:
            raise WebhookError(401, "missing SendGrid signature headers")
        try:
            self.public_key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + body,
                                   ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, binascii.Error, ValueError):
            raise WebhookError(401, "bad SendGrid signature") from None
        check_timestamp(timestamp, self.settings.webhook_max_age, "SendGrid")
