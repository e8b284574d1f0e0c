"""Saved versions of a studio's form: every save is a new version, none is ever changed.

Version 0 is the built-in default (gateway/forms/definition.DEFAULT): a studio that never
saved has no rows and answers with it. A submission stores the version number it answered,
so it is always rendered with its own labels after the form changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import datetime

from functools import lru_cache

from sqlalchemy import Connection, bindparam, func, insert, select

from gateway.forms.definition import DEFAULT, Definition, parse_definition
from gateway.store.models import utcnow
from gateway.store.paging import Order, Page, decode_cursor, encode_cursor
from gateway.store.tables import FORM_VERSION

DEFAULT_VERSION = 0


@dataclass(frozen=True)
class Version:
    version: int
    definition: Definition
    created_at: datetime | None   # None: the built-in default, never saved


# Every page view and post reads the current version: each saved definition is parsed once per
# process (versions never change, so the text is the whole cache key).
_CURRENT = (select(FORM_VERSION.c.version, FORM_VERSION.c.definition_json, FORM_VERSION.c.created_at)
            .where(FORM_VERSION.c.studio_id == bindparam("studio_id"))
            .order_by(FORM_VERSION.c.version.desc()).limit(1))


@lru_cache(maxsize=256)
def _parsed(definition_json: str) -> Definition:
    return parse_definition(json.loads(definition_json))


def current(conn: Connection, studio_id: int) -> Version:
    """The studio's newest version, or the default."""
    row = conn.execute(_CURRENT, {"studio_id": studio_id}).first()
    if row is None:
        return Version(DEFAULT_VERSION, DEFAULT, None)
    return Version(row.version, _parsed(row.definition_json), row.created_at)


def from_row(version: int | None, definition_json: str | None, created_at: datetime | None) -> Version:
    """The newest version as a statement that reads more than it found it (None: the default)."""
    if version is None or definition_json is None:
        return Version(DEFAULT_VERSION, DEFAULT, None)
    return Version(version, _parsed(definition_json), created_at)


def at(conn: Connection, studio_id: int, version: int) -> Version | None:
    """One version of the studio's form (0: the default); None if it never existed."""
    if version == DEFAULT_VERSION:
        return Version(DEFAULT_VERSION, DEFAULT, None)
    row = conn.execute(select(FORM_VERSION.c.definition_json, FORM_VERSION.c.created_at).where(
        FORM_VERSION.c.studio_id == studio_id, FORM_VERSION.c.version == version)).first()
    if row is None:
        return None
    return Version(version, parse_definition(json.loads(row.definition_json)), row.created_at)


_NEWEST_FIRST = Order(id=FORM_VERSION.c.version)


def page(conn: Connection, studio_id: int, *, limit: int, cursor: str | None) -> Page[Version]:
    """The saved versions, newest first, then the default they started from (version 0), a
    page at a time as every list of the API pages (gateway/store/paging.py). BadCursor for a
    cursor not handed out."""
    after = None if cursor is None else decode_cursor(_NEWEST_FIRST, cursor)[0]
    query = (select(FORM_VERSION.c.version, FORM_VERSION.c.definition_json, FORM_VERSION.c.created_at)
             .where(FORM_VERSION.c.studio_id == studio_id))
    if after is not None:
        query = query.where(FORM_VERSION.c.version < after)
    rows = conn.execute(query.order_by(FORM_VERSION.c.version.desc()).limit(limit + 1)).all()
    items = [Version(r.version, parse_definition(json.loads(r.definition_json)), r.created_at) for r in rows]
    if after is None or after > DEFAULT_VERSION:
        items.append(Version(DEFAULT_VERSION, DEFAULT, None))
    more = len(items) > limit
    items = items[:limit]
    return Page(items=items, next_cursor=encode_cursor(_NEWEST_FIRST, SimpleNamespace(version=items[-1].version))
                if more else None)


def save(conn: Connection, studio_id: int, definition: Definition) -> Version:
    """A new version in the caller's transaction. Two owners saving at once: one of them hits
    the unique (studio_id, version) constraint and the caller's transaction fails; retrying it
    saves the next number."""
    latest = conn.execute(select(func.max(FORM_VERSION.c.version)).where(
        FORM_VERSION.c.studio_id == studio_id)).scalar()
    number = (latest or DEFAULT_VERSION) + 1
    now = utcnow()
    conn.execute(insert(FORM_VERSION).values(studio_id=studio_id, version=number, created_at=now,
                                             definition_json=json.dumps(definition.to_json(), ensure_ascii=False)))
    return Version(number, definition, now)
