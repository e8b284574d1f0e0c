"""The studio's webhook endpoints (owner only): register with the event types to post, list,
rotate the secret, remove, and read each endpoint's deliveries with the endpoint's answers.
The work is in gateway/outbound/webhook_endpoints.py; this controller translates. A refused URL
or event type is 422 naming the field and the reason."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import JSONBody

from gateway.access.studios import Caller
from gateway.api.auth import require_owner
from gateway.api.created import LOCATION, created
from gateway.api.errors import validation_failed
from gateway.api.idempotency import Idempotent, shown_once
from gateway.api.ids import RowId
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.api.tokens import NO_STORE
from gateway.outbound import webhook_endpoints as endpoints
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow


class EndpointIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=endpoints.MAX_URL)]
    event_types: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(min_length=1, max_length=8)]


class EndpointOut(msgspec.Struct):
    id: int
    url: str
    event_types: list[str]
    created_at: datetime
    previous_secret_valid_until: datetime | None   # after a rotation: the old secret still signs
    failing_since: datetime | None
    disabled_at: datetime | None                    # failed for 3 days: nothing is posted any more


class EndpointList(msgspec.Struct):
    items: list[EndpointOut]
    next_cursor: str | None = None


class EndpointWithSecret(msgspec.Struct):
    endpoint: EndpointOut
    secret: str | None   # shown this once; null only in an Idempotency-Key replay


class AttemptOut(msgspec.Struct):
    attempted_at: datetime
    status_code: int | None     # the endpoint's HTTP status; null: no answer (see `answer`)
    answer: str                 # the start of its answer's body, or why there was none


class DeliveryOut(msgspec.Struct):
    id: int
    event_id: int
    event_type: str
    status: str                 # pending, sending, delivered, failed
    attempts: list[AttemptOut]
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class DeliveryList(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None = None


def _out(e: endpoints.EndpointInfo) -> EndpointOut:
    return EndpointOut(id=e.id, url=e.url, event_types=e.event_types, created_at=e.created_at,
                       previous_secret_valid_until=e.rotated_until, failing_since=e.failing_since,
                       disabled_at=e.disabled_at)


def _refused(exc: endpoints.EndpointRefused) -> ValidationException:
    refused = validation_failed([(exc.field, str(exc))], code="webhook_endpoint_refused")
    refused.status_code = 422
    return refused


class WebhookEndpointController(Controller):
    path = "/api/v1/webhook-endpoints"

    @get("/", sync_to_thread=True)
    def index(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
              cursor: Cursor = None) -> EndpointList:
        """Owner only: the studio's endpoints, oldest first (never their secrets)."""
        require_owner(caller, "manage webhooks")
        with cursor_checked(), read_tx(state.engine) as conn:
            page = endpoints.list_endpoints(conn, caller.studio_id, utcnow(), limit=limit, cursor=cursor)
        return EndpointList(items=[_out(e) for e in page.items], next_cursor=page.next_cursor)

    @post("/", sync_to_thread=True, status_code=201, response_headers=[*NO_STORE, LOCATION],
          opt=shown_once("secret"))
    def register(self, state: State, caller: NamedDependency[Caller], idempotent: Idempotent,
                 data: JSONBody[EndpointIn]) -> Response[EndpointWithSecret]:
        """Owner only: post the chosen event types, recorded from now on, to `url` (https, on a
        public address); `secret` signs them and is shown this once."""
        require_owner(caller, "manage webhooks")
        settings = state.settings
        try:
            endpoints.check_event_types(data.event_types)
            endpoints.check_url(data.url, settings.webhook_allow_loopback)  # resolves: outside the transaction
            with write_tx(state.engine) as conn:
                new = endpoints.register(conn, caller.studio_id, data.url, data.event_types,
                                         instance_secret=settings.secret(), now=utcnow())
        except endpoints.EndpointRefused as exc:
            raise _refused(exc) from None
        return created(EndpointWithSecret(endpoint=_out(new.endpoint), secret=new.secret),
                       f"/api/v1/webhook-endpoints/{new.endpoint.id}")

    @post("/{endpoint_id:str}/rotate-secret", sync_to_thread=True, status_code=200, response_headers=NO_STORE)
    def rotate(self, state: State, caller: NamedDependency[Caller], endpoint_id: RowId) -> EndpointWithSecret:
        """Owner only: a new secret, shown this once; the previous one keeps signing for 24 hours
        (each post then carries a `v1=` for both)."""
        require_owner(caller, "manage webhooks")
        with write_tx(state.engine) as conn:
            new = endpoints.rotate(conn, caller.studio_id, endpoint_id, instance_secret=state.settings.secret(),
                                   now=utcnow())
        if new is None:
            raise NotFoundException("webhook endpoint not found")
        return EndpointWithSecret(endpoint=_out(new.endpoint), secret=new.secret)

    @delete("/{endpoint_id:str}", sync_to_thread=True, status_code=204)
    def remove(self, state: State, caller: NamedDependency[Caller], endpoint_id: RowId) -> None:
        """Owner only: remove the endpoint and its deliveries; nothing more is posted to it."""
        require_owner(caller, "manage webhooks")
        with write_tx(state.engine) as conn:
            found = endpoints.remove(conn, caller.studio_id, endpoint_id)
        if not found:
            raise NotFoundException("webhook endpoint not found")

    @get("/{endpoint_id:str}/deliveries", sync_to_thread=True)
    def deliveries(self, state: State, caller: NamedDependency[Caller], endpoint_id: RowId,
                   limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> DeliveryList:
        """Owner only: the endpoint's deliveries, newest first, with every attempt and answer."""
        require_owner(caller, "manage webhooks")
        with cursor_checked(), read_tx(state.engine) as conn:
            page = endpoints.list_deliveries(conn, caller.studio_id, endpoint_id, limit=limit, cursor=cursor)
        if page is None:
            raise NotFoundException("webhook endpoint not found")
        return DeliveryList(items=[DeliveryOut(
            id=d.id, event_id=d.event_id, event_type=d.event_type, status=d.status,
            attempts=[AttemptOut(a.attempted_at, a.status_code, a.answer) for a in d.attempts],
            created_at=d.created_at, next_attempt_at=d.next_attempt_at, delivered_at=d.delivered_at)
            for d in page.items], next_cursor=page.next_cursor)
