"""``parse``: the entry point, which never raises.

The top header block is read first and kept on every path; then flanker, the stdlib, or
the headers alone, as ``precheck`` and each parser's failure decide. NUL is replaced in
every string before the message leaves.
"""
from __future__ import annotations

from gateway.inbound.mime.body import fill_body
from gateway.inbound.mime.fields import HeaderBlock, fill_top_headers, split_header_block
from gateway.inbound.mime.limits import PRECHECK_MAX_BOUNDARY_LINES, PRECHECK_MAX_MULTIPART_HEADERS, Limits, precheck
from gateway.inbound.mime.parsed import Address, ParsedMessage
from gateway.inbound.mime.tree import flanker_tree, stdlib_tree


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
    top: HeaderBlock | None = None
    try:
        top = split_header_block(raw)
        fill_top_headers(result, top)
    except Exception as exc:
        result.defects.append(f"header block unreadable: {_short(exc)}")

    route = precheck(raw)
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
            tree = flanker_tree(raw, Limits(defects), top)
            attempt = _copy_headers(result)
            attempt.defects.extend(defects)
            fill_body(attempt, tree)
            attempt.parser = "flanker"
            return attempt
        except Exception as exc:  # RecursionError included
            result.defects.append(f"flanker: {_short(exc)}")

    defects = []
    try:
        tree, found = stdlib_tree(raw, Limits(defects))
        attempt = _copy_headers(result)
        attempt.defects.extend(f"stdlib: {name}" for name in dict.fromkeys(found))
        attempt.defects.extend(defects)
        fill_body(attempt, tree)
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
