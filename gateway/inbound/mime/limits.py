"""The caps that keep one parse cheap, whatever the bytes.

Every limit is enforced while the tree is built and walked, so hostile input costs bounded
time and memory, and every limit hit is written to ``ParsedMessage.defects``. ``Limits`` is
the budget of one parse (parts counted, depth checked, each limit noted once); ``precheck``
counts bytes before any parser runs and routes mail that would sink flanker or both parsers.

The modules that enforce a cap import it by name, so a test that changes a cap patches it in
the module that reads it (``body.MAX_ATTACHMENTS``), not here or on the package.
"""
from __future__ import annotations

import re

MAX_ATTACHMENTS = 100
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
MAX_DEPTH = 50                  # MIME nesting we descend into
MAX_PARTS = 1_000               # parts we look at, all levels together
MAX_HEADERS = 500               # top-level headers kept in ParsedMessage.headers
MAX_HEADER_LINES_SCANNED = 100_000
MAX_HEADER_VALUE_CHARS = 64 * 1024
MAX_REFERENCES = 100
MAX_ADDRESSES = 500             # per address header
MAX_TEXT_CHARS = 2_000_000
MAX_HTML_CHARS = 5_000_000
# flanker's scanner gives up after 5,000 tokens ("Too many parts") and recurses once per
# nesting level; both stdlib and flanker hit RecursionError around 1,000 levels. These
# cheap byte counts let us skip parsers that are bound to fail on such input.
PRECHECK_MAX_BOUNDARY_LINES = 5_000
PRECHECK_MAX_MULTIPART_HEADERS = 200


class Limits:
    """Counts parts while a tree is built and records the first hit of each limit."""

    def __init__(self, defects: list[str]) -> None:
        self.parts = 0
        self.defects = defects
        self.hit: set[str] = set()

    def take_part(self) -> bool:
        self.parts += 1
        if self.parts > MAX_PARTS:
            self._note("parts", f"more than {MAX_PARTS} MIME parts; the rest are ignored")
            return False
        return True

    def deep_enough(self, depth: int) -> bool:
        if depth >= MAX_DEPTH:
            self._note("depth", f"MIME nesting deeper than {MAX_DEPTH}; deeper parts ignored")
            return True
        return False

    def _note(self, key: str, text: str) -> None:
        if key not in self.hit:
            self.hit.add(key)
            self.defects.append(text)


_BOUNDARY_LINE = re.compile(rb"^--", re.MULTILINE)
_MULTIPART_HEADER = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)?multipart/",
                               re.MULTILINE | re.IGNORECASE)


def precheck(raw: bytes) -> str | None:
    """Cheap counts that predict both parsers failing or flanker giving up.

    Returns "headers-only", "stdlib" or None (try flanker).
    """
    # Plain substring counts (C speed) bound the regex counts from above: almost every mail is
    # far below both limits and needs no regex scan at all.
    if (raw.lower().count(b"multipart/") <= PRECHECK_MAX_MULTIPART_HEADERS
            and raw.count(b"--") <= PRECHECK_MAX_BOUNDARY_LINES):
        return None
    multiparts = sum(1 for _ in zip(range(PRECHECK_MAX_MULTIPART_HEADERS + 1),
                                    _MULTIPART_HEADER.finditer(raw)))
    if multiparts > PRECHECK_MAX_MULTIPART_HEADERS:
        return "headers-only"
    boundaries = sum(1 for _ in zip(range(PRECHECK_MAX_BOUNDARY_LINES + 1),
                                    _BOUNDARY_LINE.finditer(raw)))
    if boundaries > PRECHECK_MAX_BOUNDARY_LINES:
        return "stdlib"
    return None
