"""Postmark inbound webhook: one JSON document per inbound email.

With "Include raw email content in JSON payload" enabled, `RawEmail` holds the whole message
and is used as is; otherwise the message is rebuilt from `Headers`, `TextBody`, `HtmlBody` and
the base64 `Attachments` (webhooks/compose.py). `OriginalRecipient` is the envelope recipient
and chooses the studio.

Postmark authenticates inbound posts only through credentials in the webhook URL
(https://user:password@host/webhooks/postmark), sent as HTTP basic auth. Postmark retries
everything but `200` for about 10 hours and stops at once on `403`: so `403` is kept for mail
we will never take (an unknown studio), never for trouble on our side, and wrong credentials
answer `401` so that a key mix-up during a rotation loses nothing.
"""
from __future__ import annotations

import json
from typing import Any

from litestar import Request

from gateway.inbound.headers import normalize_email
from webhooks.base import Delivery, Receiver, WebhookError, check_basic_auth
from webhooks.compose import ComposeError, mime_from_postmark
from webhooks import verdicts


class PostmarkReceiver(Receiver):
    name = "postmark"
    paths = ("/webhooks/postmark",)
    status_unknown_recipient = 403

    @property
    def enabled(self) -> bool:
        return self.settings.postmark_basic_auth is not None

    def authenticate(self, request: Request[Any, Any, Any]) -> None:
        assert self.settings.postmark_basic_auth is not None
        check_basic_auth(request, self.settings.postmark_basic_auth.get_secret_value(), 401)

    async def read(self, request: Request[Any, Any, Any], body: bytes) -> Delivery:
        try:
            payload = json.loads(body)
        except ValueError:
            raise WebhookError(400, "body is not JSON") from None
        if not isinstance(payload, dict):
            raise WebhookError(400, "body must be a JSON object")
        recipients = _recipients(payload)
        if not recipients:
            raise WebhookError(400, "no recipient in OriginalRecipient, ToFull or CcFull")
        raw_email = payload.get("RawEmail")
        if isinstance(raw_email, str) and raw_email:
            # JSON carries text: 8-bit mail arrives decoded; UTF-8 is what such mail almost
            # always was, and the MIME parser copes with the rest.
            raw = raw_email.encode("utf-8", "surrogateescape")
        else:
            try:
                raw = mime_from_postmark(payload)
            except ComposeError as exc:
                raise WebhookError(400, str(exc)) from None
        return Delivery(raw=raw, mail_from=_sender(payload), recipients=recipients,
                        authentication=verdicts.postmark(payload.get("Headers")))


def _recipients(payload: dict[str, Any]) -> list[str]:
    original = payload.get("OriginalRecipient")
    if isinstance(original, str) and original.strip():
        return [original.strip()]
    found: list[str] = []
    for key in ("ToFull", "CcFull", "BccFull"):
        entries = payload.get(key)
        if isinstance(entries, list):
            found.extend(str(e["Email"]) for e in entries if isinstance(e, dict) and isinstance(e.get("Email"), str))
    return found


def _sender(payload: dict[str, Any]) -> str:
    for header in payload.get("Headers") or []:
        if isinstance(header, dict) and str(header.get("Name", "")).lower() == "return-path":
            return normalize_email(str(header.get("Value", "")))
    full = payload.get("FromFull")
    if isinstance(full, dict) and isinstance(full.get("Email"), str):
        return full["Email"]
    return str(payload.get("From") or "")
