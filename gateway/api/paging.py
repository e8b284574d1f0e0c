"""The query parameters and answer of every list route: `limit` and `cursor` in, `{items,
next_cursor}` out, the same limits everywhere (keyset pages: gateway/store/paging.py).

A route declares `limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None`, runs its query inside
`cursor_checked()`, and answers with its own `<Thing>List` struct of `items` and `next_cursor`,
so the OpenAPI document names each list's item type."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Iterator

from litestar.exceptions import ClientException
from litestar.params import QueryParameter

from gateway.store.paging import DEFAULT_LIMIT, MAX_LIMIT, BadCursor

__all__ = ["DEFAULT_LIMIT", "Cursor", "Limit", "cursor_checked"]

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=(
    f"How many items per page (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})."))]

# No maxLength here: a cursor of any length that we did not hand out gets the same answer,
# 400 with code `bad_cursor`, rather than a validation error from the framework.
Cursor = Annotated[str | None, QueryParameter(description=(
    "`next_cursor` of the previous page, as it was handed out; absent for the first page."))]


@contextmanager
def cursor_checked() -> Iterator[None]:
    """400 `bad_cursor` for a cursor this API did not hand out (never a 500)."""
    try:
        yield
    except BadCursor as exc:
        raise ClientException(str(exc), extra={"code": "bad_cursor"}) from None
