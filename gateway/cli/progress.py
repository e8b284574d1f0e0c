"""A one-line progress display for long commands (backup, restore, purge), on a terminal only.

It writes to stderr, rewriting one line ("\\r" and ANSI "erase line", ECMA-48 EL), and erases it
when done, so the command's own output stays as it was. When stderr is not a terminal (cron, a
pipe, a log file) it writes nothing at all: scripts and logs see exactly the old output.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

ERASE_LINE = "\r\x1b[2K"


class Progress:
    def __init__(self, command: str, stream: TextIO | None = None) -> None:
        self.command = command
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, what: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        self.stream.write(f"{ERASE_LINE}{self.command}: {what} ({elapsed:.0f} s)")
        self.stream.flush()
        self.shown = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self.stream.write(ERASE_LINE)
            self.stream.flush()
