"""The guests' inquiry form: `/f/{slug}` (HTML), its post, and `/f/{slug}/form.json`.

Thin: parse the post into a gateway.forms.intake.Post, look the form up, let `prepare` decide
and the group commit store it, and say the outcome as a page in the guest's language (or as
JSON to a front end that asks for it). The page needs no JavaScript; height.js only tells a
framing page our height.

Public on purpose: no cookies, no CSRF or Origin check (a studio's own site posts here), and
no frame-ancestors: any site may frame it. Its CSP allows only our own files.
"""
from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import DictLoader, Environment, select_autoescape
from litestar import Controller, Request, Response, Router, get, post
from litestar.datastructures import CacheControlHeader, State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.static_files import create_static_files_router
from sqlalchemy.exc import IntegrityError

from gateway.forms.challenge import FIELD as POW_FIELD, new_challenge
from gateway.forms.consent import valid_privacy_url
from gateway.forms.definition import Definition, text_in
from gateway.forms.intake import (CONSENT_FIELD, Found, Outcome, Pending, Post, PublicStudio, after_race, look_up,
                                  prepare, take_pending)
from gateway.forms.issue import ISSUED_FIELD, issue, token_of
from gateway.forms.limits import FormLimits
from gateway.forms.submit import language
from gateway.store.db import read_soon, read_tx
from gateway.web.form_texts import ALTCHA_STRINGS, TEXTS, error_text, guest_language, say
from webhooks.forms import FormError, parse_form

STATIC_PATH = "/f/_static/form"   # "_" can begin no slug (gateway/mail/addresses.valid_slug)
STATIC_DIR = Path(__file__).parent / "static" / "form"
MAX_BODY = 32 * 1024 * 1024      # the uploads of one post together; beyond it a form error
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    # No frame-ancestors and no X-Frame-Options: a studio frames the form on its own site.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; worker-src 'self' blob:; "
                               "form-action 'self'; base-uri 'none'; object-src 'none'",
}
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET",
        "Access-Control-Max-Age": "86400", "Vary": "Accept-Language"}
_INPUTS = {"email": ("email", "email"), "name": ("text", "name"), "phone": ("tel", "tel"),
           "date": ("date", ""), "short_text": ("text", "")}


@lru_cache(maxsize=1)
def _environment() -> Environment:
    root = Path(__file__).resolve().parents[2] / "templates" / "web" / "form"
    try:  # an installed wheel ships the templates as gateway.templates (pyproject.toml)
        from importlib import resources
        root_text = (resources.files("gateway.templates") / "web" / "form" / "page.html.j2").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        root_text = (root / "page.html.j2").read_text("utf-8")
    return Environment(loader=DictLoader({"page.html.j2": root_text}), autoescape=select_autoescape(default=True),
                       trim_blocks=True, lstrip_blocks=True)


def _field_views(definition: Definition, lang: str) -> list[dict[str, Any]]:
    views = []
    for f in definition.fields:
        kind, autocomplete = _INPUTS.get(f.type, ("text", ""))
        views.append({"key": f.key, "type": f.type, "required": f.required, "label": f.label_in(lang),
                      "help": f.help_in(lang), "input": kind, "autocomplete": autocomplete,
                      "options": [{"value": o.value, "label": text_in(o.label, lang) or o.value} for o in f.options],
                      "min": _plain(f.min), "max": _plain(f.max)})
    return views


def _plain(number: float | None) -> str | None:
    if number is None:
        return None
    return str(int(number)) if number == int(number) else str(number)


def _page(status: int, studio: PublicStudio, lang: str, *, state: str = "form", definition: Definition | None = None,
          issued: str = "", values: dict[str, Any] | None = None, errors: dict[str, str] | None = None,
          consent: bool = False, message: str = "", title: str = "",
          headers: dict[str, str] | None = None) -> Response[str]:
    if definition is None:
        html = _notice(studio, lang, state, message, title)
    else:
        html = _render(studio, lang, state=state, definition=definition, issued=issued, values=values or {},
                       errors=errors or {}, consent=consent, message=message, title=title)
    return Response(html, status_code=status, media_type="text/html; charset=utf-8",
                    headers={**PAGE_HEADERS, **(headers or {})})


@lru_cache(maxsize=256)
def _notice(studio: PublicStudio, lang: str, state: str, message: str, title: str) -> str:
    """A page without the form (thanks, later, an error): the same for every post to a studio
    in one language, so rendered once (a render per post was a few per cent of a submission's
    CPU, bench/form_submit.py). The key holds every studio column the page shows."""
    return _render(studio, lang, state=state, definition=None, issued="", values={}, errors={}, consent=False,
                   message=message, title=title)


def _render(studio: PublicStudio, lang: str, *, state: str, definition: Definition | None, issued: str,
            values: dict[str, Any], errors: dict[str, str], consent: bool, message: str, title: str) -> str:
    return _environment().get_template("page.html.j2").render(
        lang=lang, t=TEXTS[lang], static=STATIC_PATH, state=state, challenge_url=f"/f/{studio.slug}/challenge",
        altcha_strings=json.dumps(ALTCHA_STRINGS[lang], ensure_ascii=False),
        title=title or say(lang, "title", studio=studio.name), action=f"/f/{studio.slug}",
        fields=_field_views(definition, lang) if definition else [], values=values, errors=errors,
        issued=issued, consent=consent, consent_text=say(lang, "consent", studio=studio.name),
        privacy_url=studio.privacy_url if studio.privacy_url and valid_privacy_url(studio.privacy_url) else None,
        message=message)


def _found_or_404(state: State, slug: str) -> Found:
    with read_tx(state.engine) as conn:
        found = look_up(conn, slug)
    if found is None:
        raise NotFoundException("there is no such form")
    return found


def _lang(request: Request, studio: PublicStudio) -> str:
    return guest_language(request.headers.get("accept-language", ""), language(studio.locale))


class InquiryFormController(Controller):
    """A controller, not module-level handlers: Litestar wraps a handler's function when an
    app registers it, so a handler object shared by two apps (tests start many) breaks."""

    path = "/f"
    include_in_schema = False

    @get("/{slug:str}", sync_to_thread=True)
    def page(self, request: Request, state: State, slug: FromPath[str]) -> Response[str]:
        return form_page(request, state, slug)

    @get("/{slug:str}/form.json", sync_to_thread=True)
    def json(self, request: Request, state: State, slug: FromPath[str]) -> Response[dict[str, Any]]:
        return form_json(request, state, slug)

    @get("/{slug:str}/challenge", sync_to_thread=True)
    def challenge(self, state: State, slug: FromPath[str]) -> Response[dict[str, Any]]:
        """A proof-of-work challenge for the ALTCHA widget (and for custom front ends)."""
        studio = _found_or_404(state, slug).studio
        return Response(new_challenge(state.settings.secret(), studio.id),
                        headers={**CORS, "Cache-Control": "no-store"})

    @post("/{slug:str}", status_code=200, request_max_body_size=MAX_BODY + 1024 * 1024)
    async def submit(self, request: Request, state: State, slug: FromPath[str]) -> Response[Any]:
        return await form_post(request, state, slug)


def form_page(request: Request, state: State, slug: str) -> Response[str]:
    """The form, complete without JavaScript, in the guest's language."""
    found = _found_or_404(state, slug)
    studio = found.studio
    return _page(200, studio, _lang(request, studio), definition=found.version.definition,
                 issued=issue(state.settings.secret(), studio.id))


def form_json(request: Request, state: State, slug: str) -> Response[dict[str, Any]]:
    """The form for a custom front end: definition, version, consent text, where to post, and
    freshly issued fields. CORS for any origin, never with credentials (there are none)."""
    found = _found_or_404(state, slug)
    studio, version = found.studio, found.version
    lang = _lang(request, studio)
    body = {"studio": {"slug": studio.slug, "name": studio.name}, "version": version.version,
            "language": lang, "definition": version.definition.to_json(), "action": f"/f/{studio.slug}",
            "consent": {"field": CONSENT_FIELD, "value": "yes", "text": say(lang, "consent", studio=studio.name),
                        "privacy_url": studio.privacy_url},
            "issued": {"field": ISSUED_FIELD, "value": issue(state.settings.secret(), studio.id)},
            "proof_of_work": {"field": POW_FIELD, "challenge_url": f"/f/{studio.slug}/challenge",
                              "protocol": "altcha-v1"}}
    return Response(body, headers={**CORS, "Cache-Control": "no-store"})


async def form_post(request: Request, state: State, slug: str) -> Response[Any]:
    """A plain HTML form post (multipart or urlencoded) from our page or the studio's markup.

    The form is looked up after the body is parsed: one statement then also finds the inquiry
    the post's token made before. On SQLite that read runs on the loop, and so does `prepare`
    (CPU only); handing each to a thread cost more than it did (bench/form_submit.py)."""
    wants_json = "application/json" in request.headers.get("accept", "")
    body = await request.body()
    try:
        parsed = parse_form(body, request.headers.get("content-type", ""))
    except FormError:
        parsed = None
    fields = {} if parsed is None else {k: [v.decode("utf-8", "replace") for v in values]
                                        for k, values in parsed.fields.items()}
    token = token_of((fields.get(ISSUED_FIELD) or [""])[0])
    found = await read_soon(state.engine, state.get("loop_reader"), lambda conn: look_up(conn, slug, token))
    if found is None:
        raise NotFoundException("there is no such form")
    studio = found.studio
    lang = _lang(request, studio)
    if parsed is None:
        return _answer(400, studio, lang, wants_json, message=say(lang, "fix"), state="error")
    files = {k: [(p.filename, p.data) for p in parts] for k, parts in parsed.files.items()}
    client = request.client.host if request.client else "unknown"
    decided = prepare(state.settings, _limits(request), found, Post(fields, files, client, lang), state.reactions)
    outcome = decided if isinstance(decided, Outcome) else await _store(state, decided)
    return _say_outcome(outcome, studio, lang, wants_json, fields, state)


async def _store(state: State, pending: Pending) -> Outcome:
    """The submission in the API's group commit (gateway/store/batching.py), shared with other
    posts and replies arriving meanwhile: one fsync for all of them."""
    writes = state.get("writes")
    try:
        if writes is None:
            return await asyncio.to_thread(take_pending, state.engine, pending)
        return await writes.run(pending.write)
    except IntegrityError:
        return await asyncio.to_thread(after_race, state.engine, pending)


def _limits(request: Request) -> FormLimits:
    limits = request.app.state.get("form_limits")
    if limits is None:  # one per app; two racing first requests just build two equal views of the table
        limits = request.app.state.form_limits = FormLimits.create(request.app.state.engine, request.app.state.settings)
    return limits


def _say_outcome(outcome: Outcome, studio: PublicStudio, lang: str, wants_json: bool,
                 fields: dict[str, list[str]], state: State) -> Response[Any]:
    if outcome.kind in ("stored", "quiet"):
        return _answer(200, studio, lang, wants_json, state="thanks", title=say(lang, "thanks_title"),
                       message=say(lang, "thanks", studio=studio.name))
    if outcome.kind == "later":
        headers = {"Retry-After": str(outcome.retry_after or 3600)}
        return _answer(429, studio, lang, wants_json, state="later", title=say(lang, "later_title"),
                       message=say(lang, "later"), headers=headers)
    errors = {key: error_text(lang, code, params) for key, (code, params) in outcome.errors.items()}
    if wants_json:
        return Response({"status": "invalid", "errors": errors}, status_code=422, headers=CORS)
    assert outcome.version is not None
    values: dict[str, Any] = {}
    for f in outcome.version.definition.fields:
        given = fields.get(f.key, [])
        if f.type == "multi_select":
            values[f.key] = given
        elif f.type != "files" and given:
            values[f.key] = given[0]
    issued = fields.get(ISSUED_FIELD, [""])[0] or issue(state.settings.secret(), studio.id)
    return _page(422, studio, lang, definition=outcome.version.definition, issued=issued, values=values,
                 errors=errors, consent=any(v == "yes" for v in fields.get(CONSENT_FIELD, [])))


def _answer(status: int, studio: PublicStudio, lang: str, wants_json: bool, *, state: str, message: str,
            title: str = "", headers: dict[str, str] | None = None) -> Response[Any]:
    if wants_json:
        return Response({"status": state, "message": message}, status_code=status, headers={**CORS, **(headers or {})})
    return _page(status, studio, lang, state=state, message=message, title=title, headers=headers)


def form_static() -> Router:
    return create_static_files_router(path=STATIC_PATH, directories=[STATIC_DIR], name="form-static",
                                      cache_control=CacheControlHeader(max_age=3600, public=True),
                                      include_in_schema=False)


def form_routes() -> list[Any]:
    """The form's routes for one app (fresh objects each time)."""
    return [InquiryFormController, form_static()]
