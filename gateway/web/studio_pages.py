"""/app/settings and /app/people: the studio's own pages, through the API's domain functions.

- Settings (gateway/forms/studio_settings.py, as PATCH /api/v1/studio): everyone signed in sees
  them and sets their own page language; only the owner changes the studio's (name,
  acknowledgements, the mails' language, time zone, the form's privacy page), as in the API.
- People (gateway/access/profiles.py, as /api/v1/profiles): the owner's alone; a member gets
  the 403 page, and no link to it. A member connected here signs in with their address at
  /app/login; the API token connecting hands out is not shown (the pages need none).

Every form carries the session's CSRF token and passes the Origin check (`checked_form`); each
POST answers 303 back to its page, so a reload does not post again. A refused field re-renders
the page with 400 and says why, next to the field.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy import Engine, select

from gateway.access.profiles import (
    ProfileConflict,
    ProfileInfo,
    connect_member,
    disconnect_profile,
    list_profiles,
)
from gateway.access.studios import StudioError
from gateway.access.web_sessions import SessionCaller
from gateway.forms.studio_settings import (
    LOCALES,
    SettingsChange,
    SettingsInvalid,
    change_settings,
    set_profile_locale,
)
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.paging import BadCursor, Page
from gateway.store.tables import PROFILE, STUDIO
from gateway.web.login import page
from gateway.web.security import csrf_token
from gateway.web.session import session_token, signed_in, to_login
from gateway.web.signed_forms import owner_only, signed_form
from gateway.web.templating import negotiate

PEOPLE_PAGE = 50     # profiles on one page, as the inbox's rows; more by the API's cursor


@dataclass(frozen=True)
class Studio:
    name: str
    slug: str
    locale: str
    acknowledge_inquiries: bool
    time_zone: str
    privacy_url: str | None
    profile_email: str
    profile_locale: str | None


async def owner_signed(request: Request[Any, Any, Any]) -> SessionCaller | None:
    """The owner's session for an owner's page; None without a session (the caller answers
    `to_login`); the 403 page for a member."""
    signed = await signed_in(request)
    if signed is not None:
        owner_only(signed)
    return signed


def studio_context(request: Request[Any, Any, Any], signed: SessionCaller) -> dict[str, Any]:
    settings = request.app.state.settings
    return {"language": negotiate(request.headers.get("accept-language", ""), signed.locale),
            "csrf": csrf_token(settings.secret(), session_token(request, settings) or ""),
            "owner": signed.caller.role == "owner"}


def read_studio(engine: Engine, signed: SessionCaller) -> Studio:
    with read_tx(engine) as conn:
        row = conn.execute(select(STUDIO).where(STUDIO.c.id == signed.caller.studio_id)).one()
        me = conn.execute(select(PROFILE.c.email, PROFILE.c.locale).where(
            PROFILE.c.id == signed.caller.profile_id)).one()
    return Studio(row.name, row.slug, row.locale, row.acknowledge_inquiries, row.time_zone, row.privacy_url,
                  me.email, me.locale)


async def _settings_page(request: Request[Any, Any, Any], signed: SessionCaller, *, status: int = 200,
                         errors: dict[str, str] | None = None, sent: dict[str, Any] | None = None) -> Response[str]:
    studio = await asyncio.to_thread(read_studio, request.app.state.engine, signed)
    return page(request, "studio_settings.html", status=status, studio=studio, locales=LOCALES,
                errors=errors or {}, sent=sent or {}, saved=request.query_params.get("saved") == "1",
                **studio_context(request, signed))


@get("/app/settings", name="web-settings")
async def settings_page(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await signed_in(request)
    if signed is None:
        return to_login(request)
    return await _settings_page(request, signed)


@post("/app/settings", name="web-settings-change", status_code=303)
async def change_studio(request: Request[Any, Any, Any]) -> Response[Any]:
    """The owner changes the studio's settings; a checkbox that is not sent is "off"."""
    signed, form = await signed_form(request, owner=True)
    change = SettingsChange(name=str(form.get("name", "")), acknowledge_inquiries=form.get("acknowledge") == "on",
                            locale=str(form.get("locale", "")), time_zone=str(form.get("time_zone", "")).strip(),
                            privacy_url=str(form.get("privacy_url", "")).strip())
    try:
        await asyncio.to_thread(_change, request.app.state.engine, signed.caller.studio_id, change)
    except SettingsInvalid as exc:
        return await _settings_page(request, signed, status=400, errors=dict(exc.errors), sent=form)
    return Redirect("/app/settings?saved=1", status_code=303)


def _change(engine: Engine, studio_id: int, change: SettingsChange) -> None:
    with write_tx(engine) as conn:
        change_settings(conn, studio_id, change)


@post("/app/settings/language", name="web-settings-language", status_code=303)
async def change_language(request: Request[Any, Any, Any]) -> Response[Any]:
    """Anyone signed in: the language of their own pages ("" follows the browser)."""
    signed, form = await signed_form(request)
    locale = str(form.get("profile_locale", "")) or None
    try:
        await asyncio.to_thread(_language, request.app.state.engine, signed, locale)
    except SettingsInvalid as exc:
        return await _settings_page(request, signed, status=400, errors=dict(exc.errors))
    return Redirect("/app/settings?saved=1", status_code=303)


def _language(engine: Engine, signed: SessionCaller, locale: str | None) -> None:
    with write_tx(engine) as conn:
        set_profile_locale(conn, signed.caller, locale)


async def _people_page(request: Request[Any, Any, Any], signed: SessionCaller, *, status: int = 200,
                       error: str = "", sent: dict[str, Any] | None = None) -> Response[str]:
    try:
        studio, people = await asyncio.to_thread(_people, request.app.state.engine, signed,
                                                 request.query_params.get("cursor") or None)
    except BadCursor:
        raise ClientException("not a page of this list", extra={"code": "bad_cursor"}) from None
    return page(request, "studio_people.html", status=status, studio=studio, people=people.items,
                next_cursor=people.next_cursor, error=error, sent=sent or {}, **studio_context(request, signed))


def _people(engine: Engine, signed: SessionCaller, cursor: str | None) -> tuple[Studio, Page[ProfileInfo]]:
    """A page of PEOPLE_PAGE profiles, oldest first, after `cursor` (the API's, as the inbox pages)."""
    with read_tx(engine) as conn:
        listed = list_profiles(conn, signed.caller, limit=PEOPLE_PAGE, cursor=cursor)
    return read_studio(engine, signed), listed


@get("/app/people", name="web-people")
async def people_page(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await owner_signed(request)
    if signed is None:
        return to_login(request)
    return await _people_page(request, signed)


@post("/app/people", name="web-people-connect", status_code=303)
async def connect(request: Request[Any, Any, Any]) -> Response[Any]:
    signed, form = await signed_form(request, owner=True)
    try:
        await asyncio.to_thread(_connect, request.app.state.engine, signed, str(form.get("email", "")),
                                str(form.get("name", "")))
    except ProfileConflict:
        return await _people_page(request, signed, status=409, error="connected", sent=form)
    except StudioError:
        return await _people_page(request, signed, status=400, error="invalid", sent=form)
    return Redirect("/app/people", status_code=303)


def _connect(engine: Engine, signed: SessionCaller, email: str, name: str) -> None:
    with write_tx(engine) as conn:
        connect_member(conn, signed.caller, email, name, utcnow())


@post("/app/people/{profile_id:int}/disconnect", name="web-people-disconnect", status_code=303)
async def disconnect(request: Request[Any, Any, Any], profile_id: FromPath[int]) -> Response[Any]:
    """The member's sessions and tokens stop working with this commit (gateway/access/profiles.py)."""
    signed, _ = await signed_form(request, owner=True)
    try:
        found = await asyncio.to_thread(_disconnect, request.app.state.engine, signed, profile_id)
    except ProfileConflict:
        return await _people_page(request, signed, status=409, error="owner")
    if not found:
        raise NotFoundException("no such profile", extra={"code": "not_found"})
    return Redirect("/app/people", status_code=303)


def _disconnect(engine: Engine, signed: SessionCaller, profile_id: int) -> bool:
    with write_tx(engine) as conn:
        return disconnect_profile(conn, signed.caller, profile_id, utcnow())


STUDIO_ROUTES = [settings_page, change_studio, change_language, people_page, connect, disconnect]
