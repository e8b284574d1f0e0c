"""The Procfile's roles, each run twice on one PostgreSQL database, under load: exactly-once counts.

Two `gateway smtp` on one port and two `gateway web` on another (GATEWAY_REUSE_PORT: the
kernel spreads the connections), two `gateway worker`, a real relay sink. A few hundred mails
over many SMTP connections, replies posted over many HTTP connections; then every 250 is one
stored row, processed once (one claim, one message row), and every outbound mail (the replies
and any automatic mail the workers send: each inquiry notifies its studio's owner, the two
workers queueing those mails side by side) reached the relay once, under its own Message-ID.
"""
from __future__ import annotations

import http.client
import json
import re
import signal
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy import Engine, func, select

from gateway.access.studios import add_studio
from gateway.store.db import make_engine, write_tx
from gateway.store.tables import INBOUND, MESSAGE, NOTIFICATION, OUTBOUND_JOB
from tests.conftest import MAIL_DOMAIN, SECRET, gateway_subprocess_env, send_on
from tests.mail import make_mail
from tests.relay_sink import RelaySink, free_port
from tests.test_serve import gateway_command

STUDIOS = ("inkwell", "papier", "kupfer")
THREADS = 8
MAILS_PER_CONNECTION = 3
CONNECTIONS_PER_THREAD = 12          # 8 × 12 × 3 = 288 mails over 96 SMTP connections
REPLIES = 48                         # each over its own HTTP connection
BOUND = 120.0                        # seconds any one wait may take on a busy machine


class Role:
    """One `gateway ROLE` subprocess, its stderr collected line by line."""

    def __init__(self, role: str, env: dict[str, str], cwd: Path) -> None:
        self.role = role
        self.proc = subprocess.Popen(gateway_command() + [role], env=env, cwd=cwd,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.log: list[str] = []
        self._logged = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()
        with self._logged:
            self.log.append("")  # end of output
            self._logged.notify_all()

    def wait_log(self, pattern: str, timeout: float = BOUND) -> re.Match[str] | None:
        def found() -> re.Match[str] | None:
            for line in self.log:
                if (match := re.search(pattern, line)) is not None:
                    return match
            return None

        with self._logged:
            self._logged.wait_for(lambda: found() is not None or (self.log and self.log[-1] == ""), timeout)
            return found()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=BOUND)
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def server_pid(port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the server end of the loopback connection from `client_port` to
    `port`: the kernel's socket table (/proc/net/tcp) names the socket, /proc/PID/fd its owner."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
            break
    if inode is None:
        return None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    return None


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        done = conn.execute(select(func.count()).select_from(INBOUND).where(INBOUND.c.status == "done")).scalar_one()
        unsent = conn.execute(select(func.count()).select_from(OUTBOUND_JOB)
                              .where(OUTBOUND_JOB.c.status != "sent")).scalar_one()
        unsent += conn.execute(select(func.count()).select_from(NOTIFICATION)   # their mails not queued yet
                               .where(NOTIFICATION.c.mail_ref.is_(None))).scalar_one()
    return done, unsent


def _until(condition: Callable[[], bool], timeout: float = BOUND) -> bool:
    """Poll the database (bounded): the roles are other processes, with no hook to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_two_of_each_role_on_one_postgres_take_process_and_send_each_mail_once(
        tmp_path: Path, pg_database_url: str) -> None:
    engine = make_engine(pg_database_url)
    tokens: dict[str, str] = {}
    with write_tx(engine) as conn:
        for slug in STUDIOS:
            tokens[slug] = add_studio(conn, slug, slug.title(), f"owner@{slug}.example")[1]
    smtp_port, http_port = free_port(), free_port()
    roles: list[Role] = []
    with RelaySink() as sink:
        env = gateway_subprocess_env()
        env.update(GATEWAY_DATABASE_URL=pg_database_url, GATEWAY_SECRET_KEY=SECRET,
                   GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_MAIL_DOMAIN=MAIL_DOMAIN,
                   GATEWAY_SMTP_PORT=str(smtp_port), GATEWAY_HTTP_PORT=str(http_port),
                   GATEWAY_REUSE_PORT="true", GATEWAY_SMTP_RELAY_URL=sink.url,
                   GATEWAY_POLL_INTERVAL="0.1", GATEWAY_PURGE_INTERVAL_HOURS="0",
                   GATEWAY_PUBLIC_URL="https://gateway.example")   # so the owners are notified
        try:
            for role in ("smtp", "smtp", "web", "web", "worker", "worker"):
                roles.append(Role(role, env, tmp_path))
            for role in roles:
                assert role.wait_log(r"gateway ready"), f"{role.role}: {''.join(role.log)}"
            smtp_pids = [r.proc.pid for r in roles if r.role == "smtp"]
            web_pids = [r.proc.pid for r in roles if r.role == "web"]

            # Mail over many connections at once; each connection is served by one smtp process.
            def send_batch(thread: int) -> list[tuple[int, str, int | None]]:
                answers = []
                for c in range(CONNECTIONS_PER_THREAD):
                    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=BOUND) as client:
                        served_by = server_pid(smtp_port, client.sock.getsockname()[1], smtp_pids)
                        for m in range(MAILS_PER_CONNECTION):
                            n = (thread * CONNECTIONS_PER_THREAD + c) * MAILS_PER_CONNECTION + m
                            guest = f"g{n}@example.org"
                            reply = send_on(client, make_mail(subject=f"Anfrage {n}", from_=guest),
                                            f"{STUDIOS[n % len(STUDIOS)]}@{MAIL_DOMAIN}", guest)
                            answers.append((reply.code, reply.text, served_by))
                return answers

            with ThreadPoolExecutor(THREADS) as pool:
                answers = [a for batch in pool.map(send_batch, range(THREADS)) for a in batch]
            accepted = [int(re.search(r"\((\d+)\)", text).group(1))  # type: ignore[union-attr]
                        for code, text, _ in answers if code == 250]
            assert len(accepted) == THREADS * CONNECTIONS_PER_THREAD * MAILS_PER_CONNECTION, \
                [a for a in answers if a[0] != 250][:5]
            assert {pid for *_, pid in answers} == set(smtp_pids)   # both smtp processes took mail
            assert _until(lambda: _counts(engine)[0] == len(accepted)), _counts(engine)

            # Replies over many HTTP connections, both web processes taking some.
            with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=BOUND,
                              headers={"Authorization": f"Bearer {tokens['inkwell']}"}) as api:
                conversations = api.get("/api/v1/conversations", params={"limit": REPLIES}).json()["items"]
            assert len(conversations) == REPLIES

            def reply(conversation: dict[str, object]) -> tuple[int, int | None]:
                connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=BOUND)
                try:
                    connection.connect()
                    connection.request("POST", f"/api/v1/conversations/{conversation['id']}/replies",
                                       body=json.dumps({"text": f"Danke, {conversation['id']}"}),
                                       headers={"Authorization": f"Bearer {tokens['inkwell']}",
                                                "Content-Type": "application/json"})
                    status = connection.getresponse().status
                    return status, server_pid(http_port, connection.sock.getsockname()[1], web_pids)
                finally:
                    connection.close()

            with ThreadPoolExecutor(THREADS) as pool:
                replies = list(pool.map(reply, conversations))
            assert [code for code, _ in replies] == [202] * REPLIES
            assert {pid for _, pid in replies} == set(web_pids)    # both web processes took replies

            assert _until(lambda: _counts(engine)[1] == 0), _counts(engine)
            with engine.connect() as conn:
                rows = conn.execute(select(INBOUND.c.id, INBOUND.c.status, INBOUND.c.attempts)).all()
                per_inbound = conn.execute(select(MESSAGE.c.inbound_mail_id, func.count())
                                           .where(MESSAGE.c.inbound_mail_id.is_not(None))
                                           .group_by(MESSAGE.c.inbound_mail_id)).all()
                outbound = conn.execute(select(MESSAGE.c.message_id).join(
                    OUTBOUND_JOB, OUTBOUND_JOB.c.message_id == MESSAGE.c.id)).scalars().all()
                reply_count = conn.execute(select(func.count()).select_from(MESSAGE).where(
                    MESSAGE.c.direction == "outbound", MESSAGE.c.automatic.is_(False))).scalar_one()
                told = conn.execute(select(NOTIFICATION.c.mail_ref)).scalars().all()
            # Stored once: every 250 named its own row, and there is no other.
            assert sorted(accepted) == sorted(row.id for row in rows)
            # Processed once: one claim each (a second worker's claim would count an attempt),
            # and one message row each.
            assert {(row.status, row.attempts) for row in rows} == {("done", 1)}
            assert sorted(i for i, _ in per_inbound) == sorted(accepted)
            assert {n for _, n in per_inbound} == {1}
            # Sent once: what the relay got is exactly the outbox, each Message-ID once.
            assert reply_count == REPLIES
            # Told once: one notification per inquiry, each with a mail of its own.
            assert len(told) == len(set(told)) == len(accepted) and all(told)
            with sink.lock:
                relayed = [r.message["Message-ID"].strip("<>") for r in sink.received]
            assert len(relayed) == len(set(relayed)) == len(outbound) == REPLIES + len(accepted)
            assert set(relayed) == set(outbound)

            for role in roles:
                assert role.stop() == 0, "".join(role.log)
            stored = [role.wait_log(r"acceptor: (\d+) messages") for role in roles if role.role == "smtp"]
            assert sum(int(m.group(1)) for m in stored if m) == len(accepted)
        finally:
            for role in roles:
                role.kill()
            engine.dispose()


def test_a_second_listener_on_a_port_in_use_is_refused_without_reuse_port(tmp_path: Path) -> None:
    """Off by default: a gateway started twice by mistake says so instead of sharing the port."""
    import socket

    from gateway.runtime import listening_socket
    from gateway.settings import Settings

    plain = Settings(data_dir=tmp_path, secret_key=SECRET)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="GATEWAY_REUSE_PORT=true"):
            listening_socket("127.0.0.1", port, plain)
    shared = Settings(data_dir=tmp_path, secret_key=SECRET, reuse_port=True)
    with listening_socket("127.0.0.1", 0, shared) as first:
        port = first.getsockname()[1]
        with listening_socket("127.0.0.1", port, shared) as second:
            assert second.getsockname()[1] == port
