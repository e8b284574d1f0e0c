"""Liveness and readiness probes for process managers and load balancers."""
from __future__ import annotations

import os

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import Engine, text

from gateway.outbound.outbox import relay_problem
from gateway.store.db import commit_stalled, read_tx


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True)
def readyz(state: State) -> Response[dict[str, str]]:
    """Ready when the database answers and received mail can be written.

    A full disk leaves reads working while every write fails, so "SELECT 1" alone said ok:
    the acceptor's last write (gateway/store/full.py) is reported too, and on SQLite the free
    space of the database's file system, which must hold at least one more largest message.
    """
    engine: Engine = state.engine
    try:
        with read_tx(engine) as conn:
            conn.execute(text("SELECT 1"))
            relay = relay_problem(conn)
    except Exception:
        return Response({"status": "unavailable", "database": "unreachable"}, status_code=503)
    acceptor = getattr(state, "acceptor", None)
    failing = acceptor.health.failing() if acceptor is not None else None
    if failing is None:  # PostgreSQL: a COMMIT waits for a synchronous standby that is down
        failing = commit_stalled(state.settings.db_commit_deadline)
    if failing is None:
        failing = _sqlite_disk_short(engine, state.settings.smtp_max_message_size)
    if failing is not None:
        return Response({"status": "unavailable", "database": "ok", "writes": failing}, status_code=503)
    if relay is not None:
        # Still ready: mail is received and stored; replies wait (queued) until the relay is mended.
        return Response({"status": "degraded", "database": "ok", "writes": "ok", "relay": relay})
    return Response({"status": "ok", "database": "ok", "writes": "ok"})


def _sqlite_disk_short(engine: Engine, needed: int) -> str | None:
    """"storage full" when the SQLite file's file system has less than `needed` bytes free."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return None
    try:
        stats = os.statvfs(os.path.dirname(os.path.abspath(engine.url.database)))
    except OSError:
        return None
    return "storage full" if stats.f_bavail * stats.f_frsize < needed else None
