"""Posting the studio's events to its webhook endpoints, from the worker.

Deliveries are made by the worker scanning the event log (gateway/eventlog.py), not by the
transaction that records an event: recording stays one insert in mail intake's commit, and an
endpoint's count or health never slows the SMTP path. Each enabled endpoint remembers the last
event it was given (`scanned_seq`); a scan copies the newer events of its chosen types into
`webhook_delivery` rows, each with its own copy of the event's JSON, because the log keeps 24
hours and a delivery is retried for 3 days. (A worker stopped for longer than the log keeps
misses the events purged meanwhile.)

A delivery is posted until the endpoint answers 2xx: at least once, never "exactly once" (a
worker killed after the post and before its record posts again, with the same
`Gateway-Event-Id`, on which receivers deduplicate). In order per conversation: a delivery
waits while an earlier one of the same endpoint and conversation is pending or being sent.
Retries back off as tenacity's wait strategy computes (30 s doubling up to 6 h, with a little
jitter), stored in `next_attempt_at`, so they survive restarts; a delivery still failing 3 days
after its event is given up. An endpoint that has failed without a success in between for 3
days is disabled and its owner told by mail (`on_disabled`, wired by gateway/runtime.py).

Several workers share the work as the outbox does (outbound/outbox.py): candidates are
claimed under the endpoint's row lock (taken in order, so two claimers of one endpoint queue
and the second sees the first's claim: the per-conversation order holds) and `FOR UPDATE SKIP
LOCKED` on the delivery; a claim is a lease of GATEWAY_OUTBOUND_LEASE, after which a killed
worker's delivery is claimed again. One delivery is claimed at a time, so a post's timeouts
(webhook_address.TIMEOUT) always end well within the lease.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import httpx
import tenacity
from cryptography.exceptions import InvalidTag
from sqlalchemy import ColumnElement, Connection, Engine, and_, delete, exists, or_, select, update

from gateway.eventlog import events_after
from gateway.eventlog import current as current_seq
from gateway.outbound.webhook_address import (AddressRefused, parse_url, post_pinned, resolve_checked,
                                              ssl_context)
from gateway.outbound.webhook_secrets import decrypt, signature_header
from gateway.settings import Settings
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import STUDIO_EVENT_COUNTER, WEBHOOK_ATTEMPT, WEBHOOK_DELIVERY, WEBHOOK_ENDPOINT

log = logging.getLogger(__name__)

RETRY_FOR = timedelta(days=3)       # a delivery, and an endpoint failing, are given up after this
BACKOFF = tenacity.wait_exponential(multiplier=30, max=6 * 3600) + tenacity.wait_random(0, 15)
KEPT = timedelta(days=30)           # deliveries done are listed this long (GET .../deliveries)
FORGET_EVERY = timedelta(hours=1)
SCAN_LIMIT = 500                    # events per studio and scan; the next round takes the rest
USER_AGENT = "gateway-webhooks/1"

# Called in the transaction that disables an endpoint: (conn, studio id, endpoint id, url).
OnDisabled = Callable[[Connection, int, int, str], None]

D, E = WEBHOOK_DELIVERY.c, WEBHOOK_ENDPOINT.c
_EARLIER = WEBHOOK_DELIVERY.alias("earlier")
# An earlier delivery of the same endpoint and conversation is still to be posted: wait for it.
_WAITS = exists(select(_EARLIER.c.id).where(
    _EARLIER.c.endpoint_id == D.endpoint_id, _EARLIER.c.conversation_id == D.conversation_id,
    _EARLIER.c.id < D.id, _EARLIER.c.status.in_(("pending", "sending"))))
_ENABLED = exists(select(E.id).where(E.id == D.endpoint_id, E.disabled_at.is_(None)))


def _claimable(now: datetime, lease: timedelta) -> list[ColumnElement[bool]]:
    """Due (or its lease ran out), not waiting for an earlier one, its endpoint enabled."""
    return [or_(and_(D.status == "pending", D.next_attempt_at <= now),
                and_(D.status == "sending", D.claimed_at < now - lease)), ~_WAITS, _ENABLED]


def backoff(attempts: int) -> timedelta:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempts, 1)
    return timedelta(seconds=BACKOFF(state))


@dataclass(frozen=True)
class Claimed:
    id: int
    studio_id: int
    endpoint_id: int
    event_seq: int
    payload: str
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Answer:
    status_code: int | None      # None: no answer (refused address, timeout, TLS, connection)
    text: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def event_id(studio_id: int, seq: int) -> str:
    """`Gateway-Event-Id`: the same for every post of one event to one endpoint."""
    return f"evt_{studio_id}_{seq}"


class WebhookSender:
    def __init__(self, engine: Engine, settings: Settings, *, on_disabled: OnDisabled | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.on_disabled = on_disabled
        self.lease = timedelta(seconds=settings.outbound_lease)
        self.instance_secret = settings.secret()
        ca = settings.webhook_ca_file
        self.ssl = ssl_context(str(ca) if ca else None)
        self._forgotten_at: datetime | None = None

    def run_round(self) -> int:
        """Scan the log, then post every delivery that is due; the number of posts made."""
        now = self.clock()
        if self._forgotten_at is None or now - self._forgotten_at >= FORGET_EVERY:
            self.forget(now)
            self._forgotten_at = now
        self.scan()
        posted = 0
        while (claimed := self.claim()) is not None:
            self.record(claimed, self.post(claimed))
            posted += 1
        return posted

    def forget(self, now: datetime) -> int:
        """Drop deliveries done (delivered or failed) more than KEPT ago, with their attempts."""
        done = select(D.id).where(D.status.in_(("delivered", "failed")), D.created_at < now - KEPT)
        with write_tx(self.engine) as conn:
            conn.execute(delete(WEBHOOK_ATTEMPT).where(WEBHOOK_ATTEMPT.c.delivery_id.in_(done)))
            return conn.execute(delete(WEBHOOK_DELIVERY).where(D.id.in_(done))).rowcount

    # -- scanning the event log --

    def scan(self) -> int:
        """Deliveries for the events recorded since each endpoint's last scan; how many."""
        made = 0
        # Most rounds find nothing new: they only read, and never take SQLite's write lock
        # from mail intake.
        with read_tx(self.engine) as conn:
            if conn.execute(select(E.id).join(STUDIO_EVENT_COUNTER, STUDIO_EVENT_COUNTER.c.studio_id == E.studio_id)
                            .where(E.disabled_at.is_(None), E.scanned_seq < STUDIO_EVENT_COUNTER.c.seq)
                            .limit(1)).first() is None:
                return 0
        with write_tx(self.engine) as conn:
            endpoints = conn.execute(select(E.id, E.studio_id, E.scanned_seq, E.event_types)
                                     .where(E.disabled_at.is_(None)).order_by(E.id)
                                     .with_for_update(skip_locked=True)).all()
            upto = current_seq(conn, sorted({e.studio_id for e in endpoints})) if endpoints else {}
            for endpoint in endpoints:
                if endpoint.scanned_seq >= upto[endpoint.studio_id]:
                    continue
                events = events_after(conn, endpoint.studio_id, endpoint.scanned_seq, upto[endpoint.studio_id],
                                      SCAN_LIMIT)
                last = events[-1].seq if len(events) == SCAN_LIMIT else upto[endpoint.studio_id]
                types = set(endpoint.event_types.split(","))
                rows = [{"studio_id": endpoint.studio_id, "endpoint_id": endpoint.id, "event_seq": e.seq,
                         "event_type": e.type, "conversation_id": e.data.get("conversation_id"),
                         "payload": json.dumps(e.as_dict(), separators=(",", ":")), "status": "pending",
                         "attempts": 0, "next_attempt_at": e.created_at, "created_at": e.created_at}
                        for e in events if e.type in types]
                if rows:
                    conn.execute(WEBHOOK_DELIVERY.insert(), rows)
                    made += len(rows)
                conn.execute(update(WEBHOOK_ENDPOINT).where(E.id == endpoint.id).values(scanned_seq=last))
        return made

    # -- claiming, posting, recording --

    def claim(self) -> Claimed | None:
        """The next due delivery, claimed for this worker (a lease), or None."""
        now = self.clock()
        with read_tx(self.engine) as conn:  # nothing due: no write transaction at all
            if conn.execute(select(D.id).where(*_claimable(now, self.lease)).limit(1)).first() is None:
                return None
        with write_tx(self.engine) as conn:
            candidates = conn.execute(select(D.id, D.endpoint_id).where(*_claimable(now, self.lease))
                                      .order_by(D.next_attempt_at, D.id).limit(8)).all()
            # Endpoint rows are locked in id order, so two claimers never wait on each other crosswise.
            for candidate in sorted(candidates, key=lambda c: c.endpoint_id):
                # Claimers of one endpoint queue here; the check below then sees the other's claim.
                conn.execute(select(E.id).where(E.id == candidate.endpoint_id).with_for_update())
                row = conn.execute(select(D.id).where(D.id == candidate.id, *_claimable(now, self.lease))
                                   .with_for_update(skip_locked=True)).first()
                if row is None:
                    continue
                return Claimed(*conn.execute(
                    update(WEBHOOK_DELIVERY).where(D.id == candidate.id)
                    .values(status="sending", claimed_at=now, attempts=D.attempts + 1)
                    .returning(D.id, D.studio_id, D.endpoint_id, D.event_seq, D.payload, D.attempts,
                               D.created_at)).one())
        return None

    def _secrets(self, claimed: Claimed, now: datetime) -> tuple[str, list[str]] | None:
        with read_tx(self.engine) as conn:
            row = conn.execute(select(E.url, E.secret_enc, E.previous_secret_enc, E.previous_until)
                               .where(E.id == claimed.endpoint_id)).first()
        if row is None:
            return None
        stored = [row.secret_enc]
        if row.previous_secret_enc is not None and row.previous_until is not None and row.previous_until > now:
            stored.append(row.previous_secret_enc)
        try:
            return row.url, [decrypt(self.instance_secret, claimed.studio_id, s) for s in stored]
        except InvalidTag:
            return None

    def post(self, claimed: Claimed) -> Answer:
        """One post of the delivery: the address checked now, the connection pinned to it."""
        now = self.clock()
        found = self._secrets(claimed, now)
        if found is None:
            return Answer(None, "the endpoint's secret cannot be read (was GATEWAY_SECRET_KEY changed?)")
        url, secrets_ = found
        allow = self.settings.webhook_allow_loopback
        body = claimed.payload.encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Gateway-Event-Id": event_id(claimed.studio_id, claimed.event_seq),
                   "Gateway-Signature": signature_header(secrets_, int(time.time()), body)}
        try:
            target = parse_url(url, allow)
            ip = resolve_checked(target, allow)
            status, text = post_pinned(target, ip, headers, body, self.ssl)
        except AddressRefused as exc:
            return Answer(None, f"refused: {exc}")
        except httpx.HTTPError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}"[:1000])
        return Answer(status, text)

    def record(self, claimed: Claimed, answer: Answer) -> None:
        """The attempt and its answer; the delivery done, retried later, or given up; the
        endpoint's health. Only while this worker's claim holds (a claim taken over after a
        missed lease is the other worker's to record)."""
        now = self.clock()
        level = logging.INFO if answer.ok else logging.WARNING
        log.log(level, "webhook delivery %d (endpoint %d, event %d), attempt %d: %s", claimed.id,
                claimed.endpoint_id, claimed.event_seq, claimed.attempts, answer.status_code or answer.text[:200],
                extra={"event": "webhook_attempt", "delivery_id": claimed.id, "endpoint_id": claimed.endpoint_id,
                       "attempt": claimed.attempts, "status_code": answer.status_code})
        with write_tx(self.engine) as conn:
            conn.execute(WEBHOOK_ATTEMPT.insert(), {"studio_id": claimed.studio_id, "delivery_id": claimed.id,
                                                    "attempted_at": now,
                                                    "status_code": answer.status_code, "answer": answer.text[:1000]})
            mine = (D.id == claimed.id) & (D.status == "sending") & (D.attempts == claimed.attempts)
            if answer.ok:
                conn.execute(update(WEBHOOK_DELIVERY).where(mine).values(
                    status="delivered", claimed_at=None, delivered_at=now))
                conn.execute(update(WEBHOOK_ENDPOINT).where(E.id == claimed.endpoint_id).values(failing_since=None))
                return
            given_up = now - claimed.created_at >= RETRY_FOR
            conn.execute(update(WEBHOOK_DELIVERY).where(mine).values(
                status="failed" if given_up else "pending", claimed_at=None,
                next_attempt_at=now + backoff(claimed.attempts)))
            self._failing(conn, claimed, now)

    def _failing(self, conn: Connection, claimed: Claimed, now: datetime) -> None:
        row = conn.execute(select(E.failing_since, E.url, E.disabled_at).where(E.id == claimed.endpoint_id)).first()
        if row is None or row.disabled_at is not None:
            return
        if row.failing_since is None:
            conn.execute(update(WEBHOOK_ENDPOINT).where(E.id == claimed.endpoint_id).values(failing_since=now))
            return
        if now - row.failing_since < RETRY_FOR:
            return
        conn.execute(update(WEBHOOK_ENDPOINT).where(E.id == claimed.endpoint_id).values(disabled_at=now))
        log.warning("webhook endpoint %d disabled: failing since %s", claimed.endpoint_id, row.failing_since,
                    extra={"event": "webhook_endpoint_disabled", "endpoint_id": claimed.endpoint_id})
        if self.on_disabled is not None:
            self.on_disabled(conn, claimed.studio_id, claimed.endpoint_id, row.url)
