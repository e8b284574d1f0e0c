"""`gateway serve` as one process: SMTP, HTTP API and worker together, end to end."""
from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx
from sqlalchemy import create_engine, func, select, update

from gateway.store.tables import INBOUND
from tests.conftest import RunningGateway, make_settings, start_gateway, gateway_subprocess_env
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
    env = gateway_subprocess_env()
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
        self.env = gateway_subprocess_env()
        self.env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_SMTP_PORT="0", GATEWAY_HTTP_PORT="0",
                        GATEWAY_MAIL_DOMAIN="mail.test", **env)
        add = subprocess.run(gateway_command() + ["studio", "add", "inkwell", "--name", "Inkwell",
                                                  "--owner-email", "owner@inkwell.example", "--json"],
                             env=self.env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
        self.token = re.search(r'"token": "([^"]+)"', add.stdout).group(1)  # type: ignore[union-attr]
        self.proc = subprocess.Popen(gateway_command() + ["serve"], env=self.env, cwd=tmp_path,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.log: list[str] = []
        self._logged = threading.Condition()
        threading.Thread(target=self._read_log, args=(self.proc.stderr,), daemon=True).start()
        self.ready = self.wait_log(r"gateway ready.*", timeout=120) or ""
        match = re.search(r"SMTP on 127\.0\.0\.1:(\d+), HTTP on (http://127\.0\.0\.1:\d+)", self.ready)
        assert match, "".join(self.log)
        self.smtp_port, self.base_url = int(match.group(1)), match.group(2)

    def _read_log(self, stream: IO[str]) -> None:
        for line in stream:
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()
        with self._logged:
            self.log.append("")          # the end of the output: waiting further is pointless
            self._logged.notify_all()

    def wait_log(self, pattern: str, *, after: int = 0, timeout: float = 60) -> str | None:
        """The first line from index `after` on that matches, once the server has written it."""
        def found() -> str | None:
            for line in self.log[after:]:
                if (match := re.search(pattern, line)) is not None:
                    return match.group(0)
            return "" if self.log and self.log[-1] == "" else None
        with self._logged:
            self._logged.wait_for(lambda: found() is not None, timeout)
            return found() or None

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


def _claimed_by(tmp_path: Path, pid: int, subject: str) -> None:
    """Store a mail already claimed by worker `pid`, in one transaction: no worker sees it pending."""
    from gateway.inbound.intake import Envelope, store_batch
    from gateway.inbound.processor import claimer
    from gateway.settings import Settings
    from gateway.store.db import make_engine, write_tx
    from gateway.store.models import utcnow

    settings = Settings(data_dir=tmp_path / "data", mail_domain="mail.test")
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'gateway.db'}")
    try:
        with write_tx(engine) as conn:
            (inbound_id,) = store_batch(conn, [(make_mail(subject=subject), Envelope("guest@example.org",
                                                                                       ["inkwell@mail.test"]))],
                                        settings, settings.secret())
            conn.execute(update(INBOUND).where(INBOUND.c.id == inbound_id).values(
                status="processing", claimed_at=utcnow(), claimed_by=claimer(pid), attempts=1))
    finally:
        engine.dispose()


def test_serve_runs_its_workers_in_child_processes_that_restart_and_stop_with_it(tmp_path: Path) -> None:
    """The processor beside the servers, not under their GIL; still one command to run and stop."""
    serve = Serve(tmp_path, GATEWAY_SERVE_WORKER_PROCESSES="2")
    try:
        match = re.search(r"worker running in processes (\d+), (\d+)", serve.ready)
        assert match, serve.ready
        children = [int(match.group(1)), int(match.group(2))]
        assert [_parent_of(child) for child in children] == [serve.proc.pid] * 2
        ready_at = next(i for i, line in enumerate(serve.log) if "gateway ready" in line)
        for child in children:   # serve is ready once its workers are: they imported the parsers
            assert any(f"worker process {child} ready after" in line for line in serve.log[:ready_at]), serve.log
        serve.send("vor dem Absturz")
        assert serve.wait_listed({"vor dem Absturz"})

        seen = len(serve.log)
        _claimed_by(tmp_path, children[0], "beim Absturz in Arbeit")   # what the child holds when it dies
        os.kill(children[0], signal.SIGKILL)     # a worker that dies is started again
        assert _gone(children[0])
        assert serve.wait_log(rf"worker process {children[0]} exited with code -9", after=seen)
        assert serve.wait_log(rf"worker process {children[0]} died holding 1 message", after=seen)
        restarted = serve.wait_log(r"worker process \d+ started", after=seen)
        assert restarted, "".join(serve.log)
        serve.send("nach dem Absturz")
        # the dead child's claim came back at once: listed well before its five-minute lease ends
        assert serve.wait_listed({"vor dem Absturz", "beim Absturz in Arbeit", "nach dem Absturz"})

        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=60) == 0
        log = "".join(serve.log)
        assert "did not stop" not in log, log    # each child finished on the parent's word
        assert all(_gone(pid) for pid in [children[1], int(restarted.split()[2])])  # none outlives its server
    finally:
        serve.close()


def test_serve_keeps_one_process_when_told(tmp_path: Path) -> None:
    serve = Serve(tmp_path, GATEWAY_SERVE_WORKER_PROCESSES="0")
    try:
        assert "worker running (inbound processing" in serve.ready
        serve.send("ein Prozess")
        assert serve.wait_listed({"ein Prozess"})
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=60) == 0
    finally:
        serve.close()
