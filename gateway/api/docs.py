"""The API docs page, served offline: Redoc from our own static files, no CDN, no web fonts.

Litestar's default schema pages load Scalar, Swagger UI, Redoc and their favicon from jsDelivr,
unpkg and cdn.redoc.ly, and Redoc's page Google Fonts: the page broke without internet and
told those hosts of every visitor. Redoc is vendored in gateway/api/static (version and
checksums in its VERSIONS file) and served under /schema/static/, beside the page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    RedocRenderPlugin,
    YamlRenderPlugin,
)
from litestar.static_files import create_static_files_router

from gateway.api.contract import finish, operation_id

SCHEMA_PATH = "/schema"
STATIC_PATH = f"{SCHEMA_PATH}/static"
STATIC_DIR = Path(__file__).resolve().parent / "static"
REDOC_JS = f"{STATIC_PATH}/redoc/redoc.standalone.js"

# The browser enforces "nothing from elsewhere" too: Redoc's footer badge (an image on
# cdn.redoc.ly) is refused and hides itself (its onError), and a future bundle that reached out
# would be stopped. Redoc needs the inline init script and styles, and a blob: worker for search.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:")


class Finished:
    """Render the finished document (gateway/api/contract.py), not Litestar's raw one; the
    raw one is the same object on every request, so it is finished once."""

    _finished: tuple[int, dict[str, Any]] | None = None

    def finished(self, generated: dict[str, Any]) -> dict[str, Any]:
        if self._finished is None or self._finished[0] != id(generated):
            self._finished = (id(generated), finish(generated))
        return self._finished[1]


class FinishedJson(Finished, JsonRenderPlugin):
    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.finished(openapi_schema))


class FinishedYaml(Finished, YamlRenderPlugin):
    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.finished(openapi_schema))


class OfflineRedoc(Finished, RedocRenderPlugin):
    """Litestar's Redoc page with our bundle, no Google Fonts, no CDN favicon, and a CSP."""

    def __init__(self) -> None:
        super().__init__(js_url=REDOC_JS, google_fonts=False, favicon="", path=["/", "/redoc"])

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        page = super().render(request, self.finished(openapi_schema))
        meta = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        return page.replace(b"<head>", b"<head>" + meta.encode(), 1)


def openapi_config() -> OpenAPIConfig:
    """/schema (the docs page), /schema/redoc, /schema/openapi.json and .yaml: no other viewer,
    since every other one Litestar offers loads itself from a CDN."""
    return OpenAPIConfig(title="Studio mail gateway", version="1", path=SCHEMA_PATH, operation_id_creator=operation_id,
                         render_plugins=[OfflineRedoc(), FinishedJson(), FinishedYaml()])


def static_files() -> Router:
    # A day's caching: the file names carry no version, and an upgrade may change the bundle.
    return create_static_files_router(path=STATIC_PATH, directories=[STATIC_DIR], name="schema-static",
                                      cache_control=CacheControlHeader(max_age=86400, public=True))
