"""The Litestar application: one controller per resource, the caller provided to each."""
from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from sqlalchemy import Engine

from gateway.api.auth import provide_caller
from gateway.api.conversations import ConversationController
from gateway.api.health import healthz, readyz
from gateway.settings import Settings


def create_app(engine: Engine, settings: Settings) -> Litestar:
    app = Litestar(
        route_handlers=[healthz, readyz, ConversationController],
        dependencies={"caller": Provide(provide_caller, sync_to_thread=True)},
        openapi_config=OpenAPIConfig(title="Studio mail gateway", version="1", path="/schema"),
        debug=False,
        logging_config=None,  # logging is configured once by the gateway, not reset by Litestar
    )
    app.state.engine = engine
    app.state.settings = settings
    return app
