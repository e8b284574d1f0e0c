"""`Idempotency-Key` on the POSTs that create something: a retry gets the first answer again.

A route opts in with one parameter, `idempotent: Idempotent`, which brings in the
`provide_idempotency` dependency (registered app-wide in api/app.py); that dependency also
puts the optional `Idempotency-Key` header into the route's OpenAPI operation. A route whose
answer holds a secret shown once adds `opt=shown_once("token")` (dotted paths into the JSON
answer); the stored copy has those values set to null and says so in
`Idempotent-Secret-Withheld`.

Who does what, in request order:
1. `provide_caller` authenticates (the key is scoped to the caller's studio).
2. `provide_idempotency` reads the body, fingerprints it and claims (studio, key) in its own
   committed transaction (gateway/access/idempotency.py). A stored answer is raised as
   `Replay` and answered by `replay_answer` with `Idempotent-Replayed: true`; a reused key is
   422 `idempotency_key_reused`; one still running is 409 `idempotency_in_progress`. If the
   handler raises, the claim is released at once.
3. `IdempotencyMiddleware` holds the answer back until it is stored (a 2xx) or the claim is
   released (anything else), then sends it: a retry arriving right after the first answer
   must find it stored, not "in progress".
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, InternalServerException
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_422_UNPROCESSABLE_ENTITY
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import Engine

from gateway.access import idempotency
from gateway.access.idempotency import Claim, InProgress, KeyReused, Stored
from gateway.access.studios import Caller
from gateway.store.db import write_tx
from gateway.store.models import utcnow

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
WITHHELD = "Idempotent-Secret-Withheld"
_PENDING = "gateway.idempotency"     # scope key: the claim of the request in flight
_SHOWN_ONCE = "idempotency_shown_once"
# Not part of the answer to keep: they describe this exchange (length is recomputed, CORS
# answers the retry's own Origin, a request id names one request).
_NOT_KEPT = {"content-length", "date", "server", "set-cookie", "vary", "x-request-id", "transfer-encoding"}


def shown_once(*paths: str) -> dict[str, Any]:
    """Handler `opt`: the JSON fields (dotted paths) holding a secret shown once, never stored."""
    return {_SHOWN_ONCE: paths}


class Replay(Exception):
    """The request was answered before: `replay_answer` sends that answer again."""

    def __init__(self, stored: Stored) -> None:
        super().__init__("idempotent replay")
        self.stored = stored


class IdempotencyInProgress(HTTPException):
    """409: the first request with this key has not answered yet (for `raises=` in the document too)."""

    status_code = HTTP_409_CONFLICT


class IdempotencyKeyReused(HTTPException):
    """422: the key was used for another request within 24 hours."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY


@dataclass(frozen=True)
class _Pending:
    claim: Claim
    secrets: tuple[str, ...]


async def provide_idempotency(
    request: Request[Any, Any, Any], caller: NamedDependency[Caller],
    idempotency_key: Annotated[str | None, HeaderParameter(
        name=HEADER, required=False, min_length=1, max_length=idempotency.MAX_KEY,
        pattern=idempotency.KEY_PATTERN,
        description="A client-chosen key (1-255 printable ASCII characters, no spaces; a UUID is "
                    "a good choice). A retry with the same key and body within 24 hours gets the "
                    "first answer again, marked `Idempotent-Replayed: true`, and creates nothing.")] = None,
) -> AsyncGenerator[str | None, None]:
    """The claim on the request's key for as long as its handler runs (nothing without a key)."""
    if idempotency_key is None:
        yield None
        return
    engine: Engine = request.app.state.engine
    path = request.url.path
    fingerprint = idempotency.fingerprint(request.method, path, await _comparable_body(request))
    try:
        got = await asyncio.to_thread(_claim, engine, caller.studio_id, idempotency_key, fingerprint, path)
    except KeyReused as exc:
        raise IdempotencyKeyReused(str(exc), extra={"code": "idempotency_key_reused"}) from None
    except InProgress as exc:
        raise IdempotencyInProgress(str(exc), headers={"Retry-After": "1"},
                                    extra={"code": "idempotency_in_progress"}) from None
    if isinstance(got, Stored):
        raise Replay(got)
    request.scope[_PENDING] = _Pending(got, tuple(request.route_handler.opt.get(_SHOWN_ONCE, ())))  # type: ignore[literal-required]
    try:
        yield idempotency_key
    except BaseException:
        if request.scope.pop(_PENDING, None) is not None:  # type: ignore[misc]
            await _release(engine, got)
        raise


async def _comparable_body(request: Request[Any, Any, Any]) -> bytes:
    """The body as two attempts of one request share it. Multipart as its parsed parts (files by
    their SHA-256): client libraries draw a new boundary for every attempt, and Litestar may
    have parsed the form already for a `data` parameter, consuming the stream. Anything else as
    its bytes, which Litestar keeps for the handler to read again."""
    if request.content_type[0] != RequestEncodingType.MULTI_PART:
        try:
            return await request.body()
        except InternalServerException:
            # A multipart route's `data` was parsed from this body already (a client that sent
            # no Content-Type): the stream is spent, and the parsed form below is what it held.
            pass
    parts: list[list[str | None]] = []
    for name, value in (await request.form()).multi_items():
        if isinstance(value, UploadFile):
            content = await value.read()
            await value.seek(0)  # the handler reads it again
            parts.append([name, value.filename, value.content_type, hashlib.sha256(content).hexdigest()])
        else:
            parts.append([name, str(value)])
    return json.dumps(parts).encode()


# What a route names to opt in: `idempotent: Idempotent`.
Idempotent = NamedDependency[str | None]


def replay_answer(request: Request[Any, Any, Any], replay: Replay) -> Response[bytes]:
    stored = replay.stored
    headers = dict(stored.headers)
    headers[REPLAYED] = "true"
    return Response(stored.body, status_code=stored.status_code, headers=headers,
                    media_type=headers.pop("content-type", "application/json"))


class IdempotencyMiddleware:
    """Holds back the answer of a request with a claim until it is stored or released."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def hold(message: Message) -> None:
            nonlocal start
            pending: _Pending | None = scope.get(_PENDING)  # type: ignore[assignment]
            if pending is None:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            scope.pop(_PENDING, None)  # type: ignore[misc]
            body = b"".join(chunks)
            assert start is not None
            await _settle(scope, pending, start, body)
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        try:
            await self.app(scope, receive, hold)
        finally:
            pending = scope.pop(_PENDING, None)  # type: ignore[misc]
            if pending is not None:  # no answer at all: let a retry run
                await _release(scope["app"].state.engine, pending.claim)


async def _settle(scope: Scope, pending: _Pending, start: Message, body: bytes) -> None:
    engine: Engine = scope["app"].state.engine
    status = int(start["status"])
    if not 200 <= status < 300:
        await _release(engine, pending.claim)
        return
    headers = [(bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1")) for n, v in start.get("headers", [])]
    kept = [(n, v) for n, v in headers if n not in _NOT_KEPT]
    if pending.secrets:
        body, withheld = _withhold(body, pending.secrets)
        if withheld:
            kept.append((WITHHELD.lower(), ", ".join(withheld)))
    try:
        await asyncio.to_thread(_complete, engine, pending.claim, status, kept, body)
    except Exception:  # the answer still goes out; a retry within TAKEOVER_AFTER gets 409, then runs again
        log.exception("could not store the answer for an Idempotency-Key")


def _withhold(body: bytes, paths: tuple[str, ...]) -> tuple[bytes, list[str]]:
    """`body` with the secrets at `paths` set to null, and which paths those were."""
    document = json.loads(body)
    withheld = []
    for path in paths:
        *parents, leaf = path.split(".")
        node = document
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) is not None:
            node[leaf] = None
            withheld.append(path)
    return json.dumps(document, separators=(",", ":")).encode(), withheld


def _claim(engine: Engine, studio_id: int, key: str, fingerprint: str, path: str) -> Claim | Stored:
    with write_tx(engine) as conn:
        return idempotency.claim(conn, studio_id, key, fingerprint, path, utcnow())


def _complete(engine: Engine, claim: Claim, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    with write_tx(engine) as conn:
        idempotency.complete(conn, claim, status, headers, body, utcnow())


async def _release(engine: Engine, claim: Claim) -> None:
    def run() -> None:
        with write_tx(engine) as conn:
            idempotency.release(conn, claim)
    try:
        await asyncio.to_thread(run)
    except Exception:  # the claim stays until TAKEOVER_AFTER: a retry gets 409 until then
        log.exception("could not release an Idempotency-Key claim")
