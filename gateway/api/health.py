"""Liveness and readiness probes for process managers and load balancers."""
from __future__ import annotations

import os
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import Engine, text

from gateway.outbound.outbox import relay_problem
from gateway.outbound.readiness import outbox_backlog, quarantined_count, relay_unreachable_since
from gateway.settings import Settings
from gateway.store.db import commit_stalled, read_tx
from gateway.store.models import utcnow

RELAY_UNREACHABLE = "unreachable at the last attempt"
OUTBOX_BACKLOG = "outbox backlog"


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True)
def readyz(state: State) -> Response[dict[str, Any]]:
    """Ready when the database answers and received mail can be written; the rest is detail.

    A full disk leaves reads working while every write fails, so "SELECT 1" alone said ok:
    the acceptor's last write (gateway/store/full.py) is reported too, and on SQLite the free
    space of the database's file system, which must hold at least one more largest message.

    Outgoing trouble (the relay unreachable at the last attempt, or offering no STARTTLS; the
    outbox piling up past GATEWAY_READY_OUTBOX_*) answers "degraded" with 200: mail is still
    received and stored, and a load balancer must not take the gateway out for it. The figures
    (outbox waiting and its oldest age, quarantined messages) are always there for an operator.
    """
    engine: Engine = state.engine
    settings: Settings = state.settings
    try:
        with read_tx(engine) as conn:
            conn.execute(text("SELECT 1"))
            relay = relay_problem(conn)
            unreachable = relay_unreachable_since(conn)
            backlog = outbox_backlog(conn)
            quarantined = quarantined_count(conn)
    except Exception:
        return Response({"status": "unavailable", "database": "unreachable"}, status_code=503)
    acceptor = getattr(state, "acceptor", None)
    failing = acceptor.health.failing() if acceptor is not None else None
    if failing is None:  # PostgreSQL: a COMMIT waits for a synchronous standby that is down
        failing = commit_stalled(state.settings.db_commit_deadline)
    if failing is None:
        failing = _sqlite_disk_short(engine, settings.smtp_max_message_size)
    if failing is not None:
        return Response({"status": "unavailable", "database": "ok", "writes": failing}, status_code=503)
    waited = None if backlog.oldest is None else max(0.0, (utcnow() - backlog.oldest).total_seconds())
    body: dict[str, Any] = {"status": "ok", "database": "ok", "writes": "ok",
                            "outbox": {"waiting": backlog.waiting, "oldest_age_seconds": None if waited is None else round(waited, 1)},
                            "quarantined": quarantined}
    if relay is None and unreachable is not None:
        relay = RELAY_UNREACHABLE
        body["relay_unreachable_since"] = unreachable.isoformat()
    if relay is not None:
        # Still ready: mail is received and stored; replies wait (queued) until the relay is mended.
        body["relay"] = relay
        body["status"] = "degraded"
    if backlog.waiting > settings.ready_outbox_max_waiting or (waited or 0.0) > settings.ready_outbox_max_age:
        body["outbox"]["problem"] = OUTBOX_BACKLOG
        body["status"] = "degraded"
    return Response(body)


def _sqlite_disk_short(engine: Engine, needed: int) -> str | None:
    """"storage full" when the SQLite file's file system has less than `needed` bytes free."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return None
    try:
        stats = os.statvfs(os.path.dirname(os.path.abspath(engine.url.database)))
    except OSError:
        return None
    return "storage full" if stats.f_bavail * stats.f_frsize < needed else None
