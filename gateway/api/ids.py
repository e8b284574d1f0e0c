"""The one way a route declares an id from its path (or query): `RowId`.

Ids are row ids: positive, and at most 2**31 - 1, the largest PostgreSQL's `serial` (int4)
columns hold (SQLite's would go to 2**63 - 1, but one range for both back ends keeps the
contract one). A path id outside it (0, negative, 2**63) used to reach the database as it was:
SQLite raised OverflowError, PostgreSQL "out of range for type integer", and every route with
an id answered `500` (issue 14). Such an id names nothing, so it is a `404`, with the same body as
an id that is simply not there: it is decoded to `NO_ROW`, an id no table hands out (SQLite's
rowids and PostgreSQL's sequences start at 1), and the route's own lookup answers. An id that
is not a number at all (`abc`, `1.5`) is a malformed request: `400`, a validation error.

Routes declare the segment as a string (`/{conversation_id:str}`), not `:int`: Litestar's
router answers an `int` segment that does not parse with its own `404` before any of our
code runs, which would make `abc` look like an unknown id rather than a bad request.
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from litestar.params import PathParameter, QueryParameter

MAX_ROW_ID = 2**31 - 1  # PostgreSQL `integer`, the id columns' type (gateway/store/models.py)
NO_ROW = 0  # no row has it: every id outside 1..MAX_ROW_ID is decoded to this
_NUMBER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would also take "١٢" and " 12_3 "
_DIGITS = len(str(MAX_ROW_ID))
ERR_MALFORMED_ID = "an id is a positive whole number"


class RowIdType(int):
    """An id taken from a request; decoded by `decode_row_id` (registered in api/app.py)."""


def is_row_id(annotation: Any) -> bool:
    return annotation is RowIdType


def decode_row_id(_: type, value: Any) -> RowIdType:
    """A path or query value to an id: `NO_ROW` when out of range, ValueError (400) when malformed."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        digits = value.lstrip("-").lstrip("0")
        number = NO_ROW if value.startswith("-") or len(digits) > _DIGITS else int(digits or "0")
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(ERR_MALFORMED_ID)
    return RowIdType(number if 1 <= number <= MAX_ROW_ID else NO_ROW)


# The schema says which ids exist: 1..2**31-1, an int32. (Litestar's own ge/le would also
# refuse the others, with a 400 rather than the 404 an unknown id gets.)
_ID_SCHEMA = {"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_ROW_ID}

RowId = Annotated[RowIdType, PathParameter(schema_extra=_ID_SCHEMA)]
"""A path id: `conversation_id: RowId` with the segment `/{conversation_id:str}`."""

ROW_ID_DECODERS = [(is_row_id, decode_row_id)]
RowIdQuery = Annotated[RowIdType, QueryParameter(schema_extra=_ID_SCHEMA)]
"""A query id (`?guest_id=12`), decoded the same way."""
