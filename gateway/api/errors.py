"""One error model for every API answer that is not a success (issue 14).

    {"status_code": 404, "code": "not_found", "detail": "conversation not found"}
    {"status_code": 400, "code": "validation_failed", "detail": "...",
     "errors": [{"field": "acknowledge_inquiries", "message": "Expected `bool`, got `int`"}]}

`code` is a stable snake_case string an app can switch on; `detail` is for people and may be
reworded. `errors` appears only on validation errors and is then always a list (the old body
had an `extra` that was a list in one place and an object in another, which client generators
turn into a union nobody can use).

How a route chooses its code: raise any Litestar `HTTPException` with `extra={"code": "..."}`
(`api_error` does that for you); without one, the code follows from the status (`STATUS_CODES`).
A `ValidationException` from Litestar (a query parameter out of range) or from
`validation_failed` carries its fields into `errors`.

Anything else that escapes a handler is a bug: it is logged at ERROR with its traceback and
the request id, and answered `500` with that id in `detail` and in `X-Request-Id`, so a report
from a client finds its log line. Litestar's own logging is off (the gateway configures
logging once, api/app.py), so without this nothing was logged at all.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from gateway.api.request_ids import request_id

log = logging.getLogger(__name__)

# The code when a route gave none. Stable: clients switch on these.
STATUS_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}
VALIDATION_FAILED = "validation_failed"
INTERNAL_ERROR = "internal_error"
_SNAKE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class FieldError(msgspec.Struct):
    field: str     # the parameter or body field ("limit", "text", "acknowledge_inquiries"); "" for the body
    message: str


class Error(msgspec.Struct, omit_defaults=True):
    """The body of every API error."""

    status_code: int
    code: str
    detail: str
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET   # validation errors only


def api_error(status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> HTTPException:
    """An exception answered with this status and `code`: `raise api_error(409, "not_held", "...")`."""
    return HTTPException(detail, status_code=status_code, extra={"code": code}, headers=dict(headers or {}))


def validation_failed(errors: Iterable[tuple[str, str]], detail: str | None = None,
                      code: str = VALIDATION_FAILED) -> ValidationException:
    """A 400 whose `errors` name the fields: `raise validation_failed([("time_zone", "unknown")])`."""
    listed = [{"key": field, "message": message} for field, message in errors]
    text = detail or "; ".join(f"{e['key']}: {e['message']}" if e["key"] else e["message"] for e in listed)
    return ValidationException(text, extra={"code": code, "errors": listed})


def error_code(exc: HTTPException) -> str:
    """The route's own code (`extra={"code": ...}`), else the one its status stands for."""
    extra = exc.extra
    if isinstance(extra, dict) and isinstance(extra.get("code"), str) and _SNAKE.fullmatch(extra["code"]):
        return extra["code"]
    if isinstance(exc, ValidationException):
        return VALIDATION_FAILED
    return STATUS_CODES.get(exc.status_code, INTERNAL_ERROR if exc.status_code >= 500 else "bad_request")


def field_errors(exc: HTTPException) -> list[FieldError] | msgspec.UnsetType:
    """A ValidationException's fields: ours (`extra["errors"]`) or Litestar's (`extra` a list
    of `{"key", "message", "source"}`); UNSET for every other error."""
    if not isinstance(exc, ValidationException):
        return msgspec.UNSET
    extra: Any = exc.extra
    listed = extra.get("errors") if isinstance(extra, dict) else extra
    if not isinstance(listed, list):
        return []
    return [FieldError(field=str(item.get("key") or ""), message=str(item.get("message", "")))
            for item in listed if isinstance(item, dict)]


def error_response(request: Request[Any, Any, Any], status_code: int, code: str, detail: str, *,
                   errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET,
                   headers: Mapping[str, str] | None = None) -> Response[Error]:
    return Response(Error(status_code=status_code, code=code, detail=detail, errors=errors),
                    status_code=status_code, headers={**(headers or {}), "X-Request-Id": request_id(request.scope)},
                    media_type="application/json")


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Error]:
    """Every HTTPException a route, a guard or Litestar itself raises."""
    if exc.status_code >= 500 and exc.status_code != 503:
        return internal_error(request, exc)
    return error_response(request, exc.status_code, error_code(exc), exc.detail, errors=field_errors(exc),
                          headers=exc.headers)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Error]:
    """A bug: logged with its traceback and the request id, which the answer carries too."""
    rid = request_id(request.scope)
    log.error("%s %s failed (request id %s)", request.method, request.url.path, rid, exc_info=exc,
              extra={"event": "internal_error", "request_id": rid})
    return error_response(request, 500, INTERNAL_ERROR,
                          f"internal server error; quote request id {rid} when reporting it")


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {HTTPException: http_error, Exception: internal_error}
