"""The Litestar application: one controller per resource, the caller provided to each."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from litestar import Litestar, Router
from litestar.di import Provide
from sqlalchemy import Engine

from gateway.api.audit import AuditController
from gateway.api.automatic import AutomaticController
from gateway.api.account import AccountDeletionController, confirmation_form, confirmation_page
from gateway.api.auth import loop_reader, provide_caller
from gateway.api.billing import BillingController
from gateway.api.conversations import ConversationController
from gateway.api.cors import cors_hook
from gateway.api.docs import openapi_config, static_files
from gateway.api.events import events_stream
from gateway.api.export import ExportController
from gateway.api.form import FormController
from gateway.api.guests import GuestController
from gateway.api.idempotency import IdempotencyMiddleware, Replay, provide_idempotency, replay_answer
from gateway.api.health import healthz, readyz
from gateway.api.metrics import http_timing
from gateway.api.manage import AttachmentController, ConversationStatusController, HeldController
from gateway.api.profiles import ProfileController
from gateway.api.studio import StudioController
from gateway.api.support_grants import SupportGrantController
from gateway.api.tokens import TokenController
from gateway.api.webhook_endpoints import WebhookEndpointController
from gateway.api.trash import ConversationTrashController, MessageController, TrashController
from gateway.api.unavailable import UNAVAILABLE, database_unavailable
from gateway.api.allow import allow_header
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.ids import ROW_ID_DECODERS
from gateway.api.json_bodies import StrictJsonBodies
from gateway.api.request_ids import add_request_id
from gateway.billing.stripe_api import stripe_api
from gateway.billing.subscriptions import cancel_for_deletion
from gateway.inbound.directory import StudioDirectory
from gateway.settings import Settings
from webhooks import webhook_handlers
from webhooks.stripe import stripe_webhook


def create_app(engine: Engine, settings: Settings, pages: Sequence[Router | Any] = ()) -> Litestar:
    """The HTTP side; `app.state.acceptor` must be set before webhooks can store mail.

    `pages`: the server-rendered routes of gateway/web/ (the messenger, the inquiry form), which gateway/runtime.py mounts: the
    API and the pages are edges side by side and do not import each other."""
    receivers, webhooks = webhook_handlers(settings)
    reader = loop_reader(engine)

    def close_reader() -> None:
        hub = app.state.get("event_hub")
        if hub is not None:
            hub.stop()
        if reader is not None:
            reader.dispose()

    app = Litestar(
        route_handlers=[healthz, readyz, ConversationController, StudioController, TokenController, WebhookEndpointController,
                        HeldController, ConversationStatusController, AttachmentController, BillingController,
                        ProfileController, SupportGrantController, AuditController, ConversationTrashController,
                        MessageController, TrashController, GuestController, ExportController,
                        AccountDeletionController, AutomaticController, FormController, events_stream, confirmation_page, confirmation_form, *webhooks, stripe_webhook,
                        static_files(), *pages],
        dependencies={"caller": Provide(provide_caller), "idempotent": Provide(provide_idempotency)},
        openapi_config=openapi_config(),  # the docs page and its scripts served by us (api/docs.py)
        debug=False,
        # One error body for every answer that is not a success (api/errors.py); 503 for a database away.
        exception_handlers={**EXCEPTION_HANDLERS, **{error: database_unavailable for error in UNAVAILABLE},
                            Replay: replay_answer},
        type_decoders=ROW_ID_DECODERS,  # path ids: out of range is 404, malformed 400 (api/ids.py)
        before_send=[add_request_id, *([cors_hook(settings.cors_origin_set)] if settings.cors_origin_set else [])],
        on_shutdown=[close_reader],
        logging_config=None,  # logging is configured once by the gateway, not reset by Litestar
        # Per-route latency histograms only while /metrics is on: a request pays for them otherwise.
        # Idempotency-Key answers are held back until stored (api/idempotency.py).
        middleware=[*([http_timing()] if settings.metrics_port is not None else []), StrictJsonBodies(),
                    IdempotencyMiddleware],
    )
    app.before_send.append(allow_header(app))
    app.state.engine = engine
    app.state.loop_reader = reader
    app.state.settings = settings
    app.state.directory = StudioDirectory(engine)
    app.state.webhooks = receivers
    app.state.stripe_api = stripe_api(settings)
    # Deleting an account first ends its subscription (gateway/lifecycle/account_deletion.py calls this).
    app.state.cancel_subscription_for_deletion = partial(cancel_for_deletion, engine, app.state.stripe_api, settings)
    return app
