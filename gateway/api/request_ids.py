"""A request id on every answer (`X-Request-Id`), so a client's report finds our log line.

The id is made once per request, on first use, and kept in the ASGI scope: the error handler
(api/errors.py) logs a 500 with it and puts it in the body, and `add_request_id` (a
`before_send` hook, which sees every answer, even Litestar's own 404 and 405) writes the
same one into the header. A client or proxy that sent a sane `X-Request-Id` gets it echoed,
so one id follows the request through their logs and ours; anything else (too long, spaces,
control characters that could split a header or a log line) is replaced by our own.
"""
from __future__ import annotations

import re
import secrets
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

HEADER = "X-Request-Id"
_SCOPE_KEY = "gateway.request_id"
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id(scope: Scope | Any) -> str:
    """This request's id: the client's when sane, else a new random one; the same on every call."""
    known = scope.get(_SCOPE_KEY)
    if known is None:
        sent = _header(scope, HEADER.lower().encode())
        known = sent if sent is not None and _SANE.fullmatch(sent) else secrets.token_hex(12)
        scope[_SCOPE_KEY] = known
    return str(known)


async def add_request_id(message: Message, scope: Scope) -> None:
    """`before_send` hook: every HTTP answer carries the request's id."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)[HEADER] = request_id(scope)


def _header(scope: Scope | Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
