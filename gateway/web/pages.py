"""The messenger's pages as one Litestar router under /app/, for gateway/runtime.py to mount.

Every page route gets the messenger's security headers (CSP with `frame-ancestors 'none'`,
gateway/web/security.py); a route that may be framed sets its own `response_headers`. Errors
(403 for a failed CSRF or Origin check, 429, 404) are answered as a page with the same headers,
not as the API's JSON.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.static_files import create_static_files_router

from gateway.web.conversation_routes import CONVERSATION_PAGES
from gateway.web.inbox import inbox
from gateway.web.login import LOGIN_ROUTES
from gateway.web.security import header_values, page_headers
from gateway.web.session import to_login
from gateway.web.signed_forms import SignInFirst
from gateway.web.studio_routes import STUDIO_PAGES
from gateway.web.templating import negotiate, render

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/app/static"


def error_page(request: Request[Any, Any, Any], exc: HTTPException) -> Response[str]:
    language = negotiate(request.headers.get("accept-language", ""))
    code = (exc.extra or {}).get("code") if isinstance(exc.extra, dict) else None
    body = render("error.html", language, status=exc.status_code, code=code or "")
    return Response(body, status_code=exc.status_code, media_type=MediaType.HTML,
                    headers={**header_values(), **(exc.headers or {})})


def sign_in_first(request: Request[Any, Any, Any], exc: SignInFirst) -> Response[Any]:
    """A form posted without a live session (gateway/web/signed_forms.py): the login page, with
    the pages' headers as any page's answer."""
    response = to_login(request)
    response.headers.update(header_values())
    return response


def web_routes() -> list[Router]:
    """The messenger: its pages, and its static files (vendored htmx, our CSS), served by us."""
    pages = Router(path="/", route_handlers=[*LOGIN_ROUTES, inbox, *CONVERSATION_PAGES, *STUDIO_PAGES], response_headers=page_headers("'none'"),
                   exception_handlers={HTTPException: error_page, SignInFirst: sign_in_first}, include_in_schema=False)
    # Vendored file names carry their version; our CSS changes with a release: an hour's caching.
    static = create_static_files_router(path=STATIC_PATH, directories=[STATIC_DIR], name="web-static",
                                        cache_control=CacheControlHeader(max_age=3600, public=True),
                                        include_in_schema=False)
    return [pages, static]
