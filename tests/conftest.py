"""Shared fixtures: real databases (SQLite files, and PostgreSQL when configured) and a real
gateway (aiosmtpd + uvicorn) on ephemeral ports, driven over real sockets.

Every storage test runs on SQLite; with GATEWAY_TEST_DATABASE_URL set it runs on PostgreSQL
too, in a throwaway database cloned from a migrated template, so runs never collide.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import smtplib
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from gateway.store.db import dispose_engines, make_engine, migrate, normalise_url, write_tx
from gateway.inbound.processor import Processed, drain
from gateway.runtime import REACTIONS
from gateway.runtime import Gateway
from gateway.settings import Settings
from gateway.access.studios import add_studio
from tests.dns_server import Zone, dns_server

PG_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (["postgres"] if PG_URL else [])
MAIL_DOMAIN = "mail.test"
SECRET = "test-secret-key-0123456789abcdef"


def _pg_admin() -> Engine:
    return create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")


def _pg_url_for(dbname: str) -> str:
    base = normalise_url(PG_URL)
    return base.rsplit("/", 1)[0] + "/" + dbname


# The modules that take longest, started first: with one test process per core (make test runs
# pytest-xdist with --dist loadfile, which hands out modules in collection order), a long module
# collected last would run alone at the end while the other cores idle.
_LONG_MODULES = ("test_openapi_fuzz.py", "test_serve.py", "test_metrics.py", "test_cli.py",
                 "test_api_contract_errors.py", "test_several_processes.py", "test_packaging.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _LONG_MODULES.index(name) if name in _LONG_MODULES else len(_LONG_MODULES)
    items.sort(key=rank)  # stable: the order inside each module, and of the others, stays


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    dispose_engines()
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not PG_URL:
        yield ""
        return
    admin = _pg_admin()
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # CI sets the URL: an unreachable server is a failure, not a skip
        pytest.exit(f"GATEWAY_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {exc}", returncode=3)
    name = f"gwtpl_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    migrate(_pg_url_for(name))
    dispose_engines()
    yield name
    while _PG_POOL:
        _pg_drop(admin, _PG_POOL.pop())
    _pg_drop(admin, name)
    admin.dispose()


# A throwaway database costs about a second to create and drop (CREATE DATABASE copies the
# template and checkpoints; DROP unlinks its files), and about 1,600 tests take one: a third of
# the suite's time. So each test process keeps the clones it made and hands a finished one to
# the next test after emptying it: every table's rows deleted and every sequence restarted, in
# one transaction of a few milliseconds. Only a clone whose schema still matches the template
# is reused (a test may migrate, restore or alter it); any other is dropped. The next test sees
# exactly what a fresh clone holds: the migrated schema, no rows, ids from 1.
_PG_POOL: list[str] = []
_PG_MADE: set[str] = set()
_PG_FINGERPRINT = text("""
    SELECT md5(concat_ws('|',
        (SELECT string_agg(table_schema || '.' || table_name || '.' || column_name || ':' || data_type
                           || ':' || coalesce(column_default, ''), ',' ORDER BY 1)
           FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')),
        (SELECT string_agg(indexname || indexdef, ',' ORDER BY 1) FROM pg_indexes WHERE schemaname = 'public'),
        (SELECT string_agg(conname || pg_get_constraintdef(oid), ',' ORDER BY 1) FROM pg_constraint
           WHERE connamespace = 'public'::regnamespace),
        (SELECT string_agg(proname, ',' ORDER BY 1) FROM pg_proc WHERE pronamespace = 'public'::regnamespace),
        (SELECT string_agg(tgname, ',' ORDER BY 1) FROM pg_trigger WHERE NOT tgisinternal),
        (SELECT string_agg(version_num, ',' ORDER BY 1) FROM alembic_version),
        (SELECT string_agg(array_to_string(setconfig, ','), ';') FROM pg_db_role_setting
           WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))))
""")
_PG_TEMPLATE_FINGERPRINTS: dict[str, str | None] = {}


def _pg_fingerprint(conn: Connection) -> str | None:
    """What a clone's schema is made of, or None when it has no alembic_version table."""
    if conn.execute(text("SELECT to_regclass('public.alembic_version')")).scalar() is None:
        return None
    return conn.execute(_PG_FINGERPRINT).scalar()


def _pg_empty_if_unchanged(url: str, expected: str | None) -> bool:
    """Delete every row and restart every sequence, so the clone holds what the template holds;
    only if its schema still has the template's fingerprint (else False, and nothing done)."""
    engine = create_engine(normalise_url(url))
    try:
        with engine.begin() as conn:
            if expected is None or _pg_fingerprint(conn) != expected:
                return False
            tables = conn.execute(text(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'")).scalars().all()
            sequences = conn.execute(text(
                "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'")).scalars().all()
            # Foreign keys are triggers; replica mode skips them, so the order of deletes is free.
            statements = ["SET LOCAL session_replication_role = replica"]
            statements += [f"DELETE FROM {table}" for table in tables]
            statements += [f"SELECT setval('{sequence}', 1, false)" for sequence in sequences]
            conn.exec_driver_sql(";".join(statements))
            return True
    finally:
        engine.dispose()


def _pg_drop(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def _throwaway_pg_database(template: str | None) -> Iterator[str]:
    """A database holding what `template` holds (or an empty, unmigrated one without it), for one test.

    With a template it is a clone this process made before and emptied, or a new clone; without
    one it is created and dropped."""
    admin = _pg_admin()
    name = _PG_POOL.pop() if template and _PG_POOL else f"gwt_{uuid.uuid4().hex[:12]}"
    url = _pg_url_for(name)
    try:
        if not (template and name in _PG_MADE):
            clone = f' TEMPLATE "{template}" STRATEGY WAL_LOG' if template else ""
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"{clone}'))
            if template:
                _PG_MADE.add(name)
                if template not in _PG_TEMPLATE_FINGERPRINTS:  # a fresh clone is the template
                    engine = create_engine(normalise_url(url))
                    with engine.connect() as conn:
                        _PG_TEMPLATE_FINGERPRINTS[template] = _pg_fingerprint(conn)
                    engine.dispose()
        yield url
    finally:
        dispose_engines()
        reusable = False
        if template:
            with admin.connect() as conn:  # whatever a test left connected (a killed child's session)
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
            try:
                reusable = _pg_empty_if_unchanged(url, _PG_TEMPLATE_FINGERPRINTS[template])
            except Exception:  # a clone a test broke is simply not reused
                reusable = False
        if reusable:
            _PG_POOL.append(name)
        else:
            _PG_MADE.discard(name)
            _pg_drop(admin, name)
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        dispose_engines()
        return
    with _throwaway_pg_database(request.getfixturevalue("pg_template")) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A SQLite database file, for scenarios that exist only there (locking it from outside)."""
    path = tmp_path / "gateway-sqlite.db"
    shutil.copyfile(sqlite_template, path)
    yield f"sqlite:///{path}"
    dispose_engines()


@pytest.fixture
def pg_database_url(pg_template: str) -> Iterator[str]:
    """A throwaway PostgreSQL database, for scenarios that exist only there."""
    if not pg_template:
        pytest.skip("PostgreSQL scenarios run when GATEWAY_TEST_DATABASE_URL is set (as in CI)")
    with _throwaway_pg_database(pg_template) as url:
        yield url


# The DNS server every gateway of the tests asks (GATEWAY_DNS_SERVERS): a real one on an
# ephemeral port, so authentication (gateway/inbound/authentication.py) runs for every mail as
# in production, and no test resolves a name on the internet. It knows one record: the guests'
# usual domain, example.org, authorises the test client's address (127.0.0.1) by SPF, so their
# mail is aligned and acknowledged as a real mailbox provider's would be; it has no DMARC
# record. Tests that need more start their own (tests/dns_server.py).
_OFFLINE_DNS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def offline_dns() -> Iterator[str]:
    zone = Zone()
    zone.txt("example.org", "v=spf1 ip4:127.0.0.1 -all")
    with dns_server(zone) as running:
        _OFFLINE_DNS.append(running.servers)
        yield running.servers
        _OFFLINE_DNS.clear()


def gateway_subprocess_env() -> dict[str, str]:
    """This process's environment without any GATEWAY_* setting, for a `gateway` subprocess a
    test configures itself, but with the offline DNS server: no test resolves on the internet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if _OFFLINE_DNS:
        env["GATEWAY_DNS_SERVERS"] = _OFFLINE_DNS[0]
    return env


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data", database_url=database_url, mail_domain=MAIL_DOMAIN,
        secret_key=SECRET, smtp_host="127.0.0.1", smtp_port=0, http_host="127.0.0.1", http_port=0,
        poll_interval=0.05, db_busy_timeout=2.0, dns_servers=_OFFLINE_DNS[0] if _OFFLINE_DNS else "",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.resolved_database_url, busy_timeout=2.0)
    yield engine
    engine.dispose()


@dataclass
class StudioInfo:
    id: int
    slug: str
    token: str

    @property
    def address(self) -> str:
        return f"{self.slug}@{MAIL_DOMAIN}"


@dataclass
class SmtpReply:
    code: int
    text: str

    @property
    def inbound_id(self) -> int | None:
        match = re.search(r"\((\d+)\)", self.text)
        return int(match.group(1)) if match else None


@dataclass
class RunningGateway:
    """A gateway on its own event loop thread, as `gateway serve` runs it."""

    gateway: Gateway
    engine: Engine
    settings: Settings
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    studios: dict[str, StudioInfo] = field(default_factory=dict)
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def smtp_port(self) -> int:
        assert self.gateway.smtp_address
        return self.gateway.smtp_address[1]

    @property
    def base_url(self) -> str:
        assert self.gateway.http_address
        host, port = self.gateway.http_address
        return f"http://{host}:{port}"

    def add_studio(self, slug: str, name: str | None = None, owner: str | None = None,
                   country: str | None = None) -> StudioInfo:
        with write_tx(self.engine) as conn:
            studio_id, token = add_studio(conn, slug, name or slug.title(), owner or f"owner@{slug}.example",
                                          country=country)
        info = self.studios[slug] = StudioInfo(studio_id, slug, token)
        return info

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30)

    def send(self, raw: bytes | str, rcpt: str | list[str], mail_from: str = "guest@example.org") -> SmtpReply:
        """One message over a fresh SMTP connection; the DATA reply (or the first refusal)."""
        with self.smtp() as client:
            return send_on(client, raw, rcpt, mail_from)

    def process(self) -> list[Processed]:
        """Run the pipeline's back half now, as the worker would."""
        return drain(self.engine, self.settings, REACTIONS)

    def api(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=30)
        self.clients.append(client)  # closed in stop()
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.engine.dispose()


def send_on(client: smtplib.SMTP, raw: bytes | str, rcpt: str | list[str],
            mail_from: str = "guest@example.org") -> SmtpReply:
    data = raw.encode() if isinstance(raw, str) else raw
    client.ehlo_or_helo_if_needed()
    options = ["SMTPUTF8"] if any(ord(c) > 127 for c in mail_from) else []
    code, msg = client.mail(mail_from, options)
    if code != 250:
        client.rset()
        return SmtpReply(code, msg.decode())
    accepted = 0
    last = SmtpReply(0, "")
    for address in [rcpt] if isinstance(rcpt, str) else rcpt:
        code, msg = client.rcpt(address)
        last = SmtpReply(code, msg.decode())
        accepted += code in (250, 251)
    if not accepted:
        client.rset()
        return last
    code, msg = client.data(data)
    return SmtpReply(code, msg.decode())


def start_gateway(settings: Settings, roles: tuple[str, ...] = ("smtp", "web"), http_port: int = 0) -> RunningGateway:
    """`http_port`: a port chosen beforehand, for settings that name it (GATEWAY_PUBLIC_URL)."""
    engine = make_engine(settings.resolved_database_url, busy_timeout=2.0)
    gateway = Gateway(settings, roles, engine=engine)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def runner() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            smtp_sock = socket.create_server(("127.0.0.1", 0)) if "smtp" in roles else None
            http_sock = socket.create_server(("127.0.0.1", http_port)) if "web" in roles else None
            await gateway.start(smtp_sock=smtp_sock, http_sock=http_sock)

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=runner, name="gateway", daemon=True)
    thread.start()
    assert started.wait(60), "gateway did not start"
    if failure:
        raise failure[0]
    return RunningGateway(gateway, engine, settings, loop, thread)


@pytest.fixture
def gw(settings: Settings) -> Iterator[RunningGateway]:
    """SMTP + HTTP API; the processor is driven explicitly with `gw.process()`."""
    running = start_gateway(settings)
    yield running
    running.stop()


FIXTURES = Path(__file__).parent / "fixtures" / "eml"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()
