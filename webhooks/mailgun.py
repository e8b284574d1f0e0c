"""Mailgun routes: `forward()` posts each inbound email to us.

Mailgun signs every post with the fields `timestamp`, `token` and `signature`, the latter
HMAC-SHA256 of timestamp+token under the account's webhook signing key (Mailgun's "Securing
webhooks"). A route whose URL ends in `mime` gets the raw message in `body-mime`; otherwise
the parsed fields arrive and an equivalent MIME message is rebuilt (webhooks/compose.py).

Mailgun retries every answer but `200` and `406` for 8 hours, so `406` is kept for requests
that must never come back: an unknown studio, and a token already used with a stored message
(if that is Mailgun's own retry, we already have the mail).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

from litestar import Request

from webhooks.base import Delivery, Receiver, WebhookError, check_timestamp
from webhooks.compose import ComposeError, mime_from_mailgun
from webhooks.forms import FormError, parse_form
from webhooks import verdicts


class MailgunReceiver(Receiver):
    name = "mailgun"
    paths = ("/webhooks/mailgun", "/webhooks/mailgun/mime")
    status_unknown_recipient = 406
    status_replayed = 406

    @property
    def enabled(self) -> bool:
        return self.settings.mailgun_signing_key is not None

    async def read(self, request: Request[Any, Any, Any], body: bytes) -> Delivery:
        try:
            form = parse_form(body, request.headers.get("content-type", ""))
        except FormError as exc:
            raise WebhookError(400, str(exc)) from None
        token = form.text("token")
        self._verify(form.text("timestamp"), token, form.text("signature"))
        recipients = [r.strip() for r in form.text("recipient").split(",") if r.strip()]
        if not recipients:
            raise WebhookError(400, "missing field 'recipient'")
        mime = form.raw("body-mime")
        if mime is not None:
            raw = mime
        else:
            try:
                raw = mime_from_mailgun(form)
            except ComposeError as exc:
                raise WebhookError(400, str(exc)) from None
        return Delivery(raw=raw, mail_from=form.text("sender"), recipients=recipients, nonce=token,
                        authentication=verdicts.mailgun(form.text("X-Mailgun-Spf"),
                                                        form.text("X-Mailgun-Dkim-Check-Result")))

    def _verify(self, timestamp: str, token: str, signature: str) -> None:
        assert self.settings.mailgun_signing_key is not None
        if not timestamp or not token or not signature:
            raise WebhookError(401, "missing Mailgun signature fields (timestamp, token, signature)")
        if len(token) > 128:
            raise WebhookError(401, "malformed Mailgun token")
        key = self.settings.mailgun_signing_key.get_secret_value().encode()
        expected = hmac.new(key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.strip().lower()):
            raise WebhookError(401, "bad Mailgun signature")
        check_timestamp(timestamp, self.settings.webhook_max_age, "Mailgun")
