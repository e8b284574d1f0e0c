"""The consent checkbox every form carries, linking the studio's privacy page."""
from __future__ import annotations

from urllib.parse import urlsplit

MAX_URL = 2000


def valid_privacy_url(url: str) -> bool:
    """An absolute http(s) address without spaces or quotes: it becomes a link's href on the
    public page, so anything else (javascript:, data:) is refused when it is saved."""
    if len(url) > MAX_URL or any(c.isspace() or c in "\"'<>" for c in url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("https", "http") and bool(parts.netloc)
