"""What every page sends and checks: the Content-Security-Policy, CSRF tokens and `Origin`.

- CSP `default-src 'self'` on every page: our scripts and styles only, from files (no inline
  script or style can run, so injected markup stays inert). `frame-ancestors` is per route
  (`page_headers(frame_ancestors=...)`): `'none'` for the messenger's pages (no clickjacking),
  `'self'` for the guest-HTML route our own pages frame, `*` for the inquiry form under /f/,
  which any studio's site may embed.
- CSRF: every state-changing form carries `csrf_token`, HMAC(GATEWAY_SECRET_KEY, the session's
  cookie, or before sign-in a random pre-session cookie). A cross-site page can neither read
  nor set our cookies, so it cannot compute the token; a missing or wrong one is 403. The
  inquiry form (/f/) is exempt: guests have no session, and E's form has its own brakes.
- `Origin`: a browser names the page a POST came from; one from another origin is 403 even
  with a right token (defence in depth, e.g. against a leaked token). Without `Origin` (old
  browsers, curl) the token decides. The expected origin is GATEWAY_PUBLIC_URL's, else the
  request's own (scheme and Host), which is what the browser sees when there is no proxy.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from litestar import Request
from litestar.datastructures import ResponseHeader

from gateway.settings import Settings

CSRF_FIELD = "csrf_token"
PRESESSION_COOKIE = "gw_presession"


def content_security_policy(frame_ancestors: str = "'none'") -> str:
    """`default-src 'self'` plus who may frame the page; forms post only to us, no <base> tricks."""
    return (f"default-src 'self'; base-uri 'none'; form-action 'self'; object-src 'none'; "
            f"frame-ancestors {frame_ancestors}")


def page_headers(frame_ancestors: str = "'none'") -> list[ResponseHeader]:
    """The headers of a page route (Litestar `response_headers=`). `Referrer-Policy: same-origin`
    keeps a sign-in link's token out of any other site's Referer (`no-referrer` would also make
    browsers send `Origin: null` with our own forms, which the Origin check must refuse); pages
    are never cached (they show mail)."""
    return [ResponseHeader(name=name, value=value) for name, value in header_values(frame_ancestors).items()]


def header_values(frame_ancestors: str = "'none'") -> dict[str, str]:
    return {"Content-Security-Policy": content_security_policy(frame_ancestors),
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store"}


def https(request: Request[Any, Any, Any], settings: Settings) -> bool:
    """Whether browsers reach us over https: GATEWAY_PUBLIC_URL says so, else the request's scheme
    (uvicorn takes it from X-Forwarded-Proto only from the proxies in GATEWAY_FORWARDED_ALLOW_IPS)."""
    if settings.public_url:
        return settings.public_url.startswith("https://")
    return request.url.scheme == "https"


def csrf_token(secret: bytes, binding: str) -> str:
    """The token the forms of a session (or pre-session) carry."""
    return hmac.new(secret, f"csrf:{binding}".encode(), hashlib.sha256).hexdigest()


def new_presession() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(secret: bytes, binding: str | None, sent: str | None) -> bool:
    if not binding or not sent:
        return False
    return hmac.compare_digest(csrf_token(secret, binding), sent)


def origin_ok(request: Request[Any, Any, Any], settings: Settings) -> bool:
    """False when the browser says the request came from another origin (or from an opaque
    one, `Origin: null`, as sandboxed frames and some redirects send)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if settings.public_url:
        expected = _origin(settings.public_url)
    else:
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    return origin.strip().lower() == expected


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
