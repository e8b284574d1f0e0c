"""The reply box's multipart body, read as it streams in, so that too much is a form error.

Litestar's form parser refuses a body over the route's limit with a bare 413 before the
handler runs: the page could not say what went wrong, and the text the studio typed was lost.
Here the body is parsed while it arrives (python-multipart's push parser, as webhooks/forms.py
uses for provider posts): the small fields (the CSRF token, the text) are kept; files are kept
while each stays within GATEWAY_MAX_ATTACHMENT_SIZE and all together within a message
(check_uploads' own rule); past that, or past MAX_PARTS parts, nothing more is kept and the rest
of the body is read and dropped, so the browser gets the page back instead of a reset
connection. Memory stays bounded by the limits, whatever is sent; nothing is stored, the handler
decides on `refused` before writing anything.

Only beyond DRAIN_MAX (a body no reply box sends by mistake) is the answer Litestar's 413.
A url-encoded post (no files: not our page, which posts multipart) is read up to MAX_FIELD.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from litestar import Request
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser, parse_options_header

from gateway.outbound.replies import MAX_TEXT, Upload
from gateway.settings import Settings

MAX_PARTS = 1000                      # Litestar's multipart_form_part_limit: what the API's reply takes
MAX_FIELD = 4 * MAX_TEXT + 64 * 1024  # a text of MAX_TEXT characters in UTF-8, and room for the rest
DRAIN_MAX = 1024 * 1024 * 1024        # read and drop at most this much of a refused body


@dataclass
class ReplyPost:
    fields: dict[str, str] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    refused: str = ""                  # "too_large", "too_many", or "" when everything was kept

    def refuse(self, why: str) -> None:
        """Keep nothing more; the fields read so far stay (the draft is shown again)."""
        self.refused = self.refused or why
        self.uploads = []


class _Reader:
    """One body's parse: where the current part goes, and what has been kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.post = ReplyPost()
        self.segment: MultipartSegment | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.kept = 0                  # bytes of files kept so far

    def start(self, segment: MultipartSegment) -> None:
        self.segment, self.chunks, self.size = segment, [], 0

    def data(self, chunk: bytes) -> None:
        segment = self.segment
        if segment is None:
            return
        self.size += len(chunk)
        if segment.filename is None:
            if self.size > MAX_FIELD:
                self.post.refuse("too_large")
                self.segment = None
                return
        elif self.post.refused or self.size > self.settings.max_attachment_size or \
                (self.kept + self.size) * 4 // 3 > self.settings.smtp_max_message_size:
            self.post.refuse("too_large")
            self.segment = None
            return
        self.chunks.append(chunk)

    def end(self) -> None:
        segment, data = self.segment, b"".join(self.chunks)
        self.segment, self.chunks = None, []
        if segment is None:
            return
        if segment.filename is None:
            self.post.fields.setdefault(segment.name or "", data.decode("utf-8", "replace"))
        elif segment.filename and not self.post.refused:  # an empty file input sends a part without a name
            self.kept += len(data)
            self.post.uploads.append(Upload(segment.filename, segment.content_type or "application/octet-stream",
                                            data))


async def read_reply_post(request: Request[Any, Any, Any], settings: Settings) -> ReplyPost | None:
    """The posted reply box; None when the body is no multipart form (the caller answers 400)."""
    mime, options = parse_options_header(request.headers.get("content-type", ""))
    if mime == "application/x-www-form-urlencoded":  # no files: a client other than our page
        return await _urlencoded(request)
    if mime != "multipart/form-data" or not options.get("boundary"):
        return None
    reader = _Reader(settings)
    parser: PushMultipartParser | None = PushMultipartParser(
        options["boundary"], max_segment_count=MAX_PARTS, max_header_size=8192, max_header_count=16)
    async for chunk in request.stream():
        if parser is not None:
            parser = _feed(parser, reader, chunk)
    if parser is not None:
        parser = _feed(parser, reader, b"")  # the end of the input: the closing boundary is checked
    return reader.post if parser is not None or reader.post.refused else None


async def _urlencoded(request: Request[Any, Any, Any]) -> ReplyPost:
    post, body, size = ReplyPost(), bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FIELD:
            post.refuse("too_large")
        else:
            body += chunk
    if post.refused:
        return post
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_PARTS)
    except ValueError:  # more fields than MAX_PARTS
        post.refuse("too_many")
        return post
    for key, value in pairs:
        post.fields.setdefault(key, value)
    return post


def _feed(parser: PushMultipartParser, reader: _Reader, chunk: bytes) -> PushMultipartParser | None:
    """Parse one chunk; None once the parser gave up (the rest of the body is only drained)."""
    try:
        for event in parser.parse(chunk):
            if isinstance(event, MultipartSegment):
                reader.start(event)
            elif event:
                reader.data(bytes(event))
            else:
                reader.end()
    except ParserLimitReached:
        reader.post.refuse("too_many")
        return None
    except ParserError:
        return None
    return parser
