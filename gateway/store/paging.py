"""Keyset pagination, one way for every list the API answers (`{items, next_cursor}`).

Why keyset and not OFFSET: a messenger pages while mail arrives; an offset then skips or
repeats rows, and reading page 20 costs the 19 before it. A page here continues strictly after
the last row of the previous one in a fixed order: a sort column (a time, or the id itself) and
the id as the tie-breaker, so every row is seen once however the list grows meanwhile.

Cursors are opaque to clients (base64url of a versioned text) and validated on the way back in:
anything this module did not write, or an id outside a 64-bit row id (PostgreSQL's BIGINT
would refuse it with an error the API would answer with 500), raises BadCursor, which the API
answers with 400 (code `bad_cursor`). They are not signed: a cursor only narrows a query that
is already scoped to the caller's studio, so a forged one can show nothing the caller may not see.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, Sequence, TypeVar

from sqlalchemy import ColumnElement, Connection, Select, and_, or_

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_LENGTH = 200
_MAX_ID = 2**63 - 1           # the largest BIGINT; row ids never pass it
_VERSION = "1"

T = TypeVar("T")


class BadCursor(ValueError):
    """A pagination cursor this API did not hand out."""

    def __init__(self, detail: str = "cursor is not one this API handed out") -> None:
        super().__init__(detail)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class Order:
    """A list's order: `sort` (a datetime column, or None to order by the id alone) then `id`,
    newest (largest) first when `descending`."""

    id: ColumnElement[Any]
    sort: ColumnElement[Any] | None = None
    descending: bool = True

    def columns(self) -> list[ColumnElement[Any]]:
        return [self.id] if self.sort is None else [self.sort, self.id]


def encode_cursor(order: Order, row: Any) -> str:
    """The cursor continuing after `row` (which must carry the order's columns by name)."""
    parts = [_VERSION, str(_value(row, order.id))]
    if order.sort is not None:
        parts.append(_value(row, order.sort).astimezone(timezone.utc).isoformat())
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def decode_cursor(order: Order, cursor: str) -> tuple[int, datetime | None]:
    """(id, sort value) of a cursor from encode_cursor for the same order, or BadCursor."""
    if not cursor or len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
        raise BadCursor()
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise BadCursor() from None
    parts = text.split("|")
    if parts[0] != _VERSION or len(parts) != (2 if order.sort is None else 3):
        raise BadCursor()
    if not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) > _MAX_ID:
        raise BadCursor()
    at = None
    if order.sort is not None:
        try:
            at = datetime.fromisoformat(parts[2])
            at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
        except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved past the calendar
            raise BadCursor() from None
    return int(parts[1]), at


def keyset_page(conn: Connection, query: Select[Any], order: Order, *, limit: int,
                cursor: str | None) -> Page[Any]:
    """Run `query` for one page of `limit` rows after `cursor` (None: the first page).

    The query must select the order's columns (by their own names) and must not be ordered
    or limited yet. `next_cursor` is None on the last page."""
    if cursor is not None:
        row_id, at = decode_cursor(order, cursor)
        if order.sort is None:
            query = query.where(order.id < row_id if order.descending else order.id > row_id)
        elif order.descending:
            query = query.where(or_(order.sort < at, and_(order.sort == at, order.id < row_id)))
        else:
            query = query.where(or_(order.sort > at, and_(order.sort == at, order.id > row_id)))
    keys = [c.desc() if order.descending else c.asc() for c in order.columns()]
    rows = conn.execute(query.order_by(*keys).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=list(rows), next_cursor=encode_cursor(order, rows[-1]) if more else None)


def _value(row: Any, column: ColumnElement[Any]) -> Any:
    return getattr(row, column.key)


def with_items(page: Page[Any], items: Sequence[T]) -> Page[T]:
    """The same page with its rows turned into `items` (the shapes a caller answers with)."""
    return Page(items=list(items), next_cursor=page.next_cursor)
