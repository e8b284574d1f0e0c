"""Provider webhooks: each receiver turns a provider's post into the same stored raw message
that SMTP produces, so one pipeline serves both doors."""
from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler

from gateway.metrics import WEBHOOKS, mail_answered
from gateway.settings import Settings
from webhooks.base import Receiver, receive
from webhooks.mailgun import MailgunReceiver
from webhooks.postmark import PostmarkReceiver
from webhooks.sendgrid import SendGridReceiver
from webhooks.ses import SesReceiver

RECEIVERS: tuple[type[Receiver], ...] = (MailgunReceiver, SendGridReceiver, PostmarkReceiver, SesReceiver)


async def _endpoint(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    receiver: Receiver = request.app.state.webhooks[request.route_handler.opt["provider"]]
    response = await receive(receiver, request)
    count_post(receiver.name, response)
    return response


def count_post(provider: str, response: Response[dict[str, Any]]) -> None:
    """Every post by its answer; a post that offered mail counts as mail too (gateway_mail), so
    webhook and SMTP mail add up in one series. Posts that carry no mail (a provider's test
    ping, answered `{"status": "ok"}`) are not mail."""
    WEBHOOKS.labels(provider, str(response.status_code)).inc()
    content = response.content
    if not (isinstance(content, dict) and content.get("status") == "ok"):
        mail_answered(provider, response.status_code)


def webhook_handlers(settings: Settings) -> tuple[dict[str, Receiver], list[HTTPRouteHandler]]:
    """The receivers and their routes, with a body limit that fits the largest mail we take.
    Providers call them, not API clients: they stay out of the OpenAPI document (docs/api.md)."""
    receivers = {cls.name: cls(settings) for cls in RECEIVERS}
    handlers = [
        post(path, name=f"webhook-{receiver.name}-{index}", opt={"provider": receiver.name},
             request_max_body_size=settings.webhook_max_body, status_code=200, include_in_schema=False,
             summary=f"Inbound mail from {receiver.name}")(_endpoint)
        for receiver in receivers.values() for index, path in enumerate(receiver.paths)
    ]
    return receivers, handlers
