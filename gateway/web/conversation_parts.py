"""What the conversation page embeds or links, each behind the session and scoped to its studio:
the guest's HTML for the sandboxed frame, attachments (thumbnails and downloads), and the retry
of a failed reply.

Guest HTML never runs in our origin. It was sanitised when the mail was parsed (nh3, see
gateway/inbox/html_view.py); on top of that this route answers with `Content-Security-Policy:
sandbox` (an opaque origin: no script, no form, no cookie of ours, even if a browser opened
the URL directly), `default-src 'none'` so nothing loads but, after the studio's click, images,
and `frame-ancestors 'self'` so only our own pages may frame it. The page frames it with
`sandbox` as well. Remote images are left out until the studio asks (`?images=remote`, a link
that targets the frame, no script): a remote image tells its sender when the studio read it.
Links may open in a new tab (`allow-popups`), never inside our page.

Attachment bytes come from strangers too: always `nosniff` and sandboxed; only raster images are
shown inline (as thumbnails), anything else (SVG included, which can carry script) is a download.
"""
from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy import Engine, select

from gateway.access.visibility import SHOWN_MESSAGE
from gateway.inbox.actions import VISIBLE, attachment_download
from gateway.inbox.html_view import html_view
from gateway.mail.files import content_disposition, plain_media_type
from gateway.outbound.retry import NotFailed, retry_failed
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import MESSAGE
from gateway.web.conversation import THUMBNAIL_TYPES
from gateway.web.signed_forms import signed_form
from gateway.web.session import signed_in

# The iframe's own `sandbox` attribute says the same (templates/web/conversation.html).
FRAME_SANDBOX = "sandbox allow-popups allow-popups-to-escape-sandbox"
_FRAME_COMMON = "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
_DOCUMENT = ('<!doctype html><html><head><meta charset="utf-8"><base target="_blank">'
             '<meta name="referrer" content="no-referrer"></head><body>{}</body></html>')
BYTES_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store",
                 "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'self'"}


def frame_policy(remote_images: bool) -> str:
    images = "img-src http: https:" if remote_images else "img-src 'none'"
    return f"{FRAME_SANDBOX}; default-src 'none'; {images}; {_FRAME_COMMON}"


@get("/app/m/{message_id:int}/html", name="web-message-html")
async def message_html(request: Request[Any, Any, Any], message_id: FromPath[int]) -> Response[Any]:
    """The message's sanitised HTML as a document of its own, for the page's sandboxed frame."""
    signed = await signed_in(request)
    if signed is None:
        raise NotFoundException("no such message", extra={"code": "not_found"})  # a frame shows no login page
    remote = request.query_params.get("images") == "remote"
    stored = await asyncio.to_thread(_html, request.app.state.engine, signed.caller.studio_id, message_id)
    if stored is None:
        raise NotFoundException("no such message", extra={"code": "not_found"})
    shown = html_view(stored, remote_images=remote).html or ""
    return Response(_DOCUMENT.format(shown), media_type="text/html; charset=utf-8", headers={
        "Content-Security-Policy": frame_policy(remote), "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "private, no-store"})


def _html(engine: Engine, studio_id: int, message_id: int) -> str | None:
    with read_tx(engine) as conn:
        return conn.execute(select(MESSAGE.c.html).where(
            MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id, MESSAGE.c.state == VISIBLE,
            SHOWN_MESSAGE)).scalar()


@get("/app/a/{attachment_id:int}", name="web-attachment")
async def attachment(request: Request[Any, Any, Any], attachment_id: FromPath[int]) -> Response[Any]:
    """A download; `?view=thumbnail` shows a raster image inline (the page scales it by CSS)."""
    signed = await signed_in(request)
    if signed is None:
        raise NotFoundException("no such attachment", extra={"code": "not_found"})
    found = await asyncio.to_thread(_download, request.app.state.engine, signed.caller.studio_id, attachment_id)
    if found is None:
        raise NotFoundException("no such attachment", extra={"code": "not_found"})
    media_type = plain_media_type(found.content_type)
    disposition = content_disposition(found.filename)
    if request.query_params.get("view") == "thumbnail" and media_type in THUMBNAIL_TYPES:
        disposition = "inline"
    return Response(found.data, media_type=media_type, headers={
        **BYTES_HEADERS, "Content-Type": media_type, "Content-Disposition": disposition})


def _download(engine: Engine, studio_id: int, attachment_id: int) -> Any:
    with read_tx(engine) as conn:
        return attachment_download(conn, studio_id, attachment_id)


@post("/app/m/{message_id:int}/retry", name="web-reply-retry", status_code=303)
async def retry(request: Request[Any, Any, Any], message_id: FromPath[int]) -> Response[Any]:
    """Send a failed reply again (gateway/outbound/retry.py), then back to its conversation."""
    signed, form = await signed_form(request)
    try:
        conversation_id = await asyncio.to_thread(_retry, request.app.state.engine, signed.caller.studio_id,
                                                  message_id)
    except NotFailed:
        raise ClientException("this reply has not failed", status_code=409, extra={"code": "not_failed"}) from None
    if conversation_id is None:
        raise NotFoundException("no such reply", extra={"code": "not_found"})
    wake = getattr(request.app.state, "wake_outbox", None)
    if wake is not None:
        wake()
    return Redirect(f"/app/c/{conversation_id}", status_code=303)


def _retry(engine: Engine, studio_id: int, message_id: int) -> int | None:
    with write_tx(engine) as conn:
        return retry_failed(conn, studio_id, message_id, utcnow())


PART_ROUTES = [message_html, attachment, retry]
