"""`gateway serve` as one process: SMTP, HTTP API and worker together, end to end."""
from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select

from gateway.store.tables import INBOUND
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.mail import make_mail


def test_all_roles_in_one_process_deliver_mail_into_the_api(tmp_path: Path, database_url: str) -> None:
    running: RunningGateway = start_gateway(make_settings(tmp_path, database_url), roles=("smtp", "web", "worker"))
    try:
        studio = running.add_studio("inkwell")
        with running.smtp() as client:
            for i in range(5):
                client.sendmail(f"g{i}@example.org", [studio.address],
                                make_mail(subject=f"Anfrage {i}", from_=f"g{i}@example.org"))
        processor = running.gateway.processor
        assert processor is not None and processor.wait_processed(5, timeout=30)
        items = running.api(studio.token).get("/api/v1/conversations").json()["items"]
        assert sorted(i["subject"] for i in items) == [f"Anfrage {i}" for i in range(5)]
    finally:
        running.stop()


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def test_gateway_serve_command_starts_answers_and_stops_cleanly(tmp_path: Path) -> None:
    """The README's run command, minus the install: a fresh data dir, nothing else configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_SMTP_PORT="0", GATEWAY_HTTP_PORT="0",
               GATEWAY_MAIL_DOMAIN="mail.test")
    add = subprocess.run(gateway_command() + ["studio", "add", "inkwell", "--name", "Inkwell",
                                              "--owner-email", "owner@inkwell.example", "--json"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    assert '"address": "inkwell@mail.test"' in add.stdout
    proc = subprocess.Popen(gateway_command() + ["serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        ready = ""
        for line in proc.stderr:
            if "gateway ready" in line:
                ready = line
                break
        match = re.search(r"SMTP on 127\.0\.0\.1:(\d+), HTTP on (http://127\.0\.0\.1:\d+)", ready)
        assert match, ready
        with smtplib.SMTP("127.0.0.1", int(match.group(1)), timeout=30) as client:
            client.sendmail("guest@example.org", ["inkwell@mail.test"], make_mail())
        assert httpx.get(match.group(2) + "/readyz", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert (tmp_path / "data" / "secret_key").stat().st_mode & 0o077 == 0
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'gateway.db'}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(INBOUND)).scalar_one() == 1
    engine.dispose()


def test_settle_heap_takes_start_up_objects_out_of_full_collections() -> None:
    """After start-up, a full collection must not walk the process's long-lived objects (it
    took ~50 ms, stalling every SMTP and API answer meanwhile); later garbage is still found."""
    import gc

    from gateway.runtime import settle_heap

    alive = len(gc.get_objects())
    try:
        settle_heap()
        assert gc.get_freeze_count() > alive // 2
        assert len(gc.get_objects()) < alive // 10

        class Cycle:
            other: object = None

        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2  # new garbage in cycles is still collected
    finally:
        gc.unfreeze()


class Serve:
    """`gateway serve` as a subprocess on a fresh data directory, with one studio."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_SMTP_PORT="0", GATEWAY_HTTP_PORT="0",
                        GATEWAY_MAIL_DOMAIN="mail.test", **env)
        add = subprocess.run(gateway_command() + ["studio", "add", "inkwell", "--name", "Inkwell",
                                                  "--owner-email", "owner@inkwell.example", "--json"],
                             env=self.env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
        self.token = re.search(r'"token": "([^"]+)"', add.stdout).group(1)  # type: ignore[union-attr]
        self.proc = subprocess.Popen(gateway_command() + ["serve"], env=self.env, cwd=tmp_path,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.ready = next((line for line in self.proc.stderr if "gateway ready" in line), "")
        match = re.search(r"SMTP on 127\.0\.0\.1:(\d+), HTTP on (http://127\.0\.0\.1:\d+)", self.ready)
        assert match, self.ready
        self.smtp_port, self.base_url = int(match.group(1)), match.group(2)

    def send(self, subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.sendmail("guest@example.org", ["inkwell@mail.test"], make_mail(subject=subject))

    def wait_listed(self, subjects: set[str], timeout: float = 60) -> bool:
        """Poll the API (bounded) until every subject is listed: a second process has no hook to wait on."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}) as api:
            while time.monotonic() < deadline:
                listed = {item["subject"] for item in api.get("/api/v1/conversations").json()["items"]}
                if subjects <= listed:
                    return True
                time.sleep(0.05)
        return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _gone(pid: int, timeout: float = 30) -> bool:
    """True once `pid` no longer runs (a zombie not yet reaped counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_serve_runs_its_worker_in_a_child_process_that_restarts_and_stops_with_it(tmp_path: Path) -> None:
    """The processor beside the servers, not under their GIL; still one command to run and stop."""
    serve = Serve(tmp_path, GATEWAY_SERVE_WORKER_PROCESS="true")
    try:
        match = re.search(r"worker running in process (\d+)", serve.ready)
        assert match, serve.ready
        child = int(match.group(1))
        assert _parent_of(child) == serve.proc.pid
        serve.send("vor dem Absturz")
        assert serve.wait_listed({"vor dem Absturz"})

        os.kill(child, signal.SIGKILL)           # a worker that dies is started again
        assert _gone(child)
        serve.send("nach dem Absturz")
        assert serve.wait_listed({"vor dem Absturz", "nach dem Absturz"})

        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=60) == 0
        assert serve.proc.stderr is not None
        log = serve.proc.stderr.read()
        restarted = re.search(r"worker process (\d+) started", log)
        assert restarted and "exited with code -9" in log, log
        assert _gone(int(restarted.group(1)))  # no worker outlives its server
    finally:
        serve.close()


def test_serve_keeps_one_process_when_told(tmp_path: Path) -> None:
    serve = Serve(tmp_path, GATEWAY_SERVE_WORKER_PROCESS="false")
    try:
        assert "worker running (inbound processing" in serve.ready
        serve.send("ein Prozess")
        assert serve.wait_listed({"ein Prozess"})
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=60) == 0
    finally:
        serve.close()
