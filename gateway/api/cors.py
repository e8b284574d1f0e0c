"""CORS for browser clients of the API (GATEWAY_CORS_ORIGINS): exact origins, bearer tokens,
no credentials. Off (no CORS header at all) while no origin is configured.

Why not Litestar's CORSConfig: its middleware adds Access-Control-Allow-Headers, -Methods and
-Expose-Headers to every response that has an Origin, allowed or not, answers every OPTIONS
with an Origin itself (400 for other origins, hiding the route's own OPTIONS answer), takes
`*` anywhere in an origin as a wildcard, and covers the pages and webhooks too. Here a
`before_send` hook (a public Litestar hook that also sees error answers, 401s included, which a
browser app must be able to read) adds the headers to /api/ answers for the configured origins
only; other requests are left exactly as they were.

Preflight (RFC 9110's OPTIONS, answered by the route's own OPTIONS handler) gets the methods and
request headers an app needs; the answers expose the headers an app reads (Fetch standard:
anything else stays hidden from script).
"""
from __future__ import annotations

from typing import Any, Callable

from litestar.datastructures import MutableScopeHeaders

API_PREFIX = "/api/"
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, If-None-Match"
# The idempotency answers (api/idempotency.py) say "replayed" and "secret withheld" in headers of their own.
EXPOSE_HEADERS = "ETag, Location, X-Request-Id, Retry-After, Idempotent-Replayed, Idempotent-Secret-Withheld"
MAX_AGE = "600"  # seconds a browser may reuse a preflight (Chromium caps it at 7200)


def _origin(scope: Any) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return value.decode("latin-1")
    return None


def _is_preflight(scope: Any) -> bool:
    return scope.get("method") == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in scope.get("headers", ()))


def cors_hook(origins: frozenset[str]) -> Callable[[Any, Any], None]:
    """A Litestar `before_send` hook adding CORS headers for `origins` to API answers."""

    def before_send(message: Any, scope: Any) -> None:
        if message["type"] != "http.response.start" or not scope.get("path", "").startswith(API_PREFIX):
            return
        headers = MutableScopeHeaders.from_message(message=message)
        # Caches must keep one answer per Origin: with and without CORS headers differ.
        vary = headers.get("vary")
        if vary is None:
            headers["Vary"] = "Origin"
        elif "origin" not in vary.lower():
            headers["Vary"] = f"{vary}, Origin"
        origin = _origin(scope)
        if origin is None or origin not in origins:
            return
        headers["Access-Control-Allow-Origin"] = origin
        if _is_preflight(scope):
            headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            headers["Access-Control-Max-Age"] = MAX_AGE
        else:
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    return before_send
