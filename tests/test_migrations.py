"""The migrations build exactly the schema the models describe, on both back ends."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import gateway.store.models  # noqa: F401  (registers every table on SQLModel.metadata)
from gateway.store.db import make_engine


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ (write a migration): {diff}"
