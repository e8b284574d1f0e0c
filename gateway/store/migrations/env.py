"""Alembic environment: runs the migrations shipped inside the gateway package."""
from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
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
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table by copying it and dropping the old one; with foreign
            # keys on, dropping a table that other rows point at fails (or would empty it).
            # SQLite ignores this pragma inside a transaction, so it is set on the driver's
            # connection before alembic begins one (https://sqlite.org/lang_altertable.html#otheralter).
            _driver_sql(connection, "PRAGMA foreign_keys=OFF")
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=sqlite)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                assert not broken, f"a migration left rows whose foreign keys point nowhere: {broken[:5]}"
        if sqlite:
            _driver_sql(connection, "PRAGMA foreign_keys=ON")
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_unlock(724100)")
            connection.commit()
    engine.dispose()


def _driver_sql(connection: Connection, statement: str) -> None:
    """Run on the DBAPI connection (autocommit: make_engine sets isolation_level None), outside
    any transaction SQLAlchemy would begin first."""
    connection.connection.driver_connection.execute(statement)  # type: ignore[union-attr]


run_migrations_online()
