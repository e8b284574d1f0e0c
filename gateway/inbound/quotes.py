"""Reply splitting: keep what the guest wrote now, drop quoted history and signatures.

The studio reads replies in a messenger, where a full quoted thread under every message
is noise. Mail clients mark the start of quoted history in a handful of ways; we know the
common ones in German and English and cut at the earliest marker we find. The rule that
beats every pattern: never hand back an empty reply when the mail had words in it.
"""
from __future__ import annotations

import re

# Only lines this short are tried against the patterns; attribution lines are short,
# and it keeps a single multi-megabyte line cheap.
_MAX_MARKER_LINE = 400

# Gmail "On Mon, 1 Jan 2024 at 10:00, X <x@y> wrote:", Apple Mail "On 1 Jan 2024, at
# 10:00, X <x@y> wrote:", Thunderbird "On 01.01.24 10:00, X wrote:". A digit is required
# (all of them carry a date) so "On Monday I wrote:" in prose survives more often.
_ATTRIBUTION_EN = re.compile(r"^On\s(?=[^\n]*\d)[^\n]{1,300}?\s(?:wrote|writes)\s?:\s*$",
                             re.IGNORECASE)
# Gmail "Am Mo., 1. Jan. 2024 um 10:00 Uhr schrieb X <x@y>:", Apple Mail "Am 01.01.2024
# um 10:00 schrieb X <x@y>:", Thunderbird "Am 01.01.24 um 10:00 schrieb X:".
_ATTRIBUTION_DE = re.compile(r"^Am\s(?=[^\n]*\d)[^\n]{1,300}?\sschrieb\s?[^\n]{0,300}:\s*$",
                             re.IGNORECASE)
# Outlook's plain-text separator, English and German.
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Original-Nachricht)\s*-{2,}\s*$",
    re.IGNORECASE)
# Outlook's header block: "From:/Von:" followed closely by "Sent:/Gesendet:" (or
# "Date:/Datum:") and "Subject:/Betreff:". Bold markers come from HTML-to-text.
_HEADER_FROM = re.compile(r"^\s*\*?(?:From|Von)\s?:\*?\s", re.IGNORECASE)
_HEADER_SENT = re.compile(r"^\s*\*?(?:Sent|Date|Gesendet|Datum)\s?:\*?\s", re.IGNORECASE)
_HEADER_SUBJECT = re.compile(r"^\s*\*?(?:Subject|Betreff)\s?:\*?", re.IGNORECASE)
_UNDERSCORES = re.compile(r"^\s*_{10,}\s*$")
# RFC 3676 section 4.3: the signature separator is "-- " alone on a line; many people
# type it without the space, which we accept as well.
_SIGNATURE = re.compile(r"^-- ?$")
_MOBILE_FOOTER = re.compile(
    r"^\s*(?:Sent from my [\w\- ]{1,40}|Sent from (?:Mail|Outlook|Yahoo Mail) for [\w ]{1,40}"
    r"|Get Outlook for [\w ]{1,40}|Von meinem [\w\- ]{1,40} gesendet"
    r"|Gesendet von meinem [\w\- ]{1,40}|Gesendet von (?:Mail|Outlook) für [\w ]{1,40}"
    r"|Von (?:Mail|Outlook) für [\w ]{1,40} gesendet)[.!]?\s*$",
    re.IGNORECASE)


# How every marker above begins, once leading whitespace is stripped (re's \s and str.strip()
# agree on what whitespace is, and IGNORECASE folds as the patterns do): most lines of a mail
# start otherwise and are passed by this one match instead of five.
_MAYBE_MARKER = re.compile(r"-|\*|from|von|sent|get|gesendet|on |am ", re.IGNORECASE)


def _is_attribution(line: str) -> bool:
    return bool(_ATTRIBUTION_EN.match(line) or _ATTRIBUTION_DE.match(line))


def _outlook_header_block(lines: list[str], index: int) -> bool:
    """True when lines[index] starts an Outlook "From/Sent/To/Subject" block."""
    if not _HEADER_FROM.match(lines[index]):
        return False
    window = lines[index + 1:index + 7]
    return any(_HEADER_SENT.match(line) for line in window) and \
        any(_HEADER_SUBJECT.match(line) for line in window)


def _first_marker(lines: list[str], *, prefilter: bool = True) -> int:
    """Index of the first line where quoted history, signature or footer begins.

    `prefilter=False` tries every pattern on every line: the reference the tests hold the
    prefiltered loop to."""
    for i, line in enumerate(lines):
        if len(line) > _MAX_MARKER_LINE:
            continue
        stripped = line.strip()
        if prefilter and not _MAYBE_MARKER.match(stripped):
            continue
        if _SIGNATURE.match(line.rstrip("\t")) or _MOBILE_FOOTER.match(stripped) \
                or _ORIGINAL_MESSAGE.match(stripped):
            return i
        if stripped.startswith(("On ", "Am ", "on ", "am ")):
            if _is_attribution(stripped):
                return i
            # Gmail wraps a long attribution over two (rarely three) lines, often
            # right before the "<address>:" part.
            for extra in (1, 2):
                joined = " ".join(part.strip() for part in lines[i:i + extra + 1])
                if len(joined) <= 2 * _MAX_MARKER_LINE and _is_attribution(joined):
                    return i
        if _outlook_header_block(lines, i):
            # Outlook draws a line of underscores right above the block.
            if i > 0 and _UNDERSCORES.match(lines[i - 1]):
                return i - 1
            if i > 1 and not lines[i - 1].strip() and _UNDERSCORES.match(lines[i - 2]):
                return i - 2
            return i
    return len(lines)


def split_reply(text: str) -> str:
    """The new part of a reply, without quoted history, signature or mobile footer.

    If stripping leaves nothing (the whole mail is a quote, or a bare forward), the
    original text is returned stripped: an empty message in the studio's messenger
    would hide that the guest wrote at all.
    """
    if not text or not text.strip():
        return ""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept = lines[:_first_marker(lines)]
    # Quoted lines (RFC 3676 section 4.5: "> " prefix) at the end are history too;
    # quotes in the middle are inline answers and stay.
    while kept and (not kept[-1].strip() or kept[-1].lstrip().startswith(">")):
        kept.pop()
    result = "\n".join(kept).strip()
    return result if result else text.strip()
