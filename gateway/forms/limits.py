"""The limits on the public form, counted in the database so every web process shares them
(gateway/access/ratelimit.SharedFailureLimiter: here a "failure" is simply a submission).

Which apply (docs/forms.md):
- every post: the honeypot, per client address per hour, per guest address per studio per
  day, and the studio's daily cap;
- a post of our own page (valid issued fields): also the minimum fill time, and the token
  that makes a double submit one conversation;
- a bare post (no valid issued fields or no proof of work: the studio's own markup, a browser
  without JavaScript): budgets of its own, stricter ones, instead of those two, and a
  confirmation that echoes no answer. Kept apart so that a flood of bare posts cannot use up
  the budget of a client's real page (an office behind one address), at the price that one
  address may send both budgets' worth in all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, ScalarSelect, bindparam, func, select

from gateway.access.ratelimit import SharedFailureLimiter, count_both, prune
from gateway.settings import Settings
from gateway.store.db import result_processor
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import FORM_SUBMISSION, RATE_LIMIT

HOUR, DAY = 3600.0, 86400.0
CAP_WAIT = 3600   # Retry-After once the studio's daily cap is reached
PRUNE_EVERY = timedelta(minutes=1)


def _blocked_until(budget: str) -> ScalarSelect[Any]:
    return select(RATE_LIMIT.c.blocked_until).where(
        RATE_LIMIT.c.scope == bindparam(f"{budget}_scope"), RATE_LIMIT.c.key == bindparam(f"{budget}_key")
    ).scalar_subquery()


# Everything a post's write decides on before it stores anything, in one statement (one round
# trip on PostgreSQL, where the post's statements run one after another): how long each of its
# two budgets is blocked, the studio's inquiries of the last day, and whether its double-submit
# token was stored before.
_READ = Prepared(select(
    _blocked_until("ip"), _blocked_until("address"),
    select(func.count()).select_from(FORM_SUBMISSION).where(
        FORM_SUBMISSION.c.studio_id == bindparam("studio_id"),
        FORM_SUBMISSION.c.created_at >= bindparam("since", type_=FORM_SUBMISSION.c.created_at.type)).scalar_subquery(),
    select(FORM_SUBMISSION.c.id).where(
        FORM_SUBMISSION.c.studio_id == bindparam("studio_id"), FORM_SUBMISSION.c.token == bindparam("token")
    ).scalar_subquery()))


@dataclass(frozen=True)
class Budget:
    wait: int | None        # seconds until the post may be taken; None: now
    token_used: bool        # the double-submit token was stored before


@dataclass
class FormLimits:
    per_ip: SharedFailureLimiter
    per_address: SharedFailureLimiter
    bare_per_ip: SharedFailureLimiter
    bare_per_address: SharedFailureLimiter
    daily_cap: int
    _pruned_at: datetime | None = field(default=None, init=False)

    @classmethod
    def create(cls, engine: Engine, settings: Settings) -> "FormLimits":
        return cls(SharedFailureLimiter(engine, "form_ip", max_failures=settings.form_per_ip_per_hour, window=HOUR),
                   SharedFailureLimiter(engine, "form_address", max_failures=settings.form_per_address_per_day,
                                        window=DAY),
                   SharedFailureLimiter(engine, "form_bare_ip", max_failures=settings.form_bare_per_ip_per_hour,
                                        window=HOUR),
                   SharedFailureLimiter(engine, "form_bare_address",
                                        max_failures=settings.form_bare_per_address_per_day, window=DAY),
                   settings.form_daily_cap)

    def _pairs(self, studio_id: int, ip: str, email: str, bare: bool) -> list[tuple[SharedFailureLimiter, str]]:
        address = f"{studio_id}:{email.lower()}"
        if bare:
            return [(self.bare_per_ip, ip), (self.bare_per_address, address)]
        return [(self.per_ip, ip), (self.per_address, address)]

    def read(self, conn: Connection, studio_id: int, ip: str, email: str, bare: bool, token: str) -> Budget:
        """The post's budgets and the studio's daily cap, and whether its token was used."""
        (ip_limiter, ip_key), (address_limiter, address_key) = self._pairs(studio_id, ip, email, bare)
        row = _READ.execute(conn, ip_scope=ip_limiter.scope, ip_key=ip_limiter.key(ip_key),
                            address_scope=address_limiter.scope, address_key=address_limiter.key(address_key),
                            studio_id=studio_id, since=utcnow() - timedelta(seconds=DAY), token=token).fetchone()
        stamp = result_processor(conn, RATE_LIMIT.c.blocked_until)
        waits = [w for w in (ip_limiter.wait(stamp(row[0])), address_limiter.wait(stamp(row[1]))) if w is not None]
        if not waits and int(row[2] or 0) >= self.daily_cap:
            waits.append(CAP_WAIT)
        return Budget(max(waits) if waits else None, row[3] is not None)

    def count(self, conn: Connection, studio_id: int, ip: str, email: str, bare: bool) -> None:
        """One submission taken, in the transaction that stores it: it counts against every
        budget that applied to it (one commit for all of them: four of their own cost more
        than storing the inquiry with its image).

        Expired rows are dropped at most once a PRUNE_EVERY per process, not with every post:
        nothing reads them (a passed block waits for nothing, a stale window starts afresh in
        the upsert), and the DELETE was one more round trip of each post's write on PostgreSQL
        (bench/form_submit.py)."""
        now = utcnow()
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            prune(conn, now)
            self._pruned_at = now  # a rolled-back transaction only delays the next prune
        count_both(conn, *self._pairs(studio_id, ip, email, bare))
