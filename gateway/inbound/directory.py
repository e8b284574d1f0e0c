"""Which studio an envelope recipient reaches: one rule for SMTP's RCPT and the webhooks.

A provider webhook names its envelope recipients in the payload; they choose the studio
exactly as RCPT TO does over SMTP, so mail is never accepted through one door that the other
would refuse.
"""
from __future__ import annotations

import asyncio
import time
import weakref

from sqlalchemy import Engine, select

from gateway.mail.addresses import parse_studio_address
from gateway.store.db import read_tx
from gateway.store.tables import STUDIO

_directories: weakref.WeakSet[StudioDirectory] = weakref.WeakSet()


class StudioDirectory:
    """Which studio slugs exist, with a short positive cache for the RCPT hot path.

    Only positive answers are cached (briefly): an unknown address is looked up every time,
    so a studio created a moment ago receives mail at once, and `forget_studio` drops a deleted
    studio from every directory of the process at once.
    """

    def __init__(self, engine: Engine, ttl: float = 5.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._known: dict[str, float] = {}
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
        found = await asyncio.to_thread(self._lookup, slug)
        if found:
            self._known[slug] = now + self.ttl
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
