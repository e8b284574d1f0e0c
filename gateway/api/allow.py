"""`OPTIONS` answers an `Allow` header naming every method the path has.

Litestar builds one route per path, with an OPTIONS handler that is meant to list the
route's methods; when several handlers share a path it leaves some out (seen with Litestar
2.25: `GET` and `DELETE` on `/api/v1/conversations/{id}` answered `Allow: DELETE, OPTIONS`,
issue 14). The app's routes (`app.routes`, public) know the full set, so this `before_send`
hook writes the header from them rather than relying on the generated handler.
"""
from __future__ import annotations

import re

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.routes import HTTPRoute
from litestar.types import BeforeMessageSendHookHandler, Message, Scope

_TYPED = re.compile(r"\{(\w+):\w+\}")  # a route's "/{id:str}" is "/{id}" in scope["path_template"]


def allow_header(app: Litestar) -> BeforeMessageSendHookHandler:
    """A `before_send` hook for `app`; reads its routes on first use, once they are all built."""
    allowed: dict[str, str] = {}

    async def set_allow(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        if not allowed:
            allowed.update({_TYPED.sub(r"{\1}", route.path): ", ".join(sorted(route.methods))
                            for route in app.routes if isinstance(route, HTTPRoute)})
        methods = allowed.get(str(scope.get("path_template", "")))
        if methods is not None and message["status"] < 300:
            MutableScopeHeaders.from_message(message)["Allow"] = methods

    return set_allow
