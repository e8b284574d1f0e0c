"""Guest HTML as the studio reads it: sanitised, remote images left out by default.

A remote image in a guest's mail (a tracking pixel, or any picture on the sender's server)
tells the sender when, how often and from which address the studio read it. The stored HTML
keeps every image, so nothing is lost; what a reader gets leaves out each image's source
unless they asked for remote images (the API's ``?images=remote``, a click in the
messenger), and says that it did.

Both ways the reader gets sanitised HTML: the stored HTML is nh3 (ammonia) output, made when
the mail was parsed (gateway/inbound/mime/body.py; webhook mail is parsed the same way), and
HTML with an image passes nh3 again on the way out, with its default allow-list. HTML without
one is handed out as stored: cleaning it again would give the same text, at about 10 ms per
100 KB, for every message of every page. Under that allow-list ``<img src>``
is the only attribute a browser fetches by itself (``style``, ``background``, ``srcset``
and ``<link>`` never survive; ``cite`` and ``<a href>`` are not fetched), and ``cid:`` and
``data:`` sources were already dropped when the mail was parsed, so every remaining source
is on someone else's server: absolute, scheme-relative ("//host/x.gif") or relative to a
base we don't control.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import nh3

_IMG = re.compile(r"<img\b", re.IGNORECASE)


@dataclass(frozen=True)
class HtmlView:
    html: str | None
    remote_images_blocked: bool   # True when at least one image source was left out


def html_view(stored: str | None, *, remote_images: bool = False) -> HtmlView:
    """The stored (already sanitised) HTML for a reader; see the module docstring."""
    if stored is None:
        return HtmlView(None, False)
    if not _IMG.search(stored):
        return HtmlView(stored, False)
    if remote_images:
        return HtmlView(nh3.clean(stored), False)
    blocked = False

    def drop_image_sources(element: str, attribute: str, value: str) -> str | None:
        nonlocal blocked
        if element == "img" and attribute == "src":
            blocked = blocked or bool(value.strip())
            return None
        return value

    html = nh3.clean(stored, attribute_filter=drop_image_sources)
    return HtmlView(html, blocked)
