"""The part tree: the only module that imports flanker.

flanker decides the MIME structure; the stdlib (compat32) builds the tree when flanker fails.
Both trees become the same neutral ``Node`` tree, built iteratively within the ``Limits``
budget, with leaves still transfer-encoded and headers still byte views.
"""
from __future__ import annotations

import email.message
import email.policy
import functools
import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.inbound.mime.charsets import view_to_bytes
from gateway.inbound.mime.fields import HeaderBlock, split_header_block
from gateway.inbound.mime.limits import MAX_PARTS, Limits


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


# ----------------------------------------------------------------- neutral tree

@dataclass
class Node:
    """One MIME part, whichever parser found it.

    ``headers`` are the part's own headers as byte views; ``body`` is the raw body,
    still transfer-encoded, for leaves, unless ``transfer_decoded`` says the parser had
    to undo the transfer encoding to reach the original bytes (see ``_stdlib_leaf_body``);
    ``dsn_blocks`` holds the field blocks of a message/delivery-status part (RFC 3464
    section 2.1).
    """
    content_type: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    transfer_decoded: bool = False
    children: list[Node] = field(default_factory=list)
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


def _dsn_blocks_from_text(body: bytes) -> list[list[tuple[str, str]]]:
    """RFC 3464 section 2.1: per-message fields, blank line, per-recipient blocks.

    Walked by offset: copying the rest of the part for each of up to MAX_PARTS blocks cost a
    thousand times the part's size (0.6 s for a 4 MB part).
    """
    blocks = []
    pos = _skip_line_ends(body, 0)
    for _ in range(MAX_PARTS):
        if pos >= len(body) or _BLANK_TAIL.fullmatch(body, pos) is not None:
            break
        block = split_header_block(body, max_lines=1_000, start=pos, keep_body=False)
        if not block.headers:
            break
        blocks.append(block.headers)
        pos = _skip_line_ends(body, block.body_start)
    return blocks


_LINE_ENDS = re.compile(rb"[\r\n]*")
_BLANK_TAIL = re.compile(rb"\s*")


def _skip_line_ends(data: bytes, pos: int) -> int:
    match = _LINE_ENDS.match(data, pos)
    return match.end() if match else pos


def _push_children(stack: list[Any], node: "Node", parts: Iterable[Any], depth: int, limits: "Limits") -> None:
    """Queue a multipart's children for the iterative walk, within the part budget."""
    children = []
    for child in parts:
        if not limits.take_part():
            break
        child_node = Node(content_type="", headers=[])
        children.append(child_node)
        stack.append((child, child_node, depth + 1))
    node.children = children
    # The stack is LIFO; reverse the pushes so document order is kept.
    stack[len(stack) - len(children):] = stack[len(stack) - len(children):][::-1]


def flanker_tree(raw: bytes, limits: Limits, top: HeaderBlock | None = None) -> Node:
    """Parse with flanker and convert its tree to Node, iteratively and bounded.

    We hand flanker the Latin-1 view of the bytes: flanker otherwise decodes the whole
    message with chardet when it is not UTF-8, which is slow on large binary input and
    loses the original bytes of 8-bit parts. Each leaf's raw text comes from
    ``MimePart.to_string()``, which for an unchanged part is its original text. A single-part
    message is its own leaf: its header block is `top`, already split by the caller, when the
    bytes are the same.
    """
    root_part = _flanker_mime.from_string(raw.decode("latin-1"))
    root = Node(content_type="", headers=[])
    stack: list[tuple[Any, Node, int]] = [(root_part, root, 0)]
    while stack:
        part, node, depth = stack.pop()
        ctype = part.content_type
        node.content_type = f"{ctype.main}/{ctype.sub}".lower()
        if node.content_type.startswith("multipart/") and node.content_type not in _LEAF_TYPES:
            if limits.deep_enough(depth + 1):
                continue
            _push_children(stack, node, part.parts, depth, limits)
            continue
        data = view_to_bytes(part.to_string())
        block = top if depth == 0 and top is not None and data == raw else split_header_block(data)
        node.headers = block.headers
        node.body = block.body
        limits.defects.extend(block.defects)
        if node.content_type in ("message/delivery-status", "message/global-delivery-status"):
            node.dsn_blocks = _dsn_blocks_from_text(block.body)
    return root


def stdlib_tree(raw: bytes, limits: Limits) -> tuple[Node, list[str]]:
    """Parse with the stdlib (compat32) and convert to Node; returns stdlib's defects.

    Leaves carry their original bytes (``_stdlib_leaf_body``), so the body text goes
    through the same charset chain in ``charsets`` as on the flanker path. Embedded
    messages are written back with the line ending the mail came with.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    linesep = "\r\n" if b"\r\n" in raw else "\n"
    found: list[str] = []
    root = Node(content_type="", headers=[])
    stack: list[tuple[email.message.Message, Node, int]] = [(msg, root, 0)]
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
                node.body = b"".join(_stdlib_message_bytes(p, linesep) for p in payload[:1])
            else:
                node.body, node.transfer_decoded = _stdlib_leaf_body(part, payload)
            continue
        if limits.deep_enough(depth + 1):
            continue
        _push_children(stack, node, payload, depth, limits)
    return root, found


def _stdlib_view(value: Any) -> str:
    """compat32 keeps 8-bit header bytes as surrogate escapes; make them a byte view."""
    return view_to_bytes(str(value)).decode("latin-1")


def _stdlib_leaf_body(part: email.message.Message, payload: Any) -> tuple[bytes, bool]:
    """The bytes of a leaf as they came, and whether the transfer encoding is undone.

    ``get_payload()`` returns an ASCII body as it came. A body with 8-bit bytes it hands
    back already decoded with the *declared* charset and errors="replace": CP-1252 text
    labelled us-ascii came out as U+FFFD, which our chain then read as "ï¿½" (issue 13).
    ``get_payload(decode=True)`` is the public door to the original bytes: as they came
    for 7bit/8bit/binary (or a missing or unknown encoding), transfer-decoded for
    quoted-printable and base64, which is what ``transfer_decoded`` records.
    """
    if not isinstance(payload, str):
        return b"", False
    if payload.isascii():
        return payload.encode("ascii"), False
    data = part.get_payload(decode=True)
    return (bytes(data) if isinstance(data, (bytes, bytearray)) else b""), True


def _stdlib_message_bytes(msg: Any, linesep: str) -> bytes:
    try:
        return bytes(msg.as_bytes(policy=email.policy.compat32.clone(linesep=linesep)))
    except Exception:  # a broken embedded message must not lose the outer one
        return b""
