"""A brake on guessing API tokens: failed bearer-token attempts are counted per client address
and per token prefix.

Policy (gateway/api/auth.py applies it):

- A valid token is never refused by the brake. Its lookup comes first, so an office NAT or a
  proxy shared with a guesser (or a guesser aiming at the owner on purpose) cannot lock the
  owner out: ten bad tokens from the owner's address once refused the owner's own token for a
  minute. Telling a guesser that a token is valid while braked costs nothing: tokens are
  256-bit random strings, so the brake only has to stop floods, not make guessing slow.
- A *failure* is a bearer token that was presented and did not authenticate (unknown, revoked,
  malformed). It is counted twice: against the client address, and against the token's
  public prefix (`gw_` or `gws_` and six characters, shown in token lists; `guess_keys`). The
  address brakes one guesser; the prefix brakes many addresses working at one known prefix
  (a botnet given a token's prefix from a screenshot). A request without an Authorization
  header, or with another scheme, is answered 401 but not counted: it guesses nothing, costs
  no database query, and counting it would let one misconfigured client behind a shared
  address lock out everyone there.
- `max_failures` failures within a `window` block the address (or prefix) for `cooldown`
  seconds (the window's length unless told otherwise). While blocked, a wrong token gets 429
  with `Retry-After`. Requests answered 429 are not counted (they told the guesser nothing),
  so the block ends when `Retry-After` says and a client that honours it is not locked out
  for good.
- A success does not clear the count: otherwise anyone holding one valid token could
  interleave it with guesses at other studios' tokens.

Two implementations of the one policy:

- SharedFailureLimiter, what the gateway runs: the counts live in the database (`rate_limit`),
  so every web process on it (the PostgreSQL `Procfile`, or `gateway serve` beside a separate
  `web` role) shares one budget per address. Kept per process, N processes gave a guesser N
  times the budget, and a block in one process let the others go on answering, so a guess
  sent to another process could still tell a hit. The window is fixed, starting at an
  address's first counted failure (a row per address, updated by one upsert, exact under
  concurrency on both back ends): at worst 2 x max_failures - 1 failures fit into one window's
  length across a window's edge, which is still a brake. Rows are dropped once their window
  and block have passed (an index range on expires_at), so the table holds only addresses
  that failed recently. A wrong token from a blocked address costs its token lookup and two
  primary-key reads (address, prefix), and no write.
- AuthFailureLimiter, in-process, sliding window: for tests that need a fake clock, and the
  reference for the policy. Memory is bounded: at most `max_clients` addresses are tracked,
  entries are dropped once their window and block have passed, and when the table is full the
  address that failed least recently is forgotten first.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from sqlalchemy import Connection, Engine, bindparam, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store.db import read_tx, result_processor, write_tx
from gateway.store.prepared import Prepared
from gateway.store.models import utcnow
from gateway.store.tables import RATE_LIMIT

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


class FailureLimiter(Protocol):
    def retry_after(self, address: str) -> int | None: ...
    def failure(self, address: str) -> None: ...


class SharedFailureLimiter:
    """The policy above, counted in the database so that every process shares it.

    `scope` keeps separate budgets (API tokens, account-deletion codes) in one table. Both
    methods do database I/O: call them off the event loop, or pass a connection (the API reads
    on the loop on SQLite, as it does for tokens)."""

    def __init__(self, engine: Engine, scope: str, *, max_failures: int = MAX_FAILURES, window: float = WINDOW,
                 cooldown: float | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        if max_failures < 1 or window <= 0 or not scope or len(scope) > 32:
            raise ValueError("max_failures and window must be positive, scope 1-32 characters")
        self.engine = engine
        self.scope = scope
        self.max_failures = max_failures
        self.window = timedelta(seconds=window)
        self.cooldown = timedelta(seconds=window if cooldown is None else cooldown)
        self.clock = clock

    def retry_after(self, address: str, conn: Connection | None = None) -> int | None:
        """Whole seconds until `address` may try again, or None when it is not blocked."""
        if conn is None:
            with read_tx(self.engine) as own:
                return self.retry_after(address, own)
        row = _BLOCKED_UNTIL.execute(conn, scope=self.scope, key=self.key(address)).fetchone()
        return self.wait(None if row is None else result_processor(conn, RATE_LIMIT.c.blocked_until)(row[0]))

    def key(self, address: str) -> str:
        """The address as its row keys it."""
        return _key(address)

    def wait(self, blocked_until: datetime | None) -> int | None:
        """Whole seconds until a row blocked until then may try again; None when it may now.
        For callers that read `blocked_until` together with other things (the inquiry form)."""
        now = self.clock()
        if blocked_until is None or blocked_until <= now:
            return None
        return max(1, math.ceil((blocked_until - now).total_seconds()))

    def failure(self, address: str, conn: Connection | None = None) -> None:
        """Count one failed attempt; the `max_failures`-th within the window starts a block.
        With `conn`, in the caller's transaction (the inquiry form counts a submission in the
        transaction that stores it), else in one of its own."""
        if conn is None:
            with write_tx(self.engine) as own:
                self.failure(address, own)
            return
        prune(conn, self.clock())
        self.count(address, conn)

    def count(self, address: str, conn: Connection) -> None:
        """`failure` without dropping expired rows: for a caller counting several budgets in
        one transaction, which prunes once."""
        now = self.clock()
        key = _key(address)
        failures = _UPSERT[conn.dialect.name].execute(conn, scope=self.scope, key=key, now=now,
                                                      lasts=self._lasts(now),
                                                      stale_before=now - self.window).fetchone()[0]
        self._block_at(conn, key, failures, now)

    def _lasts(self, now: datetime) -> datetime:
        return now + max(self.window, self.cooldown)

    def _block_at(self, conn: Connection, key: str, failures: int, now: datetime) -> None:
        if failures >= self.max_failures:  # else the block's UPDATE would change nothing: not sent
            blocked_until = now + self.cooldown
            _BLOCK.execute(conn, scope=self.scope, key=key, max_failures=self.max_failures, now=now,
                           blocked_until=blocked_until, expires_at=max(self._lasts(now), blocked_until))


def count_both(conn: Connection, first: tuple[SharedFailureLimiter, str],
               second: tuple[SharedFailureLimiter, str]) -> None:
    """`count` for two budgets (limiter, address) in one upsert of two rows: the inquiry form
    counts a post against its client address and its guest address, and each statement of its
    write is a round trip of the group commit on PostgreSQL (bench/form_submit.py)."""
    (one, one_address), (other, other_address) = first, second
    one_key, other_key = _key(one_address), _key(other_address)
    if (one.scope, one_key) == (other.scope, other_key):  # one row may not be upserted twice in a statement
        one.count(one_address, conn)
        other.count(other_address, conn)
        return
    now = one.clock()
    rows = _UPSERT_TWO[conn.dialect.name].execute(
        conn, now=now, scope1=one.scope, key1=one_key, lasts1=one._lasts(now), stale1=now - one.window,
        scope2=other.scope, key2=other_key, lasts2=other._lasts(now), stale2=now - other.window).fetchall()
    failures = {(scope, key): count for scope, key, count in rows}  # RETURNING promises no order
    one._block_at(conn, one_key, failures[one.scope, one_key], now)
    other._block_at(conn, other_key, failures[other.scope, other_key], now)


def prune(conn: Connection, now: datetime) -> None:
    """Drop the rows that say nothing any more (an index range on expires_at)."""
    _DELETE_EXPIRED.execute(conn, now=now)


# The statements of a counted failure and of a lookup, compiled once (gateway/store/prepared.py): built per
# call they cost about a millisecond of CPU each time, more than the inquiry form's whole insert.
def _stamp(name: str) -> Any:
    return bindparam(name, type_=RATE_LIMIT.c.window_start.type)


_DELETE_EXPIRED = Prepared(delete(RATE_LIMIT).where(RATE_LIMIT.c.expires_at <= _stamp("now")))
_BLOCKED_UNTIL = Prepared(select(RATE_LIMIT.c.blocked_until).where(
    RATE_LIMIT.c.scope == bindparam("scope"), RATE_LIMIT.c.key == bindparam("key")))


def _upsert(dialect: Any) -> Prepared:
    stale = RATE_LIMIT.c.window_start <= _stamp("stale_before")
    insert = dialect.insert(RATE_LIMIT).values(scope=bindparam("scope"), key=bindparam("key"), window_start=_stamp("now"),
                                               failures=1, blocked_until=None, expires_at=_stamp("lasts"))
    # Every SET expression sees the row as it was (SQL's UPDATE semantics, both back ends).
    return Prepared(insert.on_conflict_do_update(index_elements=[RATE_LIMIT.c.scope, RATE_LIMIT.c.key], set_={
        "failures": case((stale, 1), else_=RATE_LIMIT.c.failures + 1),
        "window_start": case((stale, _stamp("now")), else_=RATE_LIMIT.c.window_start),
        "expires_at": case((RATE_LIMIT.c.blocked_until > _stamp("lasts"), RATE_LIMIT.c.blocked_until),
                           else_=_stamp("lasts")),
    }).returning(RATE_LIMIT.c.failures))


_UPSERT = {"sqlite": _upsert(sqlite), "postgresql": _upsert(postgresql)}


def _upsert_two(dialect: Any) -> Prepared:
    """`_upsert` for two rows (count_both): each row's window start and expiry come in as the
    row's own proposed values (`excluded`), its stale-before by its scope."""
    table = RATE_LIMIT
    rows = [{"scope": bindparam(f"scope{n}"), "key": bindparam(f"key{n}"), "window_start": _stamp("now"),
             "failures": 1, "blocked_until": None, "expires_at": _stamp(f"lasts{n}")} for n in (1, 2)]
    insert = dialect.insert(table).values(rows)
    stale = table.c.window_start <= case((table.c.scope == bindparam("scope1"), _stamp("stale1")),
                                         else_=_stamp("stale2"))
    return Prepared(insert.on_conflict_do_update(index_elements=[table.c.scope, table.c.key], set_={
        "failures": case((stale, 1), else_=table.c.failures + 1),
        "window_start": case((stale, insert.excluded.window_start), else_=table.c.window_start),
        "expires_at": case((table.c.blocked_until > insert.excluded.expires_at, table.c.blocked_until),
                           else_=insert.excluded.expires_at),
    }).returning(table.c.scope, table.c.key, table.c.failures))


_UPSERT_TWO = {"sqlite": _upsert_two(sqlite), "postgresql": _upsert_two(postgresql)}
_BLOCK = Prepared(update(RATE_LIMIT).where(
    RATE_LIMIT.c.scope == bindparam("scope"), RATE_LIMIT.c.key == bindparam("key"),
    RATE_LIMIT.c.failures >= bindparam("max_failures")).values(
    failures=0, window_start=_stamp("now"), blocked_until=_stamp("blocked_until"), expires_at=_stamp("expires_at")))


PREFIX_KEY = "prefix:"  # client addresses never start so: one table, two kinds of budget


def guess_keys(address: str, token: str) -> tuple[str, str]:
    """The budgets a wrong token spends: its client address, and its public prefix as
    gateway/access/studios.py stores it (the kind, such as `gw_`, and six characters)."""
    kind = token[:token.index("_", 0, 5) + 1] if "_" in token[:5] else ""
    return address, PREFIX_KEY + token[:len(kind) + 6]


def _key(address: str) -> str:
    return address[:200]

