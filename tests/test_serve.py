"""`gateway serve` as one process: SMTP, HTTP API and worker together, end to end."""
from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
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
