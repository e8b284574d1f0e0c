"""ETag and If-None-Match (RFC 9110 8.8.3, 13.1.2) for answers a client polls.

The tag is a hash of the JSON answer itself, so it changes exactly when anything in the answer
changes (a new message, read state, status, a delivery) and no table needs a version column
kept in step. The answer is still built on every request; what a 304 saves is the transfer
and the client's re-rendering, which is what a messenger polling its list wants.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import ResponseHeader
from litestar.openapi.datastructures import ResponseSpec

# Litestar's JSON encoder knows the same structs and datetimes msgspec does.
_ENCODER = msgspec.json.Encoder()


# For the OpenAPI document of a tagged route (the headers themselves are set by `tagged`).
ETAG_HEADERS = [ResponseHeader(name="ETag", documentation_only=True,
                               description="Send it back as If-None-Match: 304 while the answer is unchanged."),
                ResponseHeader(name="Cache-Control", documentation_only=True, description="private, no-cache")]
NOT_MODIFIED = {304: ResponseSpec(data_container=None, description="Not modified: the If-None-Match ETag is current.")}


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison: a `W/` prefix is ignored)."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags)


def tagged(request: Request[Any, Any, Any], data: Any) -> Response[Any]:
    """`data` as JSON with its ETag, or 304 with no body when the client has it already."""
    body = _ENCODER.encode(data)
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(content=b"", status_code=304, headers=headers)
    return Response(content=body, media_type="application/json", headers=headers)
