"""Which studio an envelope recipient reaches: one rule for SMTP's RCPT and the webhooks.

A provider webhook names its envelope recipients in the payload; they choose the studio
exactly as RCPT TO does over SMTP, so mail is never accepted through one door that the other
would refuse.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict

from sqlalchemy import Engine, select

from gateway.mail.addresses import parse_studio_address
from gateway.store.db import read_tx
from gateway.store.tables import STUDIO

_directories: weakref.WeakSet[StudioDirectory] = weakref.WeakSet()


class StudioDirectory:
    """Which studio slugs exist, with short caches for the RCPT hot path.

    Positive answers are cached briefly, and `forget_studio` drops a deleted studio from every
    directory of the process at once. Negative answers are cached only when asked for
    (`unknown_ttl`, SMTP's GATEWAY_SMTP_UNKNOWN_RCPT_CACHE_SECONDS), even more briefly and at
    most `unknown_size` of them (oldest dropped first): repeated RCPTs of one unknown name
    (a dictionary attack cycling its list, spam to info@) then cost no query. The price is
    that a studio created in another process (`gateway studio add`) within `unknown_ttl` after
    someone tried its address is still refused for the rest of that time.
    """

    def __init__(self, engine: Engine, ttl: float = 5.0, *, unknown_ttl: float = 0.0,
                 unknown_size: int = 0) -> None:
        self.engine = engine
        self.ttl = ttl
        self.unknown_ttl = unknown_ttl
        self.unknown_size = unknown_size
        self._known: dict[str, float] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        _directories.add(self)

    def forget(self, slug: str) -> None:
        self._known.pop(slug, None)  # one atomic dict operation: safe beside the event loop's reads

    def _lookup(self, slug: str) -> bool:
        with read_tx(self.engine) as conn:
            return conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == slug)).first() is not None

    async def exists(self, slug: str) -> bool:
        now = time.monotonic()
        if self._known.get(slug, 0.0) > now:
            return True
        if self._unknown.get(slug, 0.0) > now:
            return False
        found = await asyncio.to_thread(self._lookup, slug)
        if found:
            self._known[slug] = now + self.ttl
            self._unknown.pop(slug, None)
        elif self.unknown_ttl > 0 and self.unknown_size > 0:
            self._unknown[slug] = time.monotonic() + self.unknown_ttl
            self._unknown.move_to_end(slug)
            while len(self._unknown) > self.unknown_size:
                self._unknown.popitem(last=False)
        return found

    async def deliverable(self, recipients: list[str], mail_domain: str) -> list[str]:
        """The recipients that are addresses of existing studios, in order, without repeats."""
        found: list[str] = []
        for rcpt in recipients:
            address = parse_studio_address(rcpt, mail_domain)
            if address is not None and rcpt not in found and await self.exists(address.slug):
                found.append(rcpt)
        return found


def forget_studio(slug: str) -> None:
    """A deleted studio's address answers `550` from now on in this process (SMTP's RCPT and the
    webhooks each keep a directory). Other processes may still say yes for up to `ttl` seconds;
    what they accept then is discarded unthreaded (gateway/inbound/threader.StudiosGone)."""
    for directory in list(_directories):
        directory.forget(slug)
