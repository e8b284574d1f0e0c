"""`gateway serve`'s "gateway ready" line names the database it uses, never its password."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from gateway import runtime
from tests.conftest import make_settings


class NoServers:
    """Stands in for Gateway: the ready line depends on the settings only, so nothing is started
    (and no database is reached, so URLs with passwords need no server that checks them)."""
    smtp_address = http_address = processor = backups = None

    def __init__(self, settings: object, roles: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class StopWhenReady(logging.Handler):
    """Records the runtime's log lines and, at the ready line, stops it as an operator would."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.getMessage().startswith("gateway ready"):
            os.kill(os.getpid(), signal.SIGTERM)  # handled by run_until_signalled's loop


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://gw:s3cr%40t%3A%2F@db.internal:5432/gateway", "postgresql://gw:***@db.internal:5432/gateway"),
    ("postgres://gw:pw@db.internal/gw?sslmode=require", "postgres://gw:***@db.internal/gw?sslmode=require"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    ("sqlite:////srv/gateway data/gateway.db", "sqlite:////srv/gateway data/gateway.db"),
])
def test_ready_line_shows_the_database_without_its_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, url: str, shown: str) -> None:
    monkeypatch.setattr(runtime, "Gateway", NoServers)
    monkeypatch.setattr(runtime, "settle_heap", lambda: None)  # it freezes the test process's heap
    caplog.set_level(logging.INFO, logger=runtime.log.name)
    handler = StopWhenReady()
    runtime.log.addHandler(handler)
    try:
        asyncio.run(runtime.run_until_signalled(make_settings(tmp_path, url), ["web"]))
    finally:
        runtime.log.removeHandler(handler)
    assert handler.lines == [f"gateway ready:  (database {shown})", "shutting down"]
