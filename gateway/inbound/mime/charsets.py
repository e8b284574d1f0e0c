"""Bytes to text: charsets, RFC 2047 encoded words, RFC 2231 parameters, transfer encodings.

One documented chain for all three parser paths (declared charset, UTF-8, CP-1252, Latin-1),
so a message reads the same whichever parser built the tree. Header and body text travels as
a "byte view" (bytes decoded as Latin-1, see ``view_to_bytes``) until it is decoded here.
"""
from __future__ import annotations

import binascii
import codecs
import email.utils
import quopri
import re
from typing import Any

# ------------------------------------------------------------------ charset decoding

# WHATWG Encoding Standard: mail and web clients label CP-1252 text as ISO-8859-1 or
# US-ASCII; bytes 0x80-0x9F are smart quotes and the euro sign, never C1 controls.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252", "ansi_x3.4-1968": "cp1252",
    "utf8": "utf-8", "utf_8": "utf-8", "unicode-1-1-utf-8": "utf-8",
    "x-sjis": "shift_jis", "sjis": "shift_jis", "ks_c_5601-1987": "cp949", "gb2312": "gb18030",
    "gbk": "gb18030", "windows-874": "cp874",
}


def _normalise_charset(charset: str | None) -> str | None:
    """Map a declared charset label to a Python text codec name, or None if unusable.

    Labels arrive quoted, padded, with RFC 2231 language suffixes ("utf-8*de") or
    spelled oddly ("UTF8", "x-unknown"). Only text codecs are accepted: Python's codec
    registry also knows "zlib", "base64" and "rot13", which a message must not select.
    """
    if not charset:
        return None
    label = charset.strip().strip("\"'").split("*", 1)[0].strip().lower()
    if not label or len(label) > 40:
        return None
    label = _CHARSET_ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Decode with the declared charset, then UTF-8, then CP-1252, then Latin-1.

    Latin-1 maps every byte, so this never raises; CP-1252 comes before it because
    Windows mail that lies about its charset is far more common than real C1 controls.
    """
    tried: set[str] = set()
    for candidate in (_normalise_charset(charset), "utf-8", "cp1252"):
        if candidate is None or candidate in tried:
            continue
        tried.add(candidate)
        try:
            return data.decode(candidate)
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
    return data.decode("latin-1")


def view_to_bytes(view: str) -> bytes:
    """Header and body text is carried as a "byte view": bytes decoded as Latin-1.

    That keeps 8-bit header bytes (RFC 6532 UTF-8 headers, or raw CP-1252 from old
    clients) intact until we know how to decode them. The stdlib parser hands us 8-bit
    bytes as surrogate escapes (U+DC80..U+DCFF); surrogateescape maps them back.
    """
    try:
        return view.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return view.encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------- header decoding

# RFC 2047 section 2: =?charset?encoding?encoded-text?= ; RFC 2231 section 5 allows
# "charset*language". We are lenient about spaces and length (real mail breaks both).
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([qQbB])\?([^?]*)\?=")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _decode_q(text: str) -> bytes:
    # RFC 2047 section 4.2: "_" is always 0x20 in the Q encoding.
    return binascii.a2b_qp(view_to_bytes(text.replace("_", " ")), header=False)


def _decode_b(text: str) -> bytes:
    data = re.sub(r"[^A-Za-z0-9+/]", "", text)
    data = data[: len(data) - (len(data) % 4 == 1)]  # one dangling char can never decode
    data += "=" * (-len(data) % 4)
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return b""


def decode_header_value(view: str) -> str:
    """Decode one header value (byte view) to text with CR/LF removed.

    RFC 5322 section 2.2.3: unfolding removes CRLF before whitespace. RFC 2047 section
    6.2: whitespace between two adjacent encoded-words is not displayed. Adjacent words
    in one charset are joined as bytes before decoding, because some encoders split a
    multi-byte UTF-8 character across two words.
    """
    view = view.replace("\r", "").replace("\n", "")
    if view.isascii() and "=?" not in view:
        # Most header values: no encoded-word and no 8-bit byte, so the decoding chain
        # would hand back the same characters (ASCII reads alike in every charset we try).
        return _CONTROL_CHARS.sub("", view.replace("\t", " ")).strip()
    return _decode_words(view)


def _decode_words(view: str) -> str:
    """decode_header_value for an unfolded value that may hold encoded-words or 8-bit bytes."""
    chunks: list[tuple[bytes, str | None, bool]] = []   # (bytes, charset, is_encoded)
    pos = 0
    for match in _ENCODED_WORD.finditer(view):
        between = view[pos:match.start()]
        if between and not (between.isspace() and chunks and chunks[-1][2]):
            chunks.append((view_to_bytes(between), None, False))
        charset = match.group(1)
        enc = match.group(2).lower()
        data = _decode_q(match.group(3)) if enc == "q" else _decode_b(match.group(3))
        if chunks and chunks[-1][2] and chunks[-1][1] == charset:
            chunks[-1] = (chunks[-1][0] + data, charset, True)
        else:
            chunks.append((data, charset, True))
        pos = match.end()
    if pos < len(view):
        chunks.append((view_to_bytes(view[pos:]), None, False))
    text = "".join(decode_bytes(data, charset) for data, charset, _ in chunks)
    return _CONTROL_CHARS.sub("", text.replace("\t", " ")).strip()


# ------------------------------------------------- transfer encodings and parameters

def decode_transfer(body: bytes, cte: str) -> bytes:
    """RFC 2045 section 6: undo base64 / quoted-printable, leniently."""
    cte = cte.strip().lower()
    if cte == "base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
        cleaned = cleaned[: len(cleaned) - (len(cleaned) % 4 == 1)]
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            return binascii.a2b_base64(cleaned)
        except (binascii.Error, ValueError):
            return b""
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    return body


def param_text(value: Any) -> str:
    """A parameter from stdlib get_param: RFC 2231 triple or plain (maybe RFC 2047) text."""
    if isinstance(value, tuple) and len(value) == 3:
        charset, _lang, text = value
        return decode_bytes(view_to_bytes(str(text)), charset or None)
    if isinstance(value, str):
        # Outlook and Gmail put RFC 2047 words inside quoted filenames (RFC 2047 section
        # 5 forbids it; everyone decodes it anyway).
        return decode_header_value(email.utils.unquote(value))
    return ""
