"""Which uploads are images, by their first bytes: a name or a Content-Type is the guest's claim.

Only formats a studio's messenger and a phone can show are accepted; everything else (a PDF,
an SVG that could carry script, an executable renamed .jpg) is a form error.
"""
from __future__ import annotations


def sniff_image(data: bytes) -> str | None:
    """The image's media type from its signature, or None when it is not an image we take."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
        return "image/heic"
    if data[4:12] == b"ftypavif":
        return "image/avif"
    return None


EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
              "image/heic": "heic", "image/avif": "avif"}
