"""`gateway serve`'s "gateway ready" line names the database it uses, never its password."""
from __future__ import annotations

import pytest

from gateway.runtime import database_shown


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://gw:s3cr%40t%3A%2F@db.internal:5432/gateway", "postgresql://gw:***@db.internal:5432/gateway"),
    ("postgres://gw:pw@db.internal/gw?sslmode=require", "postgres://gw:***@db.internal/gw?sslmode=require"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    ("sqlite:////srv/gateway data/gateway.db", "sqlite:////srv/gateway data/gateway.db"),
])
def test_ready_line_shows_the_database_without_its_password(url: str, shown: str) -> None:
    assert database_shown(url) == shown
    assert "s3cr" not in database_shown(url) and ":pw@" not in database_shown(url)
