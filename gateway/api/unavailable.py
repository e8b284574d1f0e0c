"""The database is unreachable (down, failing over) or the pool is exhausted: `503` with
`Retry-After`, not `500`.

During a PostgreSQL failover every request meets a dropped connection or a refused one for a
few seconds; a `500` tells a client that its request is wrong, a `503` with `Retry-After`
(RFC 9110 15.6.4, 10.2.3) that it may simply try again. SQLAlchemy invalidates the pool on a
disconnect error and `pool_pre_ping` tests each connection taken out, so the request after
the promotion finds the new primary by itself (gateway/store/db.py).
"""
from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from sqlalchemy import exc

from gateway.api.errors import Error, error_response

log = logging.getLogger(__name__)

RETRY_AFTER = "5"
ERR_DATABASE_UNAVAILABLE = "database temporarily unavailable, please retry"
# Driver and pool errors that mean "not now" rather than "not this request".
UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)


DATABASE_UNAVAILABLE = "database_unavailable"


def database_unavailable(request: Request[Any, Any, Any], error: Exception) -> Response[Error]:
    log.warning("%s %s: database unavailable, answering 503: %s", request.method, request.url.path,
                type(error).__name__)
    return error_response(request, 503, DATABASE_UNAVAILABLE, ERR_DATABASE_UNAVAILABLE,
                          headers={"Retry-After": RETRY_AFTER})
