"""JSON request bodies: JSON only (`415` otherwise), decoded strictly (`400` with `errors`).

Litestar decodes a route's `data` leniently: msgspec's `strict=False` turns `0`, `1` and
`"true"` into booleans and `"5"` into numbers, because the same conversion serves query
strings, where everything arrives as text. For a JSON body that is wrong: `PATCH /api/v1/studio`
with `{"acknowledge_inquiries": "false"}` switched acknowledgements *on*. So every route whose
`data` is JSON has its body decoded once more here, strictly, against the same type, before
the handler runs; what passes is what Litestar then decodes the same way.

A body sent as `text/plain` (or anything but JSON) is `415 unsupported_media_type`, not a
confusing `400`. A body without a `Content-Type` is taken as JSON, as before: clients that
post raw bytes (and our tests) send none.
"""
from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType, ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.params import BodyKwarg
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import api_error, validation_failed

MALFORMED_JSON = "malformed_json"
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def is_json(content_type: str | None) -> bool:
    """`application/json` and `application/<something>+json`, any parameters; absent counts as JSON."""
    if not content_type or not content_type.strip():
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def require_json(content_type: str | None) -> None:
    if not is_json(content_type):
        raise api_error(415, "unsupported_media_type",
                        f"this route takes application/json, not {content_type.split(';', 1)[0].strip()[:80]}")


def decode_strict(body: bytes, target: Any) -> Any:
    """The body as `target`, with no coercion: 400 `malformed_json`, or 400 `validation_failed`
    naming the field."""
    try:
        return msgspec.json.decode(body, type=target, strict=True)
    except msgspec.ValidationError as exc:
        refused = exc
    except msgspec.DecodeError as exc:
        raise api_error(400, MALFORMED_JSON, f"the body is not valid JSON: {exc}") from None
    # JSON (and JSON Schema, which the OpenAPI document speaks) counts `3.0` as the integer 3,
    # and generated clients and fuzzers send it so; msgspec's strict mode does not. One more
    # try with whole floats made integers, which coerces nothing else.
    try:
        return msgspec.convert(_whole_numbers(msgspec.json.decode(body)), target, strict=True)
    except msgspec.ValidationError:  # first: msgspec's ValidationError is a DecodeError too
        raise validation_failed([_field_error(str(refused))]) from None
    except msgspec.DecodeError as exc:  # typed decoding stopped at a wrong type before the bad bytes
        raise api_error(400, MALFORMED_JSON, f"the body is not valid JSON: {exc}") from None


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def _field_error(text: str) -> tuple[str, str]:
    """msgspec's "Expected `bool`, got `int` - at `$.acknowledge_inquiries`" as (field, message)."""
    found = _AT.match(text)
    message, path = (found.group("message"), found.group("path")) if found else (text, None)
    field = (path or "").lstrip(".")
    missing = _MISSING.search(message)
    if missing:
        field = f"{field}.{missing.group('field')}" if field else missing.group("field")
    return field, message


def json_body_type(handler: HTTPRouteHandler) -> Any:
    """The type of the handler's JSON `data`, or None (no body, a form, or a body it reads
    itself). Read from the handler's parsed signature, which Litestar keeps: nothing to cache."""
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return None
    kwarg = data.kwarg_definition
    media = kwarg.media_type if isinstance(kwarg, BodyKwarg) else RequestEncodingType.JSON
    return data.annotation if media == RequestEncodingType.JSON else None


class StrictJsonBodies(ASGIMiddleware):
    """415 for a JSON route's non-JSON body, 400 for one that is not exactly of its type."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        handler = scope.get("route_handler")
        target = json_body_type(handler) if isinstance(handler, HTTPRouteHandler) else None
        if target is not None:
            request: Request[Any, Any, Any] = Request(scope, receive)
            body = await request.body()   # kept in the scope: the handler reads the same bytes
            if body:
                require_json(request.headers.get("content-type"))
                decode_strict(body, target)
        await next_app(scope, receive, send)
