"""Attachment names and media types we can safely write into a header or onto a disk.

Both come from strangers (a guest's mail, a studio app's upload) and end up in headers we
write (`Content-Type`, `Content-Disposition`) and in file names of exports, so they are
reduced to what cannot carry anything else.
"""
from __future__ import annotations

import mimetypes
import re
import unicodedata
from urllib.parse import quote

MAX_FILENAME_CHARS = 255

_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f/\\]")
_EXTENSIONS = {
    "image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
    "image/heic": "heic", "image/heif": "heif", "image/svg+xml": "svg", "image/bmp": "bmp",
    "image/tiff": "tiff", "application/pdf": "pdf", "text/plain": "txt", "text/html": "html",
    "text/calendar": "ics", "text/csv": "csv", "message/rfc822": "eml",
    "message/global": "eml", "application/zip": "zip", "video/mp4": "mp4",
    "video/quicktime": "mov", "audio/mpeg": "mp3",
}


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def plain_media_type(value: str) -> str:
    """The `type/subtype` of a Content-Type value, lower-case, without parameters; anything
    that is not a plain RFC 6838 media type becomes application/octet-stream, so a value from
    a client or a mail can never carry more than a type into a header we write."""
    main = (value or "").partition(";")[0].strip().lower()
    return main if _MEDIA_TYPE.fullmatch(main) else "application/octet-stream"


def sanitise_filename(name: str, content_type: str, index: int) -> str:
    """Basename only, no control or format characters, never empty.

    Format characters (Unicode Cf) include U+202E RIGHT-TO-LEFT OVERRIDE, used to make
    "invoice\u202egpj.exe" look like a picture.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    name = _FILENAME_BAD.sub("", name).strip().strip(".").strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
    if name:
        return name
    ext = _EXTENSIONS.get(content_type)
    if ext is None:
        guessed = mimetypes.guess_extension(content_type, strict=False)
        ext = guessed.lstrip(".") if guessed else "bin"
    return f"attachment-{index}.{ext}"


_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9 ._()+,=@&#!~-]")


def content_disposition(filename: str) -> str:
    """`attachment` with the name twice (RFC 6266): `filename*` in UTF-8, percent-encoded
    (RFC 8187), which every current browser prefers, and a plain ASCII `filename` for older
    clients: accents dropped ("Rücken" → "Rucken"), anything that could end or break the
    quoted string (quotes, backslashes, control characters) replaced by "_"."""
    decomposed = unicodedata.normalize("NFKD", filename)
    ascii_name = "".join(c for c in decomposed if not unicodedata.combining(c))
    ascii_name = _UNSAFE_ASCII.sub("_", ascii_name).strip() or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
