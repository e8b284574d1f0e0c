"""A guest's answers checked against the form version they answered.

Errors are codes with the field they belong to, never texts: the page (gateway/web/) says them
in the guest's language next to the field. Nothing here touches the database, so the whole
check runs before a transaction is opened and a refused post stores nothing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from gateway.forms.definition import Definition, Field
from gateway.forms.images import EXTENSIONS, sniff_image

MAX_SHORT = 500
MAX_LONG = 10_000
# The local part and domain of an address a relay will take (RFC 5321 lengths); strictness
# beyond that belongs to the mail server that bounces.
_EMAIL = re.compile(r"[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\.[A-Za-z]{2,63}\Z")
_PHONE = re.compile(r"[0-9+() /.-]{3,40}\Z")


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str   # sniffed, never the client's
    data: bytes


@dataclass
class Checked:
    """Answers by key as they will be stored (str, list[str], bool or float), the uploads,
    and what is wrong by key (an error code and its parameters)."""

    values: dict[str, Any] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    upload_names: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_answers(definition: Definition, fields: dict[str, list[str]],
                  files: dict[str, list[tuple[str, bytes]]]) -> Checked:
    """Every field of the definition checked; input for keys it does not have is ignored."""
    out = Checked()
    for f in definition.fields:
        if f.type == "files":
            _files(out, f, [(name, data) for name, data in files.get(f.key, []) if data or name])
        else:
            _value(out, f, [v for v in fields.get(f.key, []) if v.strip()])
    return out


def _value(out: Checked, f: Field, given: list[str]) -> None:
    if not given:
        if f.type == "checkbox":
            out.values[f.key] = False
        if f.required:
            out.errors[f.key] = ("required", {})
        return
    first = given[0].strip()
    kind = f.type
    if kind in ("short_text", "name", "phone", "email") and len(first) > MAX_SHORT:
        out.errors[f.key] = ("too_long", {"max": MAX_SHORT})
    elif kind == "long_text":
        text = given[0].replace("\r\n", "\n").strip()
        if len(text) > MAX_LONG:
            out.errors[f.key] = ("too_long", {"max": MAX_LONG})
        else:
            out.values[f.key] = text
    elif kind == "email":
        if not _EMAIL.match(first):
            out.errors[f.key] = ("invalid_email", {})
        else:
            out.values[f.key] = first
    elif kind == "phone":
        if not _PHONE.match(first):
            out.errors[f.key] = ("invalid_phone", {})
        else:
            out.values[f.key] = first
    elif kind in ("short_text", "name"):
        out.values[f.key] = " ".join(first.split())
    elif kind == "select":
        if first not in {o.value for o in f.options}:
            out.errors[f.key] = ("not_an_option", {})
        else:
            out.values[f.key] = first
    elif kind == "multi_select":
        allowed = [o.value for o in f.options]
        chosen = set(v.strip() for v in given)
        if not chosen <= set(allowed):
            out.errors[f.key] = ("not_an_option", {})
        else:
            out.values[f.key] = [v for v in allowed if v in chosen]
    elif kind == "checkbox":
        out.values[f.key] = True
    elif kind == "date":
        try:
            out.values[f.key] = date.fromisoformat(first).isoformat()
        except ValueError:
            out.errors[f.key] = ("invalid_date", {})
    elif kind == "number":
        _number(out, f, first)


def _number(out: Checked, f: Field, given: str) -> None:
    try:
        number = float(given.replace(",", "."))
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        out.errors[f.key] = ("invalid_number", {})
    elif (f.min is not None and number < f.min) or (f.max is not None and number > f.max):
        out.errors[f.key] = ("out_of_range", {"min": _plain(f.min), "max": _plain(f.max)})
    else:
        out.values[f.key] = number


def _plain(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if number == int(number) else str(number)


def _files(out: Checked, f: Field, given: list[tuple[str, bytes]]) -> None:
    if not given:
        if f.required:
            out.errors[f.key] = ("required", {})
        return
    if len(given) > f.max_files:
        out.errors[f.key] = ("too_many_files", {"max": f.max_files})
        return
    kept: list[Upload] = []
    for name, data in given:
        if len(data) > f.max_size:
            out.errors[f.key] = ("file_too_large", {"name": name[:100], "max_mb": _plain(f.max_size / 1048576)})
            return
        kind = sniff_image(data)
        if kind is None:
            out.errors[f.key] = ("not_an_image", {"name": name[:100]})
            return
        kept.append(Upload(_safe_name(name, kind, len(out.uploads) + len(kept) + 1), kind, data))
    out.uploads.extend(kept)
    out.upload_names[f.key] = [u.filename for u in kept]


def _safe_name(name: str, kind: str, number: int) -> str:
    """The guest's file name without any path, with the extension its content has."""
    base = re.sub(r"[^\w.\- ]+", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip(" ._")[:100]
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return f"{stem or f'image-{number}'}.{EXTENSIONS[kind]}"
