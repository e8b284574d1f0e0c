"""The API docs page works offline (issue 18 "Docs offline"): every script and stylesheet it
loads is served by the gateway itself, and nothing names a CDN or a web-font host.

Before, /schema loaded Scalar from cdn.jsdelivr.net (and offered Swagger UI, Redoc, Elements and
RapiDoc from unpkg, jsDelivr and cdn.redoc.ly, Redoc with Google Fonts)."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import RunningGateway

STATIC = Path(__file__).resolve().parent.parent / "gateway" / "api" / "static"


class Assets(HTMLParser):
    """Every URL the page makes a browser fetch: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if found.get(name) and tag in ("script", "link", "img", "iframe"):
                self.urls.append(found[name] or "")


@pytest.mark.parametrize("page", ["/schema", "/schema/redoc"])
def test_every_script_and_style_of_the_docs_page_is_ours_and_answers(gw: RunningGateway, page: str) -> None:
    client = gw.api(None)
    answer = client.get(page)
    assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]
    html = answer.text
    parser = Assets()
    parser.feed(html)
    assert parser.urls, "the page loads no script at all"
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not served by the gateway"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100_000 and "javascript" in asset.headers["content-type"]
    assert not re.search(r"https?://", "".join(parser.urls))
    assert "fonts.googleapis" not in html and "cdn." not in html and "unpkg" not in html
    assert "Content-Security-Policy" in html and "default-src 'self'" in html


def test_the_cdn_pages_litestar_would_add_are_not_served(gw: RunningGateway) -> None:
    client = gw.api(None)
    for page in ("/schema/swagger", "/schema/elements", "/schema/rapidoc", "/schema/scalar"):
        assert client.get(page).status_code == 404, page
    assert client.get("/schema/openapi.json").json()["info"]["title"] == "Studio mail gateway"


def test_the_vendored_version_is_recorded() -> None:
    versions = (STATIC / "VERSIONS").read_text()
    bundle = STATIC / "redoc" / "redoc.standalone.js"
    assert bundle.is_file() and re.search(r"^redoc\s+2\.5\.4\s", versions, re.M)
    import hashlib
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() in versions
