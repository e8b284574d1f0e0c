"""Liveness and readiness probes for process managers and load balancers."""
from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import Engine, text

from gateway.outbound.outbox import relay_problem
from gateway.store.db import read_tx


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True)
def readyz(state: State) -> Response[dict[str, str]]:
    engine: Engine = state.engine
    try:
        with read_tx(engine) as conn:
            conn.execute(text("SELECT 1"))
            relay = relay_problem(conn)
    except Exception:
        return Response({"status": "unavailable", "database": "unreachable"}, status_code=503)
    if relay is not None:
        # Still ready: mail is received and stored; replies wait (queued) until the relay is mended.
        return Response({"status": "degraded", "database": "ok", "relay": relay})
    return Response({"status": "ok", "database": "ok"})
