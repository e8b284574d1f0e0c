"""Amazon SES inbound mail, delivered by a receipt rule's SNS action to an HTTPS subscription.

Every SNS post is verified before anything else (webhooks/sns.py): the signature against the
certificate SNS names, fetched only from an allow-listed AWS host. A valid AWS signature only
proves that *some* SNS topic sent it, so the topic must also be one configured in
GATEWAY_SES_TOPIC_ARNS; anyone could otherwise point their own topic at us.

The SES notification (notificationType "Received") carries the whole message in `content`,
base64 or UTF-8 as the action's encoding says, and the envelope in `receipt.recipients` and
`mail.source`. SNS treats every 4xx as final and retries only 5xx, so a refusal is 4xx and
trouble on our side (including failing to fetch the certificate) is 503.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from functools import cached_property
from typing import Any, Callable

from litestar import Request

from gateway.settings import Settings
from webhooks.base import Delivery, Receiver, WebhookError
from webhooks.sns import SnsError, SnsUnavailable, SnsVerifier
from webhooks import verdicts

log = logging.getLogger("webhooks.ses")


class SesReceiver(Receiver):
    name = "ses"
    paths = ("/webhooks/ses",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if self.enabled:
            try:
                self.verifier  # a broken host pattern stops the gateway at start, not each request
            except re.error as exc:
                raise ValueError(f"GATEWAY_SES_CERT_HOST_PATTERN is not a valid regular expression: {exc}") from None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.ses_topics)

    @cached_property
    def verifier(self) -> SnsVerifier:
        ca_file = str(self.settings.ses_cert_ca_file) if self.settings.ses_cert_ca_file else None
        return SnsVerifier(cert_host_pattern=self.settings.ses_cert_host_pattern, ca_file=ca_file)

    async def read(self, request: Request[Any, Any, Any], body: bytes) -> Delivery | None:
        try:
            message = json.loads(body)
        except ValueError:
            raise WebhookError(400, "body is not an SNS message (JSON)") from None
        if not isinstance(message, dict):
            raise WebhookError(400, "body is not an SNS message (JSON object)")
        # The topic first, unverified: a message naming any other topic is refused without a
        # certificate fetch, so a stranger's topic (or a forgery) can't make us call out. One
        # naming ours is then verified, which proves the topic too (TopicArn is signed).
        topic = message.get("TopicArn")
        if topic not in self.settings.ses_topics:
            raise WebhookError(403, "SNS topic is not configured on this gateway")
        await _sns(self.verifier.verify, message, "SNS signature not valid")
        kind = message.get("Type")
        if kind == "SubscriptionConfirmation":
            await self._subscription(message)
            return None
        if kind != "Notification":
            log.info("SNS %s for %s acknowledged", kind, topic)
            return None
        return _delivery(message)

    async def _subscription(self, message: dict[str, Any]) -> None:
        if not self.settings.ses_auto_confirm:
            log.warning("SNS subscription request for %s not confirmed (GATEWAY_SES_AUTO_CONFIRM is off): "
                        "confirm it in the AWS console", message.get("TopicArn"))
            return
        await _sns(self.verifier.confirm_subscription, message, "subscription not confirmed")
        log.info("SNS subscription for %s confirmed", message.get("TopicArn"))


async def _sns(call: Callable[[dict[str, Any]], None], message: dict[str, Any], refusal: str) -> None:
    """Run a (blocking) SNS step off the loop: AWS unreachable is 503 so SNS retries, anything
    else 403, which SNS takes as final."""
    try:
        await asyncio.to_thread(call, message)
    except SnsUnavailable as exc:
        raise WebhookError(503, f"cannot reach SNS now, please retry: {exc}") from None
    except SnsError as exc:
        raise WebhookError(403, f"{refusal}: {exc}") from None


def _delivery(message: dict[str, Any]) -> Delivery | None:
    try:
        notification = json.loads(message.get("Message") or "")
    except ValueError:
        raise WebhookError(400, "SNS Message is not an SES notification (JSON)") from None
    if not isinstance(notification, dict):
        raise WebhookError(400, "SNS Message is not an SES notification (JSON object)")
    if notification.get("notificationType") != "Received":
        log.info("SES %s notification acknowledged", notification.get("notificationType"))
        return None
    receipt = notification.get("receipt") if isinstance(notification.get("receipt"), dict) else {}
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    content = notification.get("content")
    if not isinstance(content, str) or not content:
        raise WebhookError(400, "SES notification without content: use a receipt rule SNS action "
                                "(mail up to 150 KB), not the S3 action")
    action = receipt.get("action") if isinstance(receipt.get("action"), dict) else {}
    if str(action.get("encoding", "UTF8")).upper() == "BASE64":
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise WebhookError(400, "SES content is not valid base64") from None
    else:
        raw = content.encode("utf-8", "surrogateescape")
    recipients = [r for r in receipt.get("recipients") or [] if isinstance(r, str)]
    if not recipients:
        raise WebhookError(400, "SES notification without receipt.recipients")
    source = mail.get("source") if isinstance(mail.get("source"), str) else ""
    return Delivery(raw=raw, mail_from=source, recipients=recipients, authentication=verdicts.ses(receipt))
