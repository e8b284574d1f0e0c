"""Provider form posts as raw bytes: fields keep the bytes the provider sent.

Litestar's own form parser decodes every field as UTF-8, but SendGrid posts each field in the
charset of the original mail (its `charsets` field says which), so a Latin-1 inquiry would
either fail to decode or be garbled before we could honour that. This reader keeps bytes and
leaves decoding to the receiver that knows the charset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser, parse_options_header

MAX_PARTS = 1000
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SIMPLE_DISPOSITION = re.compile(r'form-data; name="([^"\\]*)"(?:; filename="([^"\\]*)")?')


class FormError(ValueError):
    """The body is not the form its Content-Type announces (answered 400)."""


@dataclass
class FilePart:
    filename: str
    content_type: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Form:
    fields: dict[str, list[bytes]] = field(default_factory=dict)
    files: dict[str, list[FilePart]] = field(default_factory=dict)

    def raw(self, name: str) -> bytes | None:
        """The first value of a field, as sent."""
        values = self.fields.get(name)
        return values[0] if values else None

    def text(self, name: str, charset: str = "utf-8") -> str:
        """The first value decoded; undecodable bytes become U+FFFD rather than failing."""
        value = self.raw(name)
        if value is None:
            return ""
        try:
            return value.decode(charset, "replace")
        except LookupError:  # an unknown charset name from the provider
            return value.decode("utf-8", "replace")

    def file(self, name: str) -> FilePart | None:
        values = self.files.get(name)
        return values[0] if values else None


def parse_form(body: bytes, content_type: str) -> Form:
    """A multipart/form-data or application/x-www-form-urlencoded body; FormError otherwise."""
    mime, options = parse_options_header(content_type or "")
    if mime == "application/x-www-form-urlencoded":
        form = Form()
        try:
            # Latin-1 maps every byte to one code point and back: percent-decoded values come
            # out as the exact bytes the provider encoded, whatever their charset.
            pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1",
                              max_num_fields=MAX_PARTS)
        except ValueError as exc:
            raise FormError(f"bad url-encoded form: {exc}") from None
        for key, value in pairs:
            form.fields.setdefault(key.encode("latin-1").decode("utf-8", "replace"), []).append(
                value.encode("latin-1"))
        return form
    if mime != "multipart/form-data":
        raise FormError(f"expected a form post, got Content-Type {mime or 'none'!r}")
    boundary = options.get("boundary", "")
    if not boundary:
        raise FormError("multipart/form-data without a boundary")
    return _split_multipart(body, boundary) or _parse_multipart(body, boundary)


def _split_multipart(body: bytes, boundary: str) -> Form | None:
    """The plain form posts providers send, split at C speed; None for anything unusual.

    The streaming parser below spends about half of a webhook request's own CPU yielding
    events (measured in bench/webhook_ingest.py). Well-formed bodies (every part with simple
    `Name: value` headers, a closing delimiter) are split with bytes.split instead; anything
    else (folded headers, odd delimiters, missing names) goes to the streaming parser, and a
    test checks both give the same result.
    """
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    segments = (b"\r\n" + body).split(delimiter)
    if len(segments) < 2 or segments[0] or len(segments) > MAX_PARTS + 2:
        return None
    closing = segments[-1]
    if not closing.startswith(b"--") or closing[2:].strip(b"\r\n \t"):
        return None
    form = Form()
    for segment in segments[1:-1]:
        head_end = segment.find(b"\r\n\r\n")
        if not segment.startswith(b"\r\n") or head_end < 0:
            return None
        headers: dict[str, str] = {}
        for line in segment[2:head_end].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not _HEADER_NAME.fullmatch(name) or len(line) > 8192:
                return None  # a name that is no RFC 9110 token (a NUL, a space): the parser decides
            try:
                headers[name.strip().decode("ascii").lower()] = value.strip().decode("utf-8")
            except UnicodeDecodeError:
                return None
        simple = _SIMPLE_DISPOSITION.fullmatch(headers.get("content-disposition", ""))
        if simple:  # what providers write: no escapes or encoded words to undo
            params = {"name": simple.group(1)}
            if simple.group(2) is not None:
                params["filename"] = simple.group(2)
        else:
            disposition, params = parse_options_header(headers.get("content-disposition", ""))
            if disposition != "form-data":
                return None
        if "name" not in params or len(headers) > 16:
            return None
        data = segment[head_end + 4:]
        if "filename" in params:
            content_type = headers.get("content-type") or "application/octet-stream"
            form.files.setdefault(params["name"], []).append(FilePart(params["filename"], content_type, data, headers))
        else:
            form.fields.setdefault(params["name"], []).append(data)
    return form


def _parse_multipart(body: bytes, boundary: str) -> Form:
    form = Form()
    segment: MultipartSegment | None = None
    chunks: list[bytes] = []
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_PARTS, max_header_size=8192,
                                 max_header_count=16) as parser:
            for chunk in (body, b""):  # the empty chunk ends the input: the closing boundary is checked
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment, chunks = event, []
                    elif event:
                        chunks.append(bytes(event))
                    elif segment is not None:
                        _add(form, segment, b"".join(chunks))
                        segment = None
    except ParserLimitReached as exc:
        raise FormError(f"form has too many parts or oversized part headers: {exc}") from None
    except ParserError as exc:
        raise FormError(f"bad multipart/form-data: {exc}") from None
    return form


def _add(form: Form, segment: MultipartSegment, data: bytes) -> None:
    name = segment.name or ""
    if segment.filename is not None:
        headers = {key.lower(): value for key, value in segment.headerlist}
        form.files.setdefault(name, []).append(
            FilePart(segment.filename, segment.content_type or "application/octet-stream", data, headers))
    else:
        form.fields.setdefault(name, []).append(data)
