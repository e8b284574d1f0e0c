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

from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from gateway.access.ratelimit import SharedFailureLimiter
from gateway.settings import Settings

HOUR, DAY = 3600.0, 86400.0


@dataclass
class FormLimits:
    per_ip: SharedFailureLimiter
    per_address: SharedFailureLimiter
    bare_per_ip: SharedFailureLimiter
    bare_per_address: SharedFailureLimiter

    @classmethod
    def create(cls, engine: Engine, settings: Settings) -> "FormLimits":
        return cls(SharedFailureLimiter(engine, "form_ip", max_failures=settings.form_per_ip_per_hour, window=HOUR),
                   SharedFailureLimiter(engine, "form_address", max_failures=settings.form_per_address_per_day,
                                        window=DAY),
                   SharedFailureLimiter(engine, "form_bare_ip", max_failures=settings.form_bare_per_ip_per_hour,
                                        window=HOUR),
                   SharedFailureLimiter(engine, "form_bare_address",
                                        max_failures=settings.form_bare_per_address_per_day, window=DAY))

    def _pairs(self, studio_id: int, ip: str, email: str, bare: bool) -> list[tuple[SharedFailureLimiter, str]]:
        address = f"{studio_id}:{email.lower()}"
        if bare:
            return [(self.bare_per_ip, ip), (self.bare_per_address, address)]
        return [(self.per_ip, ip), (self.per_address, address)]

    def retry_after(self, conn: Connection, studio_id: int, ip: str, email: str, bare: bool) -> int | None:
        """Seconds until this post may be taken, or None when no limit is reached."""
        waits = [w for limiter, key in self._pairs(studio_id, ip, email, bare)
                 if (w := limiter.retry_after(key, conn)) is not None]
        return max(waits) if waits else None

    def count(self, conn: Connection, studio_id: int, ip: str, email: str, bare: bool) -> None:
        """One submission taken, in the transaction that stores it: it counts against every
        budget that applied to it (one commit for all of them: four of their own cost more
        than storing the inquiry with its image)."""
        for limiter, key in self._pairs(studio_id, ip, email, bare):
            limiter.failure(key, conn)
