"""Core statements compiled once per database dialect and run on the driver's cursor.

For the API's hottest statements (a token lookup per request, a reply's five statements):
SQLAlchemy builds, caches by key and processes a Core statement on every execution, which
cost several times what SQLite takes to run it (bench/outbound.py: a reply spent most of its
CPU there). A `Prepared` keeps the statement as SQLAlchemy Core, so its meaning (soft-delete
filters, joins) stays written once, compiles it on first use for each dialect, and afterwards
only binds values: each through its column type's bind processor (UTC datetimes as SQLite
stores them), by position or by name as the driver expects.

Results come back as the driver's plain tuples, without result processing: use it for
statements that return ids and text, not for columns that need converting on the way out.
SQL whose shape varies per call (an IN list per chunk) is written by hand: db.DriverSQL.

Binding values itself means reading what SQLAlchemy's compiler knows about the parameters,
attributes SQLCompiler documents but the stable `Compiled` API does not promise:
`bind_names` (each BindParameter and its name in the SQL), `positiontup` (the driver's order
for `?` placeholders), `insert_prefetch` / `update_prefetch` (columns whose default or onupdate
Python computes), and each BindParameter's `required`, `effective_value` and `expanding`.
Checked against SQLAlchemy 2.0.54, 2.1.1 and 2.1.9 on SQLite and PostgreSQL (psycopg);
pyproject.toml keeps SQLAlchemy below 2.2, and tests/test_prepared_internals.py fails, naming
the attribute, when one of them changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import Executable

from gateway.store.db import driver_execute


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: bool
    # (parameter name, value fixed in the statement or None, bind processor or None)
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]


class Prepared:
    """One statement; `execute(conn, name=value, ...)` returns the driver's cursor."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        # Columns left out of an INSERT/UPDATE whose default SQLAlchemy computes in Python at
        # execution: a constant is bound like a literal; anything else must be given.
        defaults: dict[str, Any] = {}
        prefetch = [(c, c.default) for c in compiled.insert_prefetch] + [(c, c.onupdate) for c in compiled.update_prefetch]
        for column, default in prefetch:
            if default is None or not default.is_scalar:
                raise ValueError(f"{column} has a computed default: give Prepared its value")
            defaults[column.key] = default.arg
        names = list(compiled.positiontup or ()) if compiled.positional else list(by_name)
        binds = []
        for name in names:
            bind = by_name[name]
            if bind.expanding:
                raise ValueError("Prepared statements take no expanding IN parameters")
            fixed = defaults[name] if name in defaults else None if bind.required else bind.effective_value
            binds.append((name, fixed, bind.type.dialect_impl(dialect).bind_processor(dialect)))  # as db.bind_processor
        return _Compiled(str(compiled), compiled.positional, tuple(binds))

    def _for(self, conn: Connection) -> _Compiled:
        compiled = self._compiled.get(conn.dialect.name)
        if compiled is None:
            compiled = self._compiled[conn.dialect.name] = self._compile(conn.dialect)
        return compiled

    @staticmethod
    def _bound(compiled: _Compiled, params: dict[str, Any]) -> Any:
        values = []
        for name, fixed, processor in compiled.binds:
            value = params[name] if name in params else fixed
            values.append(processor(value) if processor is not None and value is not None else value)
        if compiled.positional:
            return values
        return dict(zip((b[0] for b in compiled.binds), values))

    def execute(self, conn: Connection, **params: Any) -> Any:
        compiled = self._for(conn)
        return driver_execute(conn, compiled.sql, self._bound(compiled, params))

    def execute_many(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """The statement once per row, as the driver's executemany (one C loop on SQLite,
        pipelined by psycopg). One row is executed plainly: psycopg's pipeline for it took
        several times a plain statement's wait (a form post's one attachment, bench/form_submit.py)."""
        compiled = self._for(conn)
        if len(rows) == 1:
            driver_execute(conn, compiled.sql, self._bound(compiled, rows[0]))
            return
        driver_execute(conn, compiled.sql, [self._bound(compiled, row) for row in rows], many=True)
