"""A brake on guessing API tokens: failed bearer-token attempts are counted per client address.

Policy (gateway/api/auth.py applies it):

- A *failure* is a bearer token that was presented and did not authenticate (unknown, revoked,
  malformed). A request without an Authorization header, or with another scheme, is answered
  401 but not counted: it guesses nothing, costs no database query, and counting it would let
  one misconfigured client behind a shared address (an office NAT, a reverse proxy without
  `X-Forwarded-For`) lock out everyone there.
- `max_failures` failures within a sliding `window` block the address for `cooldown` seconds
  (the window's length unless told otherwise). While blocked, every request that needs a
  caller gets 429 with `Retry-After`, *before* its token is looked at, so a valid token gets
  429 too: a brute-forcer learns nothing from a hit, and a blocked address costs no database
  query. Requests answered 429 are not counted (their tokens were never checked), so the block
  ends when `Retry-After` says and a client that honours it is not locked out for good.
- A success does not clear the count: otherwise anyone holding one valid token could
  interleave it with guesses at other studios' tokens.

The limiter is in-process: several web processes (the PostgreSQL `Procfile`) each count their
own failures, so the real ceiling is `max_failures` times the number of processes per window.
That is fine for a brake; tokens are 256-bit random strings, so the limit only has to stop
floods, not make guessing feasible-but-slow. Memory is bounded: at most `max_clients`
addresses are tracked, entries are dropped once their window and block have passed, and when
the table is full the address that failed least recently is forgotten first.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

MAX_FAILURES = 10
WINDOW = 60.0
MAX_CLIENTS = 10_000


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    expires: float = 0.0  # when the entry says nothing any more


class AuthFailureLimiter:
    """Sliding-window counter of failed authentications per client address; thread-safe."""

    def __init__(self, *, max_failures: int = MAX_FAILURES, window: float = WINDOW,
                 cooldown: float | None = None, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window <= 0 or max_clients < 1:
            raise ValueError("max_failures, window and max_clients must be positive")
        self.max_failures = max_failures
        self.window = window
        self.cooldown = window if cooldown is None else cooldown
        self.max_clients = max_clients
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently failed first
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try again, or None when it is not blocked."""
        with self._lock:
            now = self.clock()
            self._drop_expired(now)
            entry = self._entries.get(address)
            if entry is None or entry.blocked_until <= now:
                return None
            return max(1, math.ceil(entry.blocked_until - now))

    def failure(self, address: str) -> None:
        """Count one failed attempt; the `max_failures`-th within the window starts a block."""
        with self._lock:
            now = self.clock()
            self._drop_expired(now)
            entry = self._entries.pop(address, None) or _Entry()
            self._entries[address] = entry  # (re)inserted last: the most recent failure
            while entry.failures and entry.failures[0] <= now - self.window:
                entry.failures.popleft()
            entry.failures.append(now)
            if len(entry.failures) >= self.max_failures:
                entry.failures.clear()
                entry.blocked_until = now + self.cooldown
            # The same lifetime after the last failure for every entry keeps `_entries` sorted
            # by expiry, so `_drop_expired` only ever looks at the front.
            entry.expires = now + max(self.window, self.cooldown)
            while len(self._entries) > self.max_clients:
                self._entries.popitem(last=False)

    def tracked(self) -> int:
        """How many addresses are remembered now (for tests and metrics)."""
        with self._lock:
            self._drop_expired(self.clock())
            return len(self._entries)

    def _drop_expired(self, now: float) -> None:
        # Entries are in expiry order (see `failure`): amortised O(1) per call.
        while self._entries:
            address, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[address]
