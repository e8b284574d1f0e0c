"""MIME parsing: the only module that imports flanker.

CONTRACT (other modules rely on it; keep the names):
    parse(raw: bytes) -> ParsedMessage   never raises for any input bytes.

How the work is split, and why:

* flanker decides the MIME *structure* (which boundary closes which part). It is the
  product's primary parser; it is also strict, so on any flanker exception we fall back
  to the stdlib ``email`` parser (policy ``compat32``: it records defects instead of
  raising, and it does not run the modern header-object parser, which is slower and
  raises on malformed headers). If even that fails, we return what the top header
  block says (``parser="headers-only"``).
* Header text, parameters (RFC 2231), transfer encodings and charsets are decoded by the
  shared helpers below for all three paths. flanker's own decoders guess charsets with
  chardet and mangle RFC 2231 values in ISO-8859-1 ("M\ufffdller.pdf"); ours follow one
  documented chain (declared charset, UTF-8, CP-1252, Latin-1), so a message reads the
  same whichever parser built the tree.
* Every limit below is enforced while walking, so hostile input costs bounded time and
  memory, and every limit hit is written to ``defects``.
"""
from __future__ import annotations

import binascii
import codecs
import email.message
import email.policy
import email.utils
import functools
import hashlib
import html as html_lib
import logging
import quopri
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from typing import Any

import nh3

from gateway.mail.files import sanitise_filename


def _import_flanker() -> Any:
    """Import flanker once per process, without noise on stderr and without writes.

    flanker pulls in webob (``import cgi``, deprecated in 3.11) and uses ``imghdr``, which
    emit DeprecationWarnings at import that a ``filterwarnings = error`` test suite turns
    into errors. Its address grammar is built with ply at import: if the shipped
    parsetab modules do not match the installed ply, ply logs "Symbol ... is unreachable"
    warnings through flanker's loggers and tries to write new parsetab files into
    site-packages. We import with those warnings ignored, the two ply loggers raised to
    ERROR and ``write_tables`` forced off, then restore everything.
    """
    import ply.yacc  # flanker's dependency; patched only for the duration of the import

    quiet = [
        logging.getLogger("flanker.addresslib._parser.parser"),
        logging.getLogger("flanker.addresslib._parser.lexer"),
    ]
    levels = [lg.level for lg in quiet]
    original_yacc = ply.yacc.yacc
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        ply.yacc.yacc = functools.partial(original_yacc, write_tables=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)
            import flanker.addresslib.address  # noqa: F401  (flanker.mime imports it lazily)
            import flanker.mime
    finally:
        ply.yacc.yacc = original_yacc
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return flanker.mime


_flanker_mime = _import_flanker()

# --------------------------------------------------------------------------- limits
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


@dataclass(frozen=True)
class Address:
    email: str          # lower-cased domain, local part as given; "" if unparseable
    name: str = ""      # decoded display name (RFC 2047), "" if none


@dataclass
class ParsedAttachment:
    filename: str       # decoded (RFC 2231 / 2047), sanitised of path separators and control chars
    content_type: str   # e.g. "image/jpeg", lower-case
    data: bytes
    inline: bool = False
    content_id: str | None = None   # without angle brackets

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class ParsedMessage:
    from_: Address | None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    subject: str = ""
    date: datetime | None = None            # timezone-aware UTC
    message_id: str | None = None           # without angle brackets
    in_reply_to: list[str] = field(default_factory=list)   # ids without angle brackets
    references: list[str] = field(default_factory=list)    # ids without angle brackets, in order
    text: str = ""                          # full body text (text/plain preferred, else HTML->text)
    html: str | None = None                 # sanitised HTML (nh3), None if the mail had no HTML
    attachments: list[ParsedAttachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)  # top-level, decoded, in order
    content_type: str = "text/plain"        # top-level, lower-case
    dsn_original_message_ids: list[str] = field(default_factory=list)  # for multipart/report bounces
    dsn_failed_recipients: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    parser: str = "flanker"                 # "flanker" | "stdlib" | "headers-only"

    def header(self, name: str) -> str | None:
        """First value of a top-level header, case-insensitive."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


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


def _view_to_bytes(view: str) -> bytes:
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
    return binascii.a2b_qp(_view_to_bytes(text.replace("_", " ")), header=False)


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
            chunks.append((_view_to_bytes(between), None, False))
        charset = match.group(1)
        enc = match.group(2).lower()
        data = _decode_q(match.group(3)) if enc == "q" else _decode_b(match.group(3))
        if chunks and chunks[-1][2] and chunks[-1][1] == charset:
            chunks[-1] = (chunks[-1][0] + data, charset, True)
        else:
            chunks.append((data, charset, True))
        pos = match.end()
    if pos < len(view):
        chunks.append((_view_to_bytes(view[pos:]), None, False))
    text = "".join(decode_bytes(data, charset) for data, charset, _ in chunks)
    return _CONTROL_CHARS.sub("", text.replace("\t", " ")).strip()


def _unfold(view: str) -> str:
    return view.replace("\r", "").replace("\n", "")


# ------------------------------------------------------------- header block split

_HEADER_LINE = re.compile(rb"^([!-9;-~]+)[ \t]*:")


@dataclass
class _HeaderBlock:
    headers: list[tuple[str, str]]      # (name, value as byte view, unfolded)
    body: bytes
    defects: list[str]


def _iter_lines(data: bytes, start: int = 0) -> Iterator[tuple[int, int]]:
    """Yield (line_start, next_line_start) without splitting the whole buffer."""
    pos = start
    size = len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        yield pos, end
        pos = end


def split_header_block(data: bytes, max_lines: int = MAX_HEADER_LINES_SCANNED) -> _HeaderBlock:
    """Split a header block from its body, tolerating what real mail does.

    An mbox "From " line at the top is skipped; a line that is neither a header nor a
    continuation ends the block (the stdlib records this as
    MissingHeaderBodySeparatorDefect); a continuation line before any header is dropped.
    Values longer than MAX_HEADER_VALUE_CHARS are cut, so a 10 MB "header" stays cheap.
    """
    headers: list[tuple[str, list[bytes], int]] = []
    defects: list[str] = []
    body_start = len(data)
    count = 0
    truncated: set[str] = set()
    for start, end in _iter_lines(data):
        line = data[start:end]
        stripped = line.rstrip(b"\r\n")
        if not stripped:
            body_start = end
            break
        count += 1
        if count > max_lines:
            defects.append(f"header block longer than {max_lines} lines; rest ignored")
            next_blank = re.search(rb"\r?\n\r?\n", data[start:])
            body_start = start + next_blank.end() if next_blank else len(data)
            break
        if stripped[:1] in (b" ", b"\t"):
            if headers:
                name, parts, size = headers[-1]
                if size < MAX_HEADER_VALUE_CHARS:
                    piece = stripped[: MAX_HEADER_VALUE_CHARS - size]
                    parts.append(piece)
                    headers[-1] = (name, parts, size + len(piece))
                else:
                    truncated.add(name)
            continue
        if count == 1 and stripped.startswith(b"From "):
            continue  # mbox separator line, not a header (RFC 4155)
        match = _HEADER_LINE.match(stripped)
        if not match:
            defects.append("missing blank line between headers and body")
            body_start = start
            break
        name = match.group(1).decode("ascii")
        value = stripped[match.end():].lstrip(b" \t")
        if len(value) > MAX_HEADER_VALUE_CHARS:
            truncated.add(name)
            value = value[:MAX_HEADER_VALUE_CHARS]
        headers.append((name, [value], len(value)))
    for name in sorted(truncated):
        defects.append(f"header {name} longer than {MAX_HEADER_VALUE_CHARS} chars; truncated")
    return _HeaderBlock(
        headers=[(name, b" ".join(p.strip(b" \t") for p in parts).decode("latin-1"))
                 for name, parts, _ in headers],
        body=data[body_start:],
        defects=defects,
    )


# ----------------------------------------------------------------- neutral tree

@dataclass
class _Node:
    """One MIME part, whichever parser found it.

    ``headers`` are the part's own headers as byte views; ``body`` is the raw body,
    still transfer-encoded, for leaves; ``dsn_blocks`` holds the field blocks of a
    message/delivery-status part (RFC 3464 section 2.1).
    """
    content_type: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    children: list[_Node] = field(default_factory=list)
    dsn_blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    _params: email.message.Message | None = None

    @property
    def params(self) -> email.message.Message:
        """A header-only stdlib Message, used for its RFC 2045/2231 parameter parsing."""
        if self._params is None:
            msg = email.message.Message()
            for name, value in self.headers:
                if name.lower() in ("content-type", "content-disposition", "content-id",
                                    "content-transfer-encoding"):
                    msg[name] = value
            self._params = msg
        return self._params


# Parts whose body is kept whole instead of being walked into: an embedded message is
# stored as one .eml attachment (its own text must not become the reply text), and the
# DSN parts are read field by field.
_LEAF_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers",
               "message/delivery-status", "message/global-delivery-status",
               "message/global-headers")


class _Limits:
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


def _dsn_blocks_from_text(body: bytes) -> list[list[tuple[str, str]]]:
    """RFC 3464 section 2.1: per-message fields, blank line, per-recipient blocks."""
    blocks = []
    rest = body.lstrip(b"\r\n")
    for _ in range(MAX_PARTS):
        if not rest.strip():
            break
        block = split_header_block(rest, max_lines=1_000)
        if not block.headers:
            break
        blocks.append(block.headers)
        rest = block.body.lstrip(b"\r\n")
    return blocks


def _push_children(stack: list[Any], node: "_Node", parts: Iterable[Any], depth: int, limits: "_Limits") -> None:
    """Queue a multipart's children for the iterative walk, within the part budget."""
    children = []
    for child in parts:
        if not limits.take_part():
            break
        child_node = _Node(content_type="", headers=[])
        children.append(child_node)
        stack.append((child, child_node, depth + 1))
    node.children = children
    # The stack is LIFO; reverse the pushes so document order is kept.
    stack[len(stack) - len(children):] = stack[len(stack) - len(children):][::-1]


def _flanker_tree(raw: bytes, limits: _Limits, top: _HeaderBlock | None = None) -> _Node:
    """Parse with flanker and convert its tree to _Node, iteratively and bounded.

    We hand flanker the Latin-1 view of the bytes: flanker otherwise decodes the whole
    message with chardet when it is not UTF-8, which is slow on large binary input and
    loses the original bytes of 8-bit parts. Each leaf's raw text comes from
    ``MimePart.to_string()``, which for an unchanged part is its original text. A single-part
    message is its own leaf: its header block is `top`, already split by the caller, when the
    bytes are the same.
    """
    root_part = _flanker_mime.from_string(raw.decode("latin-1"))
    root = _Node(content_type="", headers=[])
    stack: list[tuple[Any, _Node, int]] = [(root_part, root, 0)]
    while stack:
        part, node, depth = stack.pop()
        ctype = part.content_type
        node.content_type = f"{ctype.main}/{ctype.sub}".lower()
        if node.content_type.startswith("multipart/") and node.content_type not in _LEAF_TYPES:
            if limits.deep_enough(depth + 1):
                continue
            _push_children(stack, node, part.parts, depth, limits)
            continue
        data = _view_to_bytes(part.to_string())
        block = top if depth == 0 and top is not None and data == raw else split_header_block(data)
        node.headers = block.headers
        node.body = block.body
        limits.defects.extend(block.defects)
        if node.content_type in ("message/delivery-status", "message/global-delivery-status"):
            node.dsn_blocks = _dsn_blocks_from_text(block.body)
    return root


def _stdlib_tree(raw: bytes, limits: _Limits) -> tuple[_Node, list[str]]:
    """Parse with the stdlib (compat32) and convert to _Node; returns stdlib's defects."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    found: list[str] = []
    root = _Node(content_type="", headers=[])
    stack: list[tuple[email.message.Message, _Node, int]] = [(msg, root, 0)]
    while stack:
        part, node, depth = stack.pop()
        found.extend(type(d).__name__ for d in part.defects)
        node.content_type = part.get_content_type().lower()
        node.headers = [(k, _stdlib_view(v)) for k, v in part.raw_items()]
        payload = part.get_payload()
        # compat32 parses every message/* body as an embedded message; all of them are
        # leaves for us, like the types in _LEAF_TYPES.
        if node.content_type.startswith("message/") or not isinstance(payload, list):
            if node.content_type in ("message/delivery-status",
                                     "message/global-delivery-status") and isinstance(payload, list):
                node.dsn_blocks = [[(k, _stdlib_view(v)) for k, v in block.raw_items()]
                                   for block in payload[:MAX_PARTS]]
            elif isinstance(payload, list):
                node.body = b"".join(_stdlib_message_bytes(p) for p in payload[:1])
            else:
                node.body = _view_to_bytes(payload) if isinstance(payload, str) else b""
            continue
        if limits.deep_enough(depth + 1):
            continue
        _push_children(stack, node, payload, depth, limits)
    return root, found


def _stdlib_view(value: Any) -> str:
    """compat32 keeps 8-bit header bytes as surrogate escapes; make them a byte view."""
    return _view_to_bytes(str(value)).decode("latin-1")


def _stdlib_message_bytes(msg: Any) -> bytes:
    try:
        return bytes(msg.as_bytes(policy=email.policy.compat32))
    except Exception:  # a broken embedded message must not lose the outer one
        return b""


# --------------------------------------------------------------- field helpers

_MSG_ID = re.compile(r"<([^<>]*)>")


def parse_message_ids(value: str, limit: int | None = None) -> list[str]:
    """Message ids from Message-ID / In-Reply-To / References (RFC 5322 section 3.6.4).

    Brackets are optional in practice; whitespace inside an id is folding noise. When a
    References list is capped we keep the first id (the thread root) and the newest
    ones (the direct parents), the two ends threading needs (jwz threading).
    """
    value = _unfold(value)
    if "<" in value:
        candidates = _MSG_ID.findall(value)
    else:
        candidates = [tok for tok in re.split(r"[\s,]+", value) if "@" in tok]
        if not candidates and value.strip() and len(value.split()) == 1:
            candidates = [value.strip()]
    ids: list[str] = []
    seen: set[str] = set()
    for cand in candidates:
        cleaned = "".join(cand.split()).strip("<>")
        if cleaned and cleaned not in seen and len(cleaned) <= 998:
            seen.add(cleaned)
            ids.append(cleaned)
    if limit is not None and len(ids) > limit:
        ids = ids[:1] + ids[-(limit - 1):]
    return ids


# `Name <local@domain>` or a bare address, made of atoms only (no quotes, comments, groups or
# dots in the name): what most From and To headers are, and read by the stdlib's
# getaddresses exactly as these groups split it (checked on 300,000 mutated samples), at a
# fraction of its cost. Anything else goes to getaddresses.
_PLAIN_NAME = r"[A-Za-z0-9=?_+\-]+(?: [A-Za-z0-9=?_+\-]+)*"
_PLAIN_ADDR = r"[A-Za-z0-9_+\-]+(?:\.[A-Za-z0-9_+\-]+)*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*"
_PLAIN_ADDRESS = re.compile(rf"[ \t]*(?:({_PLAIN_NAME}) <({_PLAIN_ADDR})>|({_PLAIN_ADDR}))[ \t]*")


def _address_pairs(value: str) -> list[tuple[str, str]]:
    plain = _PLAIN_ADDRESS.fullmatch(value)
    if plain is not None:
        return [(plain.group(1), plain.group(2))] if plain.group(2) else [("", plain.group(3))]
    return email.utils.getaddresses([value])


def parse_addresses(views: list[str]) -> list[Address]:
    """Addresses with decoded display names; the domain is lower-cased (RFC 5321 2.4)."""
    out: list[Address] = []
    for view in views:
        try:
            pairs = _address_pairs(_unfold(view))
        except Exception:  # stdlib's address parser has raised on odd input before
            pairs = []
        for name, addr in pairs:
            if len(out) >= MAX_ADDRESSES:
                return out
            name_text = decode_header_value(name)
            addr_text = decode_header_value(addr).strip("<> ")
            if not name_text and not addr_text:
                continue
            if "@" in addr_text:
                local, _, domain = addr_text.rpartition("@")
                addr_text = f"{local}@{domain.lower()}"
            out.append(Address(email=addr_text, name=name_text))
    return out


def parse_date(value: str) -> datetime | None:
    """RFC 5322 date to aware UTC; "-0000" (zone unknown, section 3.3) is taken as UTC."""
    try:
        parsed = email.utils.parsedate_to_datetime(_unfold(value).strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    try:
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _decode_transfer(body: bytes, cte: str) -> bytes:
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


def _param_text(value: Any) -> str:
    """A parameter from stdlib get_param: RFC 2231 triple or plain (maybe RFC 2047) text."""
    if isinstance(value, tuple) and len(value) == 3:
        charset, _lang, text = value
        return decode_bytes(_view_to_bytes(str(text)), charset or None)
    if isinstance(value, str):
        # Outlook and Gmail put RFC 2047 words inside quoted filenames (RFC 2047 section
        # 5 forbids it; everyone decodes it anyway).
        return decode_header_value(email.utils.unquote(value))
    return ""


# ----------------------------------------------------------------- HTML to text

class _HTMLText(HTMLParser):
    """Readable text from HTML: blocks become lines, links keep their text.

    Block boundaries are written as sentinels and resolved at the end, so that
    "</li><li>" gives one line break and "</p><p>" one blank line, however the tags nest.
    """

    _SOFT = "\x01"        # line break from a block boundary (div, li, tr, h1...)
    _PARA = "\x02"        # paragraph break (p, blockquote, table, lists)
    _PRE_SPACE = "\ue000"  # a space inside <pre>, protected from whitespace collapsing
    _BLOCK = {"div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
              "header", "footer", "dd", "dt", "address", "hr"}
    _PARAGRAPH = {"p", "blockquote", "table", "ul", "ol", "pre"}
    _SKIP = {"script", "style", "head", "title", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def _boundary(self, tag: str) -> None:
        if tag in self._PARAGRAPH:
            self.parts.append(self._PARA)
        elif tag in self._BLOCK:
            self.parts.append(self._SOFT)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "br":
            self.parts.append("\n")
        else:
            self.pre += tag == "pre"
            self._boundary(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        else:
            self._boundary(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        else:
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self._boundary(tag)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            self.parts.append(data.replace(" ", self._PRE_SPACE))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        joined = "".join(self.parts).replace("\xa0", " ")
        joined = re.sub(r"[ \t]*(?:[\x01\x02][ \t]*)+",
                        lambda m: "\n\n" if self._PARA in m.group() else "\n", joined)
        lines = [line.strip().replace(self._PRE_SPACE, " ") for line in joined.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    """Readable text for HTML-only mail, with the stdlib parser (no new dependency)."""
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is lenient, but never let it sink a message
        return html_lib.unescape(re.sub(r"<[^>]*>", " ", markup)).strip()
    return parser.text()


# ----------------------------------------------------------------- extraction

_HTML_DROP_WITH_CONTENT = {"script", "style", "head", "title", "template", "noscript"}

def _fill_top_headers(result: ParsedMessage, top: _HeaderBlock) -> None:
    """Top-level fields come from our own header split of the raw bytes on every path,
    so they are identical whichever parser read the body."""
    result.defects.extend(top.defects)
    views: dict[str, list[str]] = {}
    for name, view in top.headers:
        views.setdefault(name.lower(), []).append(view)
    decoded: dict[str, str] = {}  # Subject and Date are wanted twice: in `headers` and as fields

    def decode(view: str) -> str:
        text = decoded.get(view)
        if text is None:
            text = decoded[view] = decode_header_value(view)
        return text

    for name, view in top.headers[:MAX_HEADERS]:
        result.headers.append((name, decode(view)))
    if len(top.headers) > MAX_HEADERS:
        result.defects.append(f"{len(top.headers)} top-level headers; kept the first {MAX_HEADERS}")
    senders = parse_addresses(views.get("from", [])[:1])
    result.from_ = senders[0] if senders else None
    result.to = parse_addresses(views.get("to", []))
    result.cc = parse_addresses(views.get("cc", []))
    result.reply_to = parse_addresses(views.get("reply-to", [])[:1])
    result.subject = decode(views["subject"][0]) if "subject" in views else ""
    result.date = parse_date(decode(views["date"][0])) if "date" in views else None
    ids = parse_message_ids(views["message-id"][0]) if "message-id" in views else []
    result.message_id = ids[0] if ids else None
    if "in-reply-to" in views:
        result.in_reply_to = parse_message_ids(views["in-reply-to"][0], limit=MAX_REFERENCES)
    if "references" in views:
        refs = parse_message_ids(" ".join(views["references"]))
        if len(refs) > MAX_REFERENCES:
            result.defects.append(f"{len(refs)} References; kept the first and last {MAX_REFERENCES - 1}")
            refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
        result.references = refs
    if "content-type" in views:
        msg = email.message.Message()
        msg["Content-Type"] = views["content-type"][0]
        result.content_type = msg.get_content_type().lower()


def _walk(root: _Node) -> Iterator[tuple[_Node, _Node | None, bool]]:
    """Yield (node, parent, inside multipart/report) in document order, iteratively."""
    stack: list[tuple[_Node, _Node | None, bool]] = [(root, None, False)]
    while stack:
        node, parent, in_report = stack.pop()
        yield node, parent, in_report
        child_report = in_report or node.content_type == "multipart/report"
        for child in reversed(node.children):
            stack.append((child, node, child_report))


def _fill_body(result: ParsedMessage, root: _Node) -> None:
    """Choose text and HTML, collect attachments and DSN data from the tree."""
    plain: list[tuple[str, _Node | None]] = []
    html_src: str | None = None
    for node, parent, in_report in _walk(root):
        if node.children or node.content_type.startswith("multipart/"):
            continue
        ctype = node.content_type
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            _fill_dsn_status(result, node)
            continue
        if in_report and ctype in ("text/rfc822-headers", "message/rfc822", "message/global",
                                   "message/global-headers"):
            block = split_header_block(node.body, max_lines=10_000)
            for name, view in block.headers:
                if name.lower() == "message-id":
                    for mid in parse_message_ids(view)[:1]:
                        if mid not in result.dsn_original_message_ids:
                            result.dsn_original_message_ids.append(mid)
                    break
            if ctype in ("text/rfc822-headers", "message/global-headers"):
                continue
        params = node.params
        disposition = (params.get_content_disposition() or "").lower()
        raw_name = params.get_param("filename", header="content-disposition")
        if raw_name is None:
            raw_name = params.get_param("name")
        filename = _param_text(raw_name) if raw_name is not None else ""
        cte = str(params.get("content-transfer-encoding", "") or "")
        cid_view = params.get("content-id")
        content_id = "".join(decode_header_value(str(cid_view)).split()).strip("<>") or None \
            if cid_view else None
        in_related = parent is not None and parent.content_type == "multipart/related"
        is_body_text = ctype in ("text/plain", "text/html") and disposition != "attachment" \
            and not filename
        if is_body_text:
            text = decode_bytes(_decode_transfer(node.body, cte), params.get_content_charset())
            if ctype == "text/plain":
                plain.append((text, parent))
            elif html_src is None:
                html_src = text
            continue
        _add_attachment(result, node, ctype, cte, filename, disposition, content_id, in_related)

    if plain:
        first_text, first_parent = plain[0]
        # Apple Mail sends "text, inline image, text" as siblings in multipart/mixed; the
        # guest's words are all of them, not just the part before the picture.
        texts = [first_text]
        if first_parent is not None and first_parent.content_type == "multipart/mixed":
            texts += [t for t, p in plain[1:] if p is first_parent]
        result.text = "\n".join(texts)
    elif html_src is not None:
        result.text = html_to_text(html_src[:MAX_HTML_CHARS])
    if html_src is not None:
        if len(html_src) > MAX_HTML_CHARS:
            result.defects.append(f"HTML longer than {MAX_HTML_CHARS} chars; truncated")
            html_src = html_src[:MAX_HTML_CHARS]
        # nh3 defaults (ammonia): an allow-list of tags and attributes, no on* handlers,
        # only http/https/mailto/... URL schemes. Besides script and style we drop the
        # content of head/title too: a title would otherwise show up as body text.
        result.html = nh3.clean(html_src, clean_content_tags=_HTML_DROP_WITH_CONTENT)
    if len(result.text) > MAX_TEXT_CHARS:
        result.defects.append(f"text longer than {MAX_TEXT_CHARS} chars; truncated")
        result.text = result.text[:MAX_TEXT_CHARS]
    # The CRLF before a boundary belongs to the boundary (RFC 2046 section 5.1.1); we
    # also drop other trailing blank lines, which no reader wants to see.
    result.text = result.text.replace("\r\n", "\n").replace("\r", "\n").rstrip()


def _add_attachment(result: ParsedMessage, node: _Node, ctype: str, cte: str, filename: str,
                    disposition: str, content_id: str | None, in_related: bool) -> None:
    if len(result.attachments) >= MAX_ATTACHMENTS:
        if not any(d.startswith("more than") and "attachments" in d for d in result.defects):
            result.defects.append(f"more than {MAX_ATTACHMENTS} attachments; the rest dropped")
        return
    # Estimate before decoding: base64 is 4 bytes for 3, so a 40 MB part is not decoded.
    estimate = len(node.body) * 3 // 4 if cte.strip().lower() == "base64" else len(node.body)
    data = b"" if estimate > MAX_ATTACHMENT_BYTES * 1.1 else _decode_transfer(node.body, cte)
    index = len(result.attachments) + 1
    name = sanitise_filename(filename, ctype, index)
    if estimate > MAX_ATTACHMENT_BYTES * 1.1 or len(data) > MAX_ATTACHMENT_BYTES:
        result.defects.append(
            f"attachment {name!r} larger than {MAX_ATTACHMENT_BYTES} bytes; dropped")
        return
    inline = disposition == "inline" or (disposition != "attachment" and in_related
                                         and content_id is not None)
    result.attachments.append(ParsedAttachment(
        filename=name, content_type=ctype, data=data, inline=inline, content_id=content_id))


def _fill_dsn_status(result: ParsedMessage, node: _Node) -> None:
    """RFC 3464 section 2.3: one block per recipient after the per-message block.

    A recipient counts as failed when its Action is "failed" or missing; "delayed",
    "delivered", "relayed" and "expanded" are not failures (section 2.3.3).
    """
    for block in node.dsn_blocks[1:] if len(node.dsn_blocks) > 1 else node.dsn_blocks:
        fields = {name.lower(): decode_header_value(view) for name, view in block}
        action = fields.get("action", "").strip().lower()
        if action not in ("", "failed"):
            continue
        for key in ("final-recipient", "original-recipient"):
            value = fields.get(key)
            if not value:
                continue
            # "rfc822; guest@example.org" (address-type ; address, section 2.3.2)
            addr = value.split(";", 1)[-1].strip().strip("<>").strip()
            if addr and addr not in result.dsn_failed_recipients:
                result.dsn_failed_recipients.append(addr)
            break


# ------------------------------------------------------------------ entry point

_BOUNDARY_LINE = re.compile(rb"^--", re.MULTILINE)
_MULTIPART_HEADER = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)?multipart/",
                               re.MULTILINE | re.IGNORECASE)


def _precheck(raw: bytes) -> str | None:
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


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def parse(raw: bytes) -> ParsedMessage:
    """Parse one message; never raises, whatever the bytes.

    Order: flanker, then stdlib compat32, then the top header block alone. The path
    taken is in ``parser`` and every problem met on the way is in ``defects``.
    """
    try:
        return _without_nul(_parse(raw))
    except BaseException as exc:  # noqa: BLE001 - the contract is "never raises"
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        return ParsedMessage(from_=None, parser="headers-only",
                             defects=[f"parse failed: {_short(exc)}"])


def _nul_free(value: str) -> str:
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _without_nul(result: ParsedMessage) -> ParsedMessage:
    """Replace NUL in every decoded string: PostgreSQL text columns and query parameters
    refuse it outright, and no mail client means anything by it (SQLite would store it)."""
    result.subject = _nul_free(result.subject)
    result.text = _nul_free(result.text)
    if result.html is not None:
        result.html = _nul_free(result.html)
    if result.message_id is not None:
        result.message_id = _nul_free(result.message_id)
    result.in_reply_to = [_nul_free(i) for i in result.in_reply_to]
    result.references = [_nul_free(i) for i in result.references]
    for name in ("to", "cc", "reply_to"):
        setattr(result, name, [Address(_nul_free(a.email), _nul_free(a.name)) for a in getattr(result, name)])
    if result.from_ is not None:
        result.from_ = Address(_nul_free(result.from_.email), _nul_free(result.from_.name))
    result.headers = [(_nul_free(k), _nul_free(v)) for k, v in result.headers]
    result.dsn_original_message_ids = [_nul_free(i) for i in result.dsn_original_message_ids]
    result.dsn_failed_recipients = [_nul_free(i) for i in result.dsn_failed_recipients]
    result.defects = [_nul_free(d) for d in result.defects]
    for attachment in result.attachments:
        attachment.filename = _nul_free(attachment.filename).replace("\ufffd", "")
        attachment.content_type = _nul_free(attachment.content_type)
        if attachment.content_id is not None:
            attachment.content_id = _nul_free(attachment.content_id)
    return result


def _parse(raw: bytes) -> ParsedMessage:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raw = str(raw).encode("utf-8", "surrogateescape")
    raw = bytes(raw)
    result = ParsedMessage(from_=None)
    top: _HeaderBlock | None = None
    try:
        top = split_header_block(raw)
        _fill_top_headers(result, top)
    except Exception as exc:
        result.defects.append(f"header block unreadable: {_short(exc)}")

    route = _precheck(raw)
    if route == "headers-only":
        result.defects.append(
            f"more than {PRECHECK_MAX_MULTIPART_HEADERS} multipart headers (nesting bomb?); "
            "body not parsed")
        result.parser = "headers-only"
        return result
    if route == "stdlib":
        result.defects.append(
            f"flanker skipped: more than {PRECHECK_MAX_BOUNDARY_LINES} boundary lines "
            "(flanker stops at 5000 parts)")

    if route is None:
        defects: list[str] = []
        try:
            tree = _flanker_tree(raw, _Limits(defects), top)
            attempt = _copy_headers(result)
            attempt.defects.extend(defects)
            _fill_body(attempt, tree)
            attempt.parser = "flanker"
            return attempt
        except Exception as exc:  # RecursionError included
            result.defects.append(f"flanker: {_short(exc)}")

    defects = []
    try:
        tree, found = _stdlib_tree(raw, _Limits(defects))
        attempt = _copy_headers(result)
        attempt.defects.extend(f"stdlib: {name}" for name in dict.fromkeys(found))
        attempt.defects.extend(defects)
        _fill_body(attempt, tree)
        attempt.parser = "stdlib"
        return attempt
    except Exception as exc:  # RecursionError included
        result.defects.append(f"stdlib: {_short(exc)}")
    result.parser = "headers-only"
    return result


def _copy_headers(result: ParsedMessage) -> ParsedMessage:
    """A fresh message with the header fields, so a half-filled body never leaks
    from a parser that failed midway into the next attempt."""
    return ParsedMessage(
        from_=result.from_, to=list(result.to), cc=list(result.cc),
        reply_to=list(result.reply_to), subject=result.subject, date=result.date,
        message_id=result.message_id, in_reply_to=list(result.in_reply_to),
        references=list(result.references), headers=list(result.headers),
        content_type=result.content_type, defects=list(result.defects),
    )
