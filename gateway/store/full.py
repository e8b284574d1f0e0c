"""Telling "the disk is full" from other storage trouble, and remembering that writes fail.

A full disk is temporary trouble like any other (the sender keeps the mail), but it has its
own answer: SMTP's `452 4.3.1` "insufficient system storage" (RFC 3463 X.3.1, RFC 5321
4.2.3) rather than a generic `451 4.3.0`, so a sender's logs and the operator's say what
is wrong, and `/readyz` reports it: reads keep working while every write fails, so "SELECT 1"
alone said ok.

The three ways it arrives, all recognised through the exception chain (SQLAlchemy wraps the
driver's error, which may wrap the OS's):
- SQLite: SQLITE_FULL (13), "database or disk is full", on a full disk or at
  `PRAGMA max_page_count`;
- PostgreSQL: SQLSTATE 53100 disk_full (psycopg's `DiskFull`), "could not extend file ...: No
  space left on device", also 53000 insufficient_resources when it names the disk;
- the OS: OSError ENOSPC (no space) or EDQUOT (quota), e.g. writing a file beside the database.
"""
from __future__ import annotations

import errno
import threading
import time

SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_OS_FULL = (errno.ENOSPC, errno.EDQUOT)
_MESSAGES = ("database or disk is full", "could not extend file", "no space left on device",
             "disk quota exceeded")


def is_storage_full(error: BaseException) -> bool:
    """Whether `error`, or anything in its chain, says the storage has no room left."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _OS_FULL:
            return True
        if getattr(current, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        if getattr(current, "sqlstate", None) == _PG_DISK_FULL:
            return True
        if any(text in str(current).lower() for text in _MESSAGES):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


class WriteHealth:
    """Whether this process's latest write of received mail failed for want of space.

    The acceptor reports each group commit here; `/readyz` asks. A failure counts until a
    write succeeds again, or for `window` seconds when nothing is written in between (so an
    idle gateway whose disk has been cleaned up says ready again, instead of waiting for mail
    that a load balancer no longer sends it).
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._failed_at: float | None = None
        self._reason = ""

    def succeeded(self) -> None:
        if self._failed_at is not None:
            with self._lock:
                self._failed_at = None

    def failed(self, reason: str) -> None:
        with self._lock:
            self._failed_at = time.monotonic()
            self._reason = reason

    def failing(self) -> str | None:
        """The reason writes are failing now, or None."""
        with self._lock:
            if self._failed_at is None or time.monotonic() - self._failed_at >= self.window:
                return None
            return self._reason
