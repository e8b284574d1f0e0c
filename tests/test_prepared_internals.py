"""The SQLAlchemy compiler attributes gateway/store/prepared.py reads: still there, still meaning the same.

`Prepared` binds values itself instead of letting SQLAlchemy do it per execution, so it reads
what the compiled statement knows about its parameters: `bind_names`, `positiontup`,
`insert_prefetch` and `update_prefetch` of SQLCompiler (documented there, but not the stable
`Compiled` API), and `required`, `effective_value`, `expanding` of each BindParameter. Each
test below checks one of them on the dialect each database really uses, and fails with a
message naming the attribute and the SQLAlchemy version, so an upgrade that changes one is
caught here and not by a wrong value in a production row.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import sqlalchemy
from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, bindparam, insert, select, update
from sqlalchemy.engine import Dialect

from gateway.store.prepared import Prepared

VERSION = f"SQLAlchemy {sqlalchemy.__version__}"

PROBE = Table(
    "prepared_probe", MetaData(),
    Column("id", Integer, primary_key=True),
    Column("slug", String),
    Column("locale", String, default="de"),             # a constant default: Prepared binds it
    Column("token", String, default=lambda: "computed"),  # computed per row: Prepared must be given it
    Column("touched", String, onupdate="yes"),          # a constant onupdate
    Column("created_at", DateTime(timezone=True)),
)


@pytest.fixture
def dialect(engine: Engine) -> Iterator[Dialect]:
    with engine.connect() as conn:  # initialised by a real connection, as Prepared gets it
        yield conn.dialect


def read(compiled: Any, attribute: str) -> Any:
    assert hasattr(compiled, attribute), (
        f"SQLCompiler.{attribute} is gone in {VERSION}: gateway/store/prepared.py's Prepared._compile reads it")
    return getattr(compiled, attribute)


def test_bind_names_give_each_parameter_its_name_in_the_sql(dialect: Dialect) -> None:
    statement = select(PROBE.c.id).where(PROBE.c.locale == "de", PROBE.c.slug == bindparam("key"),
                                         PROBE.c.id > bindparam("low"), PROBE.c.token == bindparam("key"))
    compiled = statement.compile(dialect=dialect)
    bind_names = read(compiled, "bind_names")
    assert isinstance(bind_names, dict) and all(
        isinstance(b, sqlalchemy.BindParameter) and isinstance(n, str) for b, n in bind_names.items()), (
        f"SQLCompiler.bind_names is no longer {{BindParameter: name}} in {VERSION}")
    names = sorted(bind_names.values())
    assert names.count("key") == 2 and "low" in names and len(names) == 4, (
        f"SQLCompiler.bind_names no longer lists every parameter under its name in {VERSION}: {names}")
    by_name = {name: bind for bind, name in bind_names.items()}
    [literal] = [bind for bind in by_name.values() if bind.key not in ("key", "low")]
    assert not literal.required and literal.effective_value == "de", (
        f"a literal's BindParameter is no longer required=False with effective_value in {VERSION}")
    assert by_name["key"].required and by_name["low"].required, (
        f"a bindparam() without a value is no longer required=True in {VERSION}")
    if not compiled.positional:  # named paramstyle: the driver looks the names up in the SQL
        sql = str(compiled)
        for name in names:
            assert dialect.paramstyle == "pyformat" and f"%({name})s" in sql, (
                f"SQLCompiler.bind_names' {name!r} is not the name in the SQL in {VERSION}: {sql}")
    # Prepared's values are the ones SQLAlchemy's public construct_params() gives.
    bound = Prepared(statement)._compile(dialect)
    expected = compiled.construct_params({"key": "inkwell", "low": 3})
    given = {"key": "inkwell", "low": 3}
    assert {name: given.get(name, fixed) for name, fixed, _ in bound.binds} == {
        name: expected[name] for name, _, _ in bound.binds}


def test_positiontup_is_the_drivers_parameter_order(dialect: Dialect) -> None:
    statement = select(PROBE.c.id).where(PROBE.c.locale == "de", PROBE.c.slug == bindparam("key"),
                                         PROBE.c.id > bindparam("low"), PROBE.c.token == bindparam("key"))
    compiled = statement.compile(dialect=dialect)
    positiontup = read(compiled, "positiontup")
    if not compiled.positional:
        assert dialect.paramstyle == "pyformat"
        return
    sql = str(compiled)
    assert dialect.paramstyle == "qmark" and positiontup is not None and len(positiontup) == sql.count("?"), (
        f"SQLCompiler.positiontup no longer has one name per '?' in {VERSION}: {positiontup} for {sql}")
    by_name = {name: bind for bind, name in compiled.bind_names.items()}
    assert list(positiontup[1:]) == ["key", "low", "key"] and by_name[positiontup[0]].effective_value == "de", (
        f"SQLCompiler.positiontup is no longer the parameters in SQL order in {VERSION}: {positiontup}")
    assert [name for name, _, _ in Prepared(statement)._compile(dialect).binds] == list(positiontup)


def test_expanding_parameters_are_marked_and_refused(dialect: Dialect) -> None:
    statement = select(PROBE.c.id).where(PROBE.c.id.in_(bindparam("ids", expanding=True)))
    [bind] = read(statement.compile(dialect=dialect), "bind_names")
    assert bind.expanding, f"BindParameter.expanding is no longer set for an IN list in {VERSION}"
    with pytest.raises(ValueError, match="expanding"):
        Prepared(statement)._compile(dialect)


def test_insert_prefetch_lists_the_defaults_computed_in_python(dialect: Dialect) -> None:
    statement = insert(PROBE).values(slug=bindparam("slug"), created_at=bindparam("created_at"))
    compiled = statement.compile(dialect=dialect)
    prefetch = read(compiled, "insert_prefetch")
    assert {c.key for c in prefetch} == {"locale", "token"}, (
        f"SQLCompiler.insert_prefetch no longer lists the columns whose default Python computes "
        f"in {VERSION}: {[c.key for c in prefetch]}")
    assert PROBE.c.locale.default.is_scalar and PROBE.c.locale.default.arg == "de"
    assert not PROBE.c.token.default.is_scalar
    names = set(compiled.bind_names.values())
    assert {"locale", "token"} <= names, (
        f"a prefetched column's parameter is no longer named after Column.key in {VERSION}: {sorted(names)}")
    with pytest.raises(ValueError, match="token"):
        Prepared(statement)._compile(dialect)
    given = Prepared(insert(PROBE).values(slug=bindparam("slug"), token=bindparam("token")))._compile(dialect)
    assert {name: fixed for name, fixed, _ in given.binds} == {"slug": None, "token": None, "locale": "de"}


def test_update_prefetch_lists_the_onupdate_values_computed_in_python(dialect: Dialect) -> None:
    statement = update(PROBE).values(slug=bindparam("new_slug")).where(PROBE.c.id == bindparam("row"))
    compiled = statement.compile(dialect=dialect)
    prefetch = read(compiled, "update_prefetch")
    assert [c.key for c in prefetch] == ["touched"], (
        f"SQLCompiler.update_prefetch no longer lists the columns whose onupdate Python computes "
        f"in {VERSION}: {[c.key for c in prefetch]}")
    assert PROBE.c.touched.onupdate.is_scalar and PROBE.c.touched.onupdate.arg == "yes"
    bound = Prepared(statement)._compile(dialect)
    assert {name: fixed for name, fixed, _ in bound.binds} == {"new_slug": None, "row": None, "touched": "yes"}
