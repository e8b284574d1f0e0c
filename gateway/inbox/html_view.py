"""Guest HTML as the studio reads it: sanitised again, remote images left out by default.

A remote image in a guest's mail (a tracking pixel, or any picture on the sender's server)
tells the sender when, how often and from which address the studio read it. The stored HTML
keeps every image, so nothing is lost; what a reader gets leaves out each image's source
unless they asked for remote images (the API's ``?images=remote``, a click in the
messenger), and says that it did.

Both ways the HTML passes nh3 (ammonia) again on the way out, with its default allow-list:
whatever wrote the row, the reader gets sanitised HTML. Under that allow-list ``<img src>``
is the only attribute a browser fetches by itself (``style``, ``background``, ``srcset``
and ``<link>`` never survive; ``cite`` and ``<a href>`` are not fetched), and ``cid:`` and
``data:`` sources were already dropped when the mail was parsed, so every remaining source
is on someone else's server: absolute, scheme-relative ("//host/x.gif") or relative to a
base we don't control.
"""
from __future__ import annotations

from dataclasses import dataclass

import nh3


@dataclass(frozen=True)
class HtmlView:
    html: str | None
    remote_images_blocked: bool   # True when at least one image source was left out


def html_view(stored: str | None, *, remote_images: bool = False) -> HtmlView:
    """The stored (already sanitised) HTML for a reader; see the module docstring."""
    if stored is None:
        return HtmlView(None, False)
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
