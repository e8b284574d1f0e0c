"""Engines, transactions and migrations for SQLite and PostgreSQL.

SQLite runs in WAL mode with `synchronous=FULL`, so a committed transaction has been fsync'd
before we answer `250`. Write transactions start with `BEGIN IMMEDIATE`: a deferred
transaction that later upgrades to a write lock fails with SQLITE_BUSY at once instead of
waiting out `busy_timeout`. PostgreSQL runs with `synchronous_commit` at least `on` for the same promise
(keep_commits_durable).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
import weakref
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import quote, urlencode

from sqlalchemy import exc as exc_module
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL

from gateway.settings import PRIVATE_FILE_MODE, private_dir
from gateway.store.writers import ProcessWriters, writers_of
from gateway.store import models  # noqa: F401  (registers every table on SQLModel.metadata)

_engines: dict[str, Engine] = {}
T = TypeVar("T")


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = str(url_or_engine.url) if isinstance(url_or_engine, Engine) else url_or_engine
    return url.startswith("sqlite")


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain postgres URLs (the psycopg2 default is not installed)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def libpq_url(url: URL) -> str:
    """`url` as libpq's programs (pg_dump, pg_restore, psql) read it: SQLAlchemy spells a primary
    and its standby `?host=db1:5432&host=db2:5432`, libpq `postgresql://db1:5432,db2:5432/db`
    (libpq 34.1.1.2, "Specifying Multiple Hosts"); given as query parameters, libpq would look
    up "db1:5432" as a host name. Other URLs are rendered unchanged (with the password).
    """
    hosts = url.query.get("host")
    names = [hosts] if isinstance(hosts, str) else list(hosts or ())
    if url.host or not names or (len(names) == 1 and ":" not in names[0]) or any(n.startswith("/") for n in names):
        # one host (or a socket directory) as a query parameter is libpq's own spelling too
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    auth = ""
    if url.username is not None:
        auth = quote(url.username, safe="")
        if url.password is not None:
            auth += ":" + quote(str(url.password), safe="")
        auth += "@"
    query = {key: value for key, value in url.query.items() if key != "host"}
    pairs = [(key, item) for key, value in query.items() for item in ([value] if isinstance(value, str) else value)]
    tail = ("?" + urlencode(pairs)) if pairs else ""
    return f"postgresql://{auth}{','.join(names)}/{quote(url.database or '', safe='')}{tail}"


def make_engine(url: str, *, busy_timeout: float = 5.0, pool_size: int = 10, pre_ping: bool = True) -> Engine:
    """hide_parameters: a database error's text (logged, and kept as a message's processing
    error) would otherwise carry the statement's values: mail bodies, addresses, token hashes.
    pre_ping=False (PostgreSQL): no `SELECT 1` round trip at every checkout, for a writer that
    handles a dead connection itself (the acceptor retries its batch on a fresh one)."""
    url = normalise_url(url)
    if is_sqlite(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            private_database_file(Path(path))
        engine = create_engine(
            url,
            connect_args={"isolation_level": None, "check_same_thread": False,
                          "timeout": busy_timeout},
            pool_size=pool_size, max_overflow=20, hide_parameters=True,
        )
        _busy_timeouts[engine] = busy_timeout

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            mode = "IMMEDIATE" if conn.get_execution_options().get("write") else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        run_after_commit(engine)
        return engine

    engine = create_engine(url, pool_size=pool_size, max_overflow=20, pool_pre_ping=pre_ping, hide_parameters=True,
                           connect_args={"connect_timeout": 5})
    keep_commits_durable(engine)
    guard_commits(engine)
    run_after_commit(engine)
    return engine


_AFTER_COMMIT = "gateway.after_commit"


def after_commit(conn: Connection, key: str, callback: Callable[[], None]) -> None:
    """Call `callback` once the transaction `conn` is in has committed (not if it rolls back);
    one callback per `key` and transaction. For telling this process at once what others
    learn by polling (gateway/api/event_hub.py): it runs on the committing thread, must be
    quick and must not raise."""
    conn.info.setdefault(_AFTER_COMMIT, {})[key] = callback


# conn.info keys that belong to one transaction (after_commit's callbacks, transaction_state's
# values): dropped when it commits or rolls back. conn.info itself is the pooled DBAPI
# connection's and outlives the transaction.
_TRANSACTION_KEYS: set[str] = {_AFTER_COMMIT}


def transaction_state(conn: Connection, key: str, factory: Callable[[], T]) -> T:
    """A value kept with the transaction `conn` is in, made by `factory` on first use; gone once
    that transaction commits or rolls back (a rolled-back transaction's leftovers must never
    reach the next one on the same pooled connection)."""
    _TRANSACTION_KEYS.add(key)
    info = conn.info
    if key not in info:
        info[key] = factory()
    return info[key]  # type: ignore[no-any-return]


def run_after_commit(engine: Engine) -> None:
    """Run the `after_commit` callbacks of the engine's connections (after the dialect's
    commit, so after guard_commits' check); a rollback drops them."""
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_conn: Any) -> None:
        commit(dbapi_conn)
        callbacks = _callbacks(dbapi_conn)
        for callback in callbacks.values() if callbacks else ():
            try:
                callback()
            except Exception:  # a listener's fault must not turn a committed write into an error
                logging.getLogger(__name__).exception("an after-commit callback failed")

    def do_rollback(dbapi_conn: Any) -> None:
        _callbacks(dbapi_conn)
        rollback(dbapi_conn)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def _callbacks(dbapi_conn: Any) -> dict[str, Callable[[], None]] | None:
    """The transaction's after-commit callbacks, taken out with the rest of its state."""
    # SQLAlchemy passes the pool's proxy, whose `info` is the Connection's; the ad-hoc proxy
    # of an engine's first connect has none (NotImplementedError), a raw driver connection has
    # another kind of `info`
    try:
        info = dbapi_conn.info
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(info, dict):
        return None
    for key in _TRANSACTION_KEYS:
        if key != _AFTER_COMMIT:
            info.pop(key, None)
    return info.pop(_AFTER_COMMIT, None)


# synchronous_commit levels (PostgreSQL docs 19.5.2) that answer before the WAL is flushed on
# the primary and, with a synchronous standby, on the standby: raised to `on` for our sessions.
_WEAK_COMMIT_LEVELS = ("off", "local", "remote_write")


def keep_commits_durable(engine: Engine) -> None:
    """`synchronous_commit` at least `on` for every session, but a stronger `remote_apply`
    configured on the server (or the database, or the role) is kept.

    Forcing `on` through the connection's options (as before) also lowered `remote_apply`,
    which an operator sets so that a mail answered `250` is visible on the standby at once.
    """

    @event.listens_for(engine, "connect")
    def _durable(dbapi_conn: Any, _record: Any) -> None:
        level = dbapi_conn.execute("SHOW synchronous_commit").fetchone()[0]
        if level in _WEAK_COMMIT_LEVELS:
            dbapi_conn.execute("SET synchronous_commit = on")
        dbapi_conn.commit()


# PostgreSQL's warning when a COMMIT stops waiting for the synchronous standby (a cancel, a
# statement timeout): src/backend/replication/syncrep.c, "canceling wait for synchronous
# replication due to user request", DETAIL "The transaction has already committed locally, but
# might not have been replicated to the standby." The COMMIT then returns success.
_NOT_REPLICATED = "might not have been replicated"
ERR_NOT_REPLICATED = "COMMIT not confirmed by the synchronous standby (might not have been replicated)"


class CommitWatch:
    """The PostgreSQL COMMITs of this process now in progress, and since when.

    With a synchronous standby (`synchronous_standby_names`), a COMMIT waits until the standby
    has the WAL; when the only standby is down it waits for ever. It must not be cancelled (it
    would commit locally anyway, unreplicated), so the edges ask how long the oldest one has
    waited and refuse new mail with a temporary failure past GATEWAY_DB_COMMIT_DEADLINE.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._next = 0

    def begin(self) -> int:
        with self._lock:
            self._next += 1
            self._started[self._next] = time.monotonic()
            return self._next

    def end(self, token: int) -> None:
        with self._lock:
            self._started.pop(token, None)

    def oldest_wait(self) -> float:
        """Seconds the oldest COMMIT in progress has waited (0 when none is)."""
        with self._lock:
            if not self._started:
                return 0.0
            return time.monotonic() - min(self._started.values())


commit_watch = CommitWatch()


def commit_stalled(deadline: float) -> str | None:
    """Why writes must be refused now: a COMMIT of this process has waited past `deadline`
    seconds (a synchronous standby that does not answer), or None."""
    waited = commit_watch.oldest_wait()
    if deadline > 0 and waited >= deadline:
        return f"commit waiting for the synchronous standby for {waited:.0f} s"
    return None


def guard_commits(engine: Engine) -> None:
    """Make a COMMIT that PostgreSQL reports as "might not have been replicated" a failure,
    and time every COMMIT in `commit_watch`.

    psycopg returns such a COMMIT as a success, the warning arriving only as a notice: the
    transaction is on the primary alone, and a failover would lose it. The acceptor must not
    answer `250` for it, so the commit raises the driver's OperationalError (SQLAlchemy wraps
    it like any database error: `451`, `503`). The sender retries; at worst the message is
    stored twice, which the processor files in one conversation by its Message-ID.
    """
    notices: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()

    @event.listens_for(engine, "connect")
    def _listen(dbapi_conn: Any, _record: Any) -> None:
        seen = notices[dbapi_conn] = []

        def on_notice(diag: Any) -> None:
            text = f"{diag.message_primary or ''} {diag.message_detail or ''}"
            if _NOT_REPLICATED in text:
                seen.append(text)

        dbapi_conn.add_notice_handler(on_notice)

    dialect = engine.dialect
    plain_commit = dialect.do_commit

    def do_commit(dbapi_conn: Any) -> None:
        # SQLAlchemy passes the pool's proxy; the notices are kept by the driver's connection
        seen = notices.get(getattr(dbapi_conn, "dbapi_connection", dbapi_conn))
        if seen:
            seen.clear()
        token = commit_watch.begin()
        try:
            plain_commit(dbapi_conn)
        finally:
            commit_watch.end(token)
        if seen:
            seen.clear()
            raise dialect.loaded_dbapi.OperationalError(ERR_NOT_REPLICATED)

    dialect.do_commit = do_commit  # type: ignore[method-assign]


# SQLite's companions of a database file: the WAL holds recent commits (whole pages of mail),
# the shared-memory index points into it.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_database_file(path: Path) -> None:
    """The SQLite file and its WAL readable by the gateway's user only (0600).

    SQLite creates a database 0644 (SQLITE_DEFAULT_FILE_PERMISSIONS) minus the umask, so on a
    usual umask of 022 every local user could read all mail. It gives the -wal and -shm files
    the database file's own mode (os_unix.c, findCreateFileMode), so creating the database
    file ourselves at 0600 before the first connection makes all three private; files from an
    older version are tightened here, at every start."""
    folder = path.parent
    if not folder.exists():
        private_dir(folder)
    # Only a file that is not there yet is opened (and closed). Closing any descriptor of the
    # database file drops every POSIX lock this process holds on it, its SQLite connections'
    # included (fcntl locks belong to the process, not the descriptor; sqlite.org/howtocorrupt.html
    # 2.2). With a connection's SHARED lock gone, another process's closing connection took
    # itself for the last one, checkpointed and removed the WAL under the others: `gateway
    # serve`'s processes, whose engines are made while other connections are open, met
    # "database disk image is malformed" under load (bench/outbound.py --roles serve).
    if not path.exists():
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            pass  # another process made it a moment ago; its mode is checked below
        else:
            os.close(fd)  # a new file: no connection of this process has it open
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        try:
            stat = file.stat()
        except FileNotFoundError:
            continue
        if stat.st_uid == os.geteuid() and stat.st_mode & 0o077:
            os.chmod(file, PRIVATE_FILE_MODE)


def get_engine(url: str, busy_timeout: float = 5.0) -> Engine:
    """One engine (and pool) per URL per process."""
    url = normalise_url(url)
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = make_engine(url, busy_timeout=busy_timeout)
    return engine


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def driver_execute(conn: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
    """Run SQL on the connection's driver cursor, inside its current transaction.

    For the few hot statements where SQLAlchemy's per-row machinery costs more than the
    database takes; the driver's errors come out as SQLAlchemy's (OperationalError,
    IntegrityError, ...), so callers handle one family of exceptions.
    """
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        return cursor.executemany(sql, params) if many else cursor.execute(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise exc_module.DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error) from exc


class DriverSQL:
    """One hot statement, written once with `?` placeholders, run on either back end's driver.

    SQLAlchemy Core spends 30-60 µs per execution on cache keys, parameter processing and
    result wrapping; the processor runs about six statements per message, which was a third of
    its CPU (bench/processor_cpu.py). For SQL that Core does not write in one fixed shape
    (IN lists as long as a chunk, multi-row VALUES); a fixed statement is better kept as Core
    and run through gateway/store/prepared.Prepared, which binds values itself. psycopg wants `%s` where sqlite3 wants `?`, so the
    statement must not contain either character otherwise. Parameters must already be in the
    driver's form: `bind_processor` gives the one for a column whose type converts values.
    """

    def __init__(self, sql: str) -> None:
        if "%" in sql or "'?'" in sql:
            raise ValueError("a DriverSQL statement may not contain % or a quoted ?")
        self.sql = sql
        self._by_dialect = {"sqlite": sql, "postgresql": sql.replace("?", "%s")}

    def __call__(self, conn: Connection, params: Any = ()) -> Any:
        """The driver's cursor, executed; fetch from it as from any DBAPI cursor."""
        return driver_execute(conn, self._by_dialect[conn.dialect.name], params)


_bind_processors: dict[tuple[str, str, str], Any] = {}


def bind_processor(conn: Connection, column: Any) -> Any:
    """The function SQLAlchemy would bind `column`'s values with on this connection: e.g.
    UTCDateTime's aware datetime becomes UTC, as text on SQLite ("2026-11-20 10:00:00.000000").

    The dialect's implementation of the type, not the type itself: the generic DateTime has no
    bind processor, and sqlite3's own datetime adapter would store "…+00:00", a second format
    that sorts and compares differently from every value SQLAlchemy writes.
    """
    key = (conn.dialect.name, column.table.name, column.name)  # a Column's == builds SQL
    found = _bind_processors.get(key)
    if found is None:
        processor = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        found = _bind_processors[key] = _none_safe(processor) if processor else _identity
    return found


_result_processors: dict[tuple[str, str, str], Any] = {}


def result_processor(conn: Connection, column: Any) -> Any:
    """The function SQLAlchemy would read `column`'s driver values with (SQLite's datetime
    text back into an aware datetime), for rows fetched from the driver's cursor."""
    key = (conn.dialect.name, column.table.name, column.name)
    found = _result_processors.get(key)
    if found is None:
        processor = column.type.dialect_impl(conn.dialect).result_processor(conn.dialect, None)
        found = _result_processors[key] = processor or _identity
    return found


def _none_safe(processor: Any) -> Any:
    return lambda value: None if value is None else processor(value)


def _identity(value: Any) -> Any:
    return value


_write_locks: dict[str, threading.RLock] = {}
_busy_timeouts: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()
_write_locks_guard = threading.Lock()


def sqlite_write_lock(engine: Engine) -> threading.RLock | None:
    """The lock this process's SQLite writers of `engine`'s database queue on (see write_tx)."""
    if not is_sqlite(engine):
        return None
    key = str(engine.url)
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.RLock())


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: BEGIN IMMEDIATE on SQLite, ordinary on PostgreSQL.

    On SQLite, writers of this process queue on a lock first. SQLite lets one writer in at a
    time and makes the others retry in its busy handler, which sleeps up to 100 ms between
    tries: twenty API requests writing at once waited hundreds of milliseconds for a lock
    held a millisecond each (bench/outbound.py). Other processes still meet the busy handler.
    """
    lock = sqlite_write_lock(engine)
    if lock is not None and not lock.acquire(timeout=_busy_timeout(engine)):
        raise exc_module.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
            "database is locked (by other writers of this process)"))
    # ...and the writers of other processes on a file lock (gateway/store/writers.py).
    others = _process_writers(engine) if lock is not None else None
    if others is not None and not others.acquire(_busy_timeout(engine)):
        lock.release()  # type: ignore[union-attr]
        raise exc_module.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
            "database is locked (by writers of another process)"))
    try:
        with engine.connect().execution_options(write=True) as conn:
            with conn.begin():
                yield conn
    finally:
        if others is not None:
            others.release()
        if lock is not None:
            lock.release()


def _process_writers(engine: Engine) -> ProcessWriters | None:
    """The database file's cross-process writer lock; None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return writers_of(Path(database))


def is_busy(exc: exc_module.OperationalError) -> bool:
    """SQLite's write lock is held by another connection (worth retrying in a moment)."""
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


class KeptConnection:
    """The one connection a group-commit writer keeps from one transaction to the next.

    Checking a connection out of the pool and back in (where the pool resets it with a
    ROLLBACK) for every group commit cost the event loop more than the batch's own INSERTs.
    The writer's lock orders its transactions, so the connection is used by one thread at a
    time: the loop runs the statements, the writer thread the commit, then hands it back.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None

    def take(self) -> Connection:
        conn, self._conn = self._conn, None
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect().execution_options(write=True)
        return conn

    def give_back(self, conn: Connection) -> None:
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@dataclass
class InlineTx:
    """A SQLite write transaction whose statements run on the event loop and whose commit (the
    fsync, which releases the GIL) runs in a thread; the process's write lock is held from
    `begin_inline` until the commit or `abandon`."""

    conn: Connection
    lock: threading.RLock
    kept: KeptConnection | None = None

    async def commit(self, loop: asyncio.AbstractEventLoop, executor: Executor) -> None:
        try:
            await loop.run_in_executor(executor, self._commit)
        finally:
            self.lock.release()

    def _commit(self) -> None:
        try:
            self.conn.commit()
        except BaseException:
            self.conn.close()
            raise
        if self.kept is not None:
            self.kept.give_back(self.conn)
        else:
            self.conn.close()

    def abandon(self) -> None:
        """Roll back and let the other writers in."""
        self.conn.close()
        self.lock.release()


def begin_inline(engine: Engine, lock: threading.RLock, kept: KeptConnection | None = None) -> InlineTx | None:
    """Begin an InlineTx without ever waiting, as the loop must not: the process's write lock
    is taken without blocking and `engine` gives up at once on SQLite's lock (busy_timeout 0);
    None when either is held, and the caller hands the work to its writer thread instead.
    With `kept` (whose engine is `engine`), its connection is used and handed back after the
    commit.

    Group commits (gateway/inbound/acceptor.py, gateway/store/batching.py) run their statements this way:
    handing each statement to a thread cost more in GIL hand-offs than the statements."""
    if not lock.acquire(blocking=False):
        return None
    conn = kept.take() if kept is not None else engine.connect().execution_options(write=True)
    try:
        conn.begin()
    except exc_module.OperationalError as exc:
        conn.close()
        lock.release()
        if is_busy(exc):
            return None
        raise
    except BaseException:
        conn.close()
        lock.release()
        raise
    return InlineTx(conn, lock, kept)


def _busy_timeout(engine: Engine) -> float:
    return _busy_timeouts.get(engine, 5.0)


def busy_timeout_of(engine: Engine) -> float:
    """Seconds `engine`'s SQLite connections wait for a lock held by another connection (its
    `busy_timeout`): the budget of writers that ask again themselves instead of letting SQLite wait."""
    return _busy_timeout(engine)


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn


@contextmanager
def read_now(engine: Engine) -> Iterator[Connection]:
    """Reads that need no snapshot shared between their statements, for a page read often.

    On PostgreSQL without a transaction (psycopg's autocommit, set on the client: no round
    trip): under READ COMMITTED each statement takes its own snapshot inside a transaction
    too, so BEGIN and COMMIT bought nothing but two round trips of the inbox page's nine
    (bench/web_inbox.py). Each statement still sees everything committed before it started,
    so reading a counter first and rows second keeps "the rows include every event up to the
    counter". On SQLite, where a transaction costs no round trip, a read transaction."""
    if engine.dialect.name != "postgresql":
        with read_tx(engine) as conn:
            yield conn
        return
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


async def read_soon(engine: Engine, reader: Engine | None, work: Callable[[Connection], T], *,
                    snapshot: bool = True) -> T:
    """`work` on a read connection without stalling the loop: on SQLite's loop reader, which
    never waits for a lock (gateway/api/auth.loop_reader), else, or when it would wait, in a
    thread. An indexed read that SQLite answers in microseconds cost more in a thread's GIL
    hand-offs than it took (bench/outbound.py, bench/form_submit.py). Without `snapshot` the
    thread reads as `read_now` does (no transaction on PostgreSQL; the loop reader takes none
    either): for work whose statements need no snapshot in common."""
    if reader is not None:
        try:
            with reader.connect() as conn:
                return work(conn)
        except exc_module.OperationalError:
            pass

    def in_thread() -> T:
        with (read_tx if snapshot else read_now)(engine) as conn:
            return work(conn)
    return await asyncio.to_thread(in_thread)


def insert_ignore(conn: Connection, table: Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def migrations_dir() -> Path:
    return Path(str(resources.files("gateway.store") / "migrations"))


def alembic_config(url: str) -> Any:
    """Alembic's configuration for the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema to the newest revision (idempotent; safe at every start)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def schema_revision(conn: Connection) -> str:
    """The revision a database is at ("" before the first migration)."""
    from alembic.migration import MigrationContext

    heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads))


def known_revisions() -> set[str]:
    """Every revision this gateway's migrations know (a backup from a newer one cannot be restored)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(migrations_dir()))
    return {script.revision for script in scripts.walk_revisions()}


def dialect_insert(conn: Connection, table: Table) -> Any:
    """INSERT with the back end's `on_conflict_do_*` (SQLite and PostgreSQL spell it alike)."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
