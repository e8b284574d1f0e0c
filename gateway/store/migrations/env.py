"""Alembic environment: runs the migrations shipped inside the gateway package."""
from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from gateway.store import models  # noqa: F401  (registers every table on SQLModel.metadata)
from gateway.store.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Two processes starting at once must not both migrate: serialise on an advisory lock.
            connection.exec_driver_sql("SELECT pg_advisory_lock(724100)")
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_unlock(724100)")
            connection.commit()
    engine.dispose()


run_migrations_online()
