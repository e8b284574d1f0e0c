"""The studio's inquiry form: read it, save a new version (owner), list the versions.

The definition's JSON schema is documented in docs/forms.md; checking it is the domain's
(gateway/forms/definition.py), this controller only translates its verdict into 422 with the
problem named and the code `invalid_form`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, get, put
from litestar.params import JSONBody
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException

from gateway.access.studios import Caller
from gateway.api.auth import require_owner
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.forms import versions
from gateway.forms.definition import InvalidDefinition, parse_definition
from gateway.store.db import read_tx, write_tx


class FormOut(msgspec.Struct):
    version: int                 # 0: the built-in default, never saved
    created_at: datetime | None
    definition: dict[str, Any]


class FormVersionsOut(msgspec.Struct):
    items: list[FormOut]
    next_cursor: str | None


def form_out(version: versions.Version) -> FormOut:
    return FormOut(version=version.version, created_at=version.created_at, definition=version.definition.to_json())


class FormController(Controller):
    path = "/api/v1/form"

    @get("/", sync_to_thread=True)
    def show(self, state: State, caller: NamedDependency[Caller]) -> FormOut:
        """The form guests see now."""
        with read_tx(state.engine) as conn:
            return form_out(versions.current(conn, caller.studio_id))

    @put("/", sync_to_thread=True, status_code=200)
    def save(self, state: State, caller: NamedDependency[Caller], data: JSONBody[dict[str, Any]]) -> FormOut:
        """Owner only: save the definition as the next version; 422 naming what is wrong."""
        require_owner(caller, "change the inquiry form")
        try:
            definition = parse_definition(data)
        except InvalidDefinition as exc:
            raise HTTPException(str(exc), status_code=422, extra={"code": "invalid_form"}) from None
        with write_tx(state.engine) as conn:
            return form_out(versions.save(conn, caller.studio_id, definition))

    @get("/versions", sync_to_thread=True)
    def history(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
                cursor: Cursor = None) -> FormVersionsOut:
        """Every saved version, newest first, ending with the default (version 0); paged."""
        with cursor_checked(), read_tx(state.engine) as conn:
            found = versions.page(conn, caller.studio_id, limit=limit, cursor=cursor)
        return FormVersionsOut(items=[form_out(v) for v in found.items], next_cursor=found.next_cursor)
