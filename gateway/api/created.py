"""`201 Created` and `202 Accepted` answers with a `Location` (RFC 9110 10.2.2, 15.3.2): the
URL of what was created, so a client need not build it from the body's id."""
from __future__ import annotations

from typing import TypeVar

from litestar import Response
from litestar.datastructures import ResponseHeader

T = TypeVar("T")

# For the OpenAPI document of a route answering `created` or `accepted`.
LOCATION = ResponseHeader(name="Location", documentation_only=True, description="The URL of what was created.")


def created(data: T, location: str, status_code: int = 201) -> Response[T]:
    """`data` as the answer, `location` (a path under this API) as its Location."""
    return Response(content=data, status_code=status_code, headers={"Location": location})


def accepted(data: T, location: str) -> Response[T]:
    """202: queued; `location` is where to follow it (a reply's delivery, say)."""
    return created(data, location, status_code=202)


__all__ = ["accepted", "created"]
