"""A studio's webhook endpoints: register, list, rotate the secret, remove; their deliveries.

Every function is scoped to the caller's studio: another studio's endpoint is not found.
The secret is returned only by `register` and `rotate` (the API shows it once) and stored
encrypted (webhook_secrets.py). A rotated-out secret keeps signing for PREVIOUS_VALID (24 h),
so the studio can switch its receiver over without losing a post.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from gateway.eventlog import TYPES, current
from gateway.outbound.webhook_address import AddressRefused, parse_url, resolve_checked
from gateway.outbound.webhook_secrets import encrypt, new_secret
from gateway.store.paging import Order, Page, keyset_page, with_items
from gateway.store.tables import WEBHOOK_ATTEMPT, WEBHOOK_DELIVERY, WEBHOOK_ENDPOINT

PREVIOUS_VALID = timedelta(hours=24)
MAX_ENDPOINTS = 10          # per studio: each endpoint multiplies the posts of every event
MAX_URL = 2000


class EndpointRefused(ValueError):
    """A registration that cannot be taken, with the field at fault (answered with 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class EndpointInfo:
    id: int
    url: str
    event_types: list[str]
    created_at: datetime
    rotated_until: datetime | None     # the previous secret still signs until then
    failing_since: datetime | None
    disabled_at: datetime | None


@dataclass(frozen=True)
class NewSecret:
    endpoint: EndpointInfo
    secret: str


@dataclass(frozen=True)
class AttemptInfo:
    attempted_at: datetime
    status_code: int | None
    answer: str


@dataclass(frozen=True)
class DeliveryInfo:
    id: int
    event_id: int
    event_type: str
    status: str
    attempts: list[AttemptInfo]
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None


_COLUMNS = (WEBHOOK_ENDPOINT.c.id, WEBHOOK_ENDPOINT.c.url, WEBHOOK_ENDPOINT.c.event_types,
            WEBHOOK_ENDPOINT.c.created_at, WEBHOOK_ENDPOINT.c.previous_until, WEBHOOK_ENDPOINT.c.failing_since,
            WEBHOOK_ENDPOINT.c.disabled_at)
ENDPOINTS = Order(id=WEBHOOK_ENDPOINT.c.id, descending=False)
DELIVERIES = Order(id=WEBHOOK_DELIVERY.c.id, descending=True)


def _info(row: Any, now: datetime) -> EndpointInfo:
    until = row.previous_until if row.previous_until is not None and row.previous_until > now else None
    return EndpointInfo(row.id, row.url, row.event_types.split(","), row.created_at, until,
                        row.failing_since, row.disabled_at)


def check_event_types(event_types: list[str]) -> list[str]:
    """The chosen types, each once, in the documented order; EndpointRefused naming an unknown one."""
    unknown = [t for t in event_types if t not in TYPES]
    if unknown:
        raise EndpointRefused("event_types", f"unknown event type {unknown[0]!r}; known: {', '.join(TYPES)}")
    if not event_types:
        raise EndpointRefused("event_types", "choose at least one event type")
    return [t for t in TYPES if t in event_types]


def check_url(url: str, allow_loopback: bool) -> str:
    """The URL if it may be posted to now (its name resolved and every address checked), or
    EndpointRefused with the reason. Checked again at every delivery (webhooks.py)."""
    if len(url) > MAX_URL:
        raise EndpointRefused("url", f"at most {MAX_URL} characters")
    try:
        resolve_checked(parse_url(url, allow_loopback), allow_loopback)
    except AddressRefused as exc:
        raise EndpointRefused("url", str(exc)) from None
    return url


def register(conn: Connection, studio_id: int, url: str, event_types: list[str], *, instance_secret: bytes,
             now: datetime) -> NewSecret:
    """A new endpoint, posted the chosen events recorded from now on; its secret, this once.
    `url` must have passed `check_url`, before the transaction: resolving a name can take
    seconds, which no write transaction should wait for."""
    types = check_event_types(event_types)
    count = conn.execute(select(func.count()).select_from(WEBHOOK_ENDPOINT)
                         .where(WEBHOOK_ENDPOINT.c.studio_id == studio_id)).scalar_one()
    if count >= MAX_ENDPOINTS:
        raise EndpointRefused("url", f"a studio has at most {MAX_ENDPOINTS} webhook endpoints")
    secret = new_secret()
    endpoint_id = conn.execute(WEBHOOK_ENDPOINT.insert().returning(WEBHOOK_ENDPOINT.c.id), {
        "studio_id": studio_id, "url": url, "event_types": ",".join(types),
        "secret_enc": encrypt(instance_secret, studio_id, secret), "scanned_seq": current(conn, [studio_id])[studio_id],
        "created_at": now}).scalar_one()
    return NewSecret(EndpointInfo(endpoint_id, url, types, now, None, None, None), secret)


def list_endpoints(conn: Connection, studio_id: int, now: datetime, *, limit: int,
                   cursor: str | None) -> Page[EndpointInfo]:
    page = keyset_page(conn, select(*_COLUMNS).where(WEBHOOK_ENDPOINT.c.studio_id == studio_id), ENDPOINTS,
                       limit=limit, cursor=cursor)
    return with_items(page, [_info(row, now) for row in page.items])


def _owned(studio_id: int, endpoint_id: int) -> Any:
    return (WEBHOOK_ENDPOINT.c.id == endpoint_id) & (WEBHOOK_ENDPOINT.c.studio_id == studio_id)


def rotate(conn: Connection, studio_id: int, endpoint_id: int, *, instance_secret: bytes,
           now: datetime) -> NewSecret | None:
    """A new secret; the current one keeps signing for PREVIOUS_VALID. A secret rotated out
    earlier is dropped at once (two at most). None: no such endpoint in this studio."""
    secret = new_secret()
    row = conn.execute(update(WEBHOOK_ENDPOINT).where(_owned(studio_id, endpoint_id)).values(
        previous_secret_enc=WEBHOOK_ENDPOINT.c.secret_enc, previous_until=now + PREVIOUS_VALID,
        secret_enc=encrypt(instance_secret, studio_id, secret)).returning(*_COLUMNS)).first()
    return None if row is None else NewSecret(_info(row, now), secret)


def remove(conn: Connection, studio_id: int, endpoint_id: int) -> bool:
    """Remove the endpoint with its deliveries and their attempts; False if there is none such."""
    found = conn.execute(select(WEBHOOK_ENDPOINT.c.id).where(_owned(studio_id, endpoint_id))).first()
    if found is None:
        return False
    deliveries = select(WEBHOOK_DELIVERY.c.id).where(WEBHOOK_DELIVERY.c.endpoint_id == endpoint_id)
    conn.execute(delete(WEBHOOK_ATTEMPT).where(WEBHOOK_ATTEMPT.c.delivery_id.in_(deliveries)))
    conn.execute(delete(WEBHOOK_DELIVERY).where(WEBHOOK_DELIVERY.c.endpoint_id == endpoint_id))
    conn.execute(delete(WEBHOOK_ENDPOINT).where(WEBHOOK_ENDPOINT.c.id == endpoint_id))
    return True


def list_deliveries(conn: Connection, studio_id: int, endpoint_id: int, *, limit: int,
                    cursor: str | None) -> Page[DeliveryInfo] | None:
    """The endpoint's deliveries, newest first, each with its attempts and the endpoint's
    answers (oldest attempt first); None: no such endpoint in this studio."""
    if conn.execute(select(WEBHOOK_ENDPOINT.c.id).where(_owned(studio_id, endpoint_id))).first() is None:
        return None
    d = WEBHOOK_DELIVERY.c
    page = keyset_page(conn, select(d.id, d.event_seq, d.event_type, d.status, d.created_at, d.next_attempt_at,
                                    d.delivered_at).where(d.endpoint_id == endpoint_id, d.studio_id == studio_id),
                       DELIVERIES, limit=limit, cursor=cursor)
    attempts: dict[int, list[AttemptInfo]] = {row.id: [] for row in page.items}
    if attempts:
        a = WEBHOOK_ATTEMPT.c
        for row in conn.execute(select(a.delivery_id, a.attempted_at, a.status_code, a.answer)
                                .where(a.delivery_id.in_(list(attempts))).order_by(a.id)):
            attempts[row.delivery_id].append(AttemptInfo(row.attempted_at, row.status_code, row.answer))
    return with_items(page, [DeliveryInfo(
        row.id, row.event_seq, row.event_type, row.status, attempts[row.id], row.created_at,
        row.next_attempt_at if row.status == "pending" else None, row.delivered_at) for row in page.items])
