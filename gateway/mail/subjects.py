"""Subjects as threading compares them, and as a reply carries them.

Guests' clients prefix replies and forwards in their own language ("AW:", "WG:", "Rif:"), and
some number them; the subject fallback of the threader and the subject of our replies both
need the subject without that noise, and without piling prefixes up.
"""
from __future__ import annotations

import re

# Reply and forward prefixes of the clients our guests use (English, German, and a few more
# that travel through German mailboxes), optionally numbered ("Re[2]:", "AW(3):"). The spaces
# before a number belong to its optional group, so no run of spaces can be split two ways
# (quadratic backtracking on "re" followed by a long run of spaces).
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|aw|antw|antwort|wg|fw|fwd|weitergeleitet|sv|vs|r|rif|tr|ynt|odp)"
    r"(?:\s*(?:\[\d+\]|\(\d+\)))?\s*:\s*)+",
    re.IGNORECASE,
)


def normalize_subject(subject: str) -> str:
    """Subject key for the fallback: reply/forward prefixes, list tags and spacing removed."""
    subject = re.sub(r"\s+", " ", subject or "").strip()
    previous = None
    while previous != subject:
        previous = subject
        subject = _PREFIX_RE.sub("", subject)
        subject = re.sub(r"^\[[^\]]{1,40}\]\s*", "", subject)  # "[Studio] Re: ..."
    return subject.casefold()[:200]


def reply_subject(subject: str) -> str:
    """`Re: <original>` without piling up prefixes."""
    stripped = _PREFIX_RE.sub("", subject or "").strip()
    return f"Re: {stripped}" if stripped else "Re:"
