"""SQLite writers of several processes of one database take turns on a file lock, not in SQLite's busy handler.

SQLite lets one writer in at a time. A writer that finds the lock held retries in SQLite's busy
handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ... up to 100 ms between tries whatever happens
meanwhile: `gateway serve`'s two worker children, threading the same backlog, each spent
0.55–0.75 s of a 3 s run waiting in BEGIN IMMEDIATE (bench/smtp_ingest.py, 20×150, 57 waits over
half a millisecond each, the longest 141 ms), while the lock they waited for was held a few
milliseconds at a time. Within one process `store.db.write_tx` already queues writers on a
lock; across processes they now queue on an advisory `flock` of a file beside the database,
`<database>-writers`, tried every 0.1–1 ms, so a writer starts within a millisecond of the
previous one's COMMIT.

Only the file lock is new: the SQLite lock and its busy timeout still decide, so a writer that
does not take this lock (the acceptor's group commit, which must never wait on the event loop,
or an older version's process) is as safe as before, and the kernel drops the lock of a process
that dies. A writer gives up after the engine's busy timeout, as SQLite's busy handler would.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from gateway.settings import PRIVATE_FILE_MODE

SUFFIX = "-writers"
_FIRST_PAUSE = 0.0001
_LONGEST_PAUSE = 0.001


class ProcessWriters:
    """The file lock of one SQLite database, held by at most one thread of this process.

    Callers hold the process's write lock (an RLock) around `acquire`/`release`, so only one
    thread uses it at a time; `_depth` lets a nested write_tx of the same thread pass through
    (a flock taken twice on one file is one lock, and the inner release would drop it).
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + SUFFIX)
        self._fd: int | None = None
        self._depth = 0

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        return self._fd

    def acquire(self, timeout: float) -> bool:
        """Take the lock within `timeout` seconds; False if another process held it all along."""
        if self._depth:
            self._depth += 1
            return True
        fd = self._file()
        deadline = time.monotonic() + timeout
        pause = _FIRST_PAUSE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(pause, left))
                pause = min(pause * 2, _LONGEST_PAUSE)
        self._depth = 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


_by_path: dict[Path, ProcessWriters] = {}
_guard = threading.Lock()


def writers_of(database: Path) -> ProcessWriters:
    """This process's one ProcessWriters for the database file (one open file per process)."""
    key = database.resolve()
    with _guard:
        found = _by_path.get(key)
        if found is None:
            found = _by_path[key] = ProcessWriters(key)
        return found
