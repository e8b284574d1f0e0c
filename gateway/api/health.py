"""Liveness and readiness probes for process managers and load balancers."""
from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import Engine, text

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
    except Exception:
        return Response({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return Response({"status": "ok", "database": "ok"})
