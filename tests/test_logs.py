"""What a real `gateway serve` writes to its log, read from its stderr: one line for each mail
accepted, each mail processed, each delivery attempt and each webhook post refused; JSON with
those facts as keys when asked; never a body, token or secret; addresses only at DEBUG; alembic's
start-up chatter only at DEBUG."""
from __future__ import annotations

import json
import queue
import re
import secrets
import signal
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import gateway_subprocess_env
from tests.mail import make_mail
from tests.providers import MAILGUN_KEY, mailgun_mime_form, mailgun_post
from tests.relay_sink import RelaySink
from tests.test_serve import gateway_command

BODY_MARKER = "Geheimtext-7f3a-nur-im-Brief"      # must never reach the log, at any level
SUBJECT_MARKER = "Betreff-Q9-vertraulich"
GUEST = "lena.mueller@example.org"
WEBHOOK_GUEST = "jonas@example.net"
WAIT = 60.0  # generous bound on one event: a slow shared machine, never a timing assertion


class _Stderr:
    """The gateway's stderr, read line by line by a thread; tests wait for a line they expect."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, wanted: Callable[[str], bool], what: str) -> str:
        for line in self.lines:
            if wanted(line):
                return line
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line for {what} within {WAIT:.0f} s:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"the gateway exited before logging {what}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if wanted(line):
                return line

    def rest(self) -> list[str]:
        """Every line, once the process has exited."""
        self._thread.join(30)
        while True:
            try:
                line = self._new.get_nowait()
            except queue.Empty:
                return self.lines
            if line is not None:
                self.lines.append(line)


def _event(name: str, **fields: object) -> Callable[[str], bool]:
    def wanted(line: str) -> bool:
        try:
            entry = json.loads(line)
        except ValueError:
            return False
        return entry.get("event") == name and all(entry.get(k) == v for k, v in fields.items())
    return wanted


def _text(*parts: str) -> Callable[[str], bool]:
    return lambda line: all(p in line for p in parts)


@pytest.mark.parametrize(("level", "fmt"), [("INFO", "json"), ("DEBUG", "text")])
def test_a_real_gateway_logs_each_step_without_bodies_tokens_or_addresses(
        tmp_path: Path, database_url: str, level: str, fmt: str) -> None:
    env = gateway_subprocess_env()
    secret_key = secrets.token_urlsafe(32)
    with RelaySink(answer=f"451 4.2.1 mailbox {GUEST} is busy, try later") as relay:
        env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_DATABASE_URL=database_url,
                   GATEWAY_SMTP_PORT="0", GATEWAY_HTTP_PORT="0", GATEWAY_MAIL_DOMAIN="mail.test",
                   GATEWAY_SECRET_KEY=secret_key, GATEWAY_LOG_LEVEL=level, GATEWAY_LOG_FORMAT=fmt, GATEWAY_SERVE_WORKER_PROCESSES="1",
                   GATEWAY_MAILGUN_SIGNING_KEY=MAILGUN_KEY, GATEWAY_POLL_INTERVAL="0.05",
                   GATEWAY_SMTP_RELAY_URL=f"smtp://127.0.0.1:{relay.port}")
        add = subprocess.run(gateway_command() + ["studio", "add", "inkwell", "--name", "Inkwell",
                                                  "--owner-email", "owner@inkwell.example", "--json"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
        studio = json.loads(add.stdout)
        token = studio["token"]
        proc = subprocess.Popen(gateway_command() + ["serve"], env=env, cwd=tmp_path,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        log = _Stderr(proc.stderr)
        closing: list[httpx.Client] = []
        try:
            ready = log.wait_for(_text("gateway ready"), "the ready line")
            match = re.search(r"SMTP on 127\.0\.0\.1:(\d+), HTTP on (http://127\.0\.0\.1:\d+)", ready)
            assert match, ready
            smtp_port, base = int(match.group(1)), match.group(2)
            raw = make_mail(subject=SUBJECT_MARKER, body=f"Hallo, {BODY_MARKER}", from_=f"Lena <{GUEST}>")
            nameless = f"Subject: ohne Absender\r\n\r\n{BODY_MARKER}\r\n".encode()  # no From, null sender
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                client.sendmail("", ["inkwell@mail.test"], nameless)  # first: no studio looked up before it
                client.sendmail(GUEST, ["inkwell@mail.test"], raw)
            api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            closing.append(api)
            bad = mailgun_post(mailgun_mime_form(make_mail(body=BODY_MARKER, from_=WEBHOOK_GUEST), "inkwell@mail.test",
                                                 sender=WEBHOOK_GUEST), key="key-not-the-right-one-0123456789")
            assert httpx.post(base + bad.path, content=bad.body, headers=bad.headers, timeout=30).status_code == 401
            ghost = mailgun_post(mailgun_mime_form(make_mail(to="ghost@mail.test", from_=WEBHOOK_GUEST),
                                                   "ghost@mail.test", sender=WEBHOOK_GUEST))
            assert httpx.post(base + ghost.path, content=ghost.body, headers=ghost.headers, timeout=30).status_code >= 400
            good = mailgun_post(mailgun_mime_form(make_mail(body=BODY_MARKER, from_=WEBHOOK_GUEST),
                                                  "inkwell@mail.test", sender=WEBHOOK_GUEST))
            assert httpx.post(base + good.path, content=good.body, headers=good.headers, timeout=30).status_code == 200

            if fmt == "json":
                accepted = json.loads(log.wait_for(_event("accepted", source="smtp", size=len(raw)), "the SMTP acceptance"))
                assert accepted["studio_id"] == studio["id"] and accepted["studio_ids"] == [studio["id"]]
                assert accepted["size"] == len(raw)
                assert accepted["answer"] == f"250 2.0.0 Message accepted for delivery ({accepted['inbound_id']})"
                bounce = json.loads(log.wait_for(_event("accepted", size=len(nameless)), "the null sender's mail"))
                assert bounce["studio_id"] == studio["id"], bounce  # a bounce names its studio too
                set_aside = json.loads(log.wait_for(_event("quarantined", inbound_id=bounce["inbound_id"]),
                                                    "the quarantine"))
                assert set_aside["reason"] == "no sender address in From or the envelope"
                hooked = json.loads(log.wait_for(_event("accepted", source="mailgun"), "the webhook acceptance"))
                assert hooked["answer"] == "200" and hooked["studio_id"] == studio["id"]
                refused = json.loads(log.wait_for(_event("webhook_refused", provider="mailgun"), "the refusal"))
                assert refused["status"] == 401 and refused["reason"] == "bad Mailgun signature"
                assert refused["level"] == "WARNING"
                assert log.wait_for(_event("webhook_refused", reason="unknown recipient"), "the unknown recipient")
                processed = json.loads(log.wait_for(_event("processed", inbound_id=accepted["inbound_id"]),
                                                    "processing the SMTP mail"))
                assert processed["studio_id"] == studio["id"] and processed["rule"] == "new"
                conversation = processed["conversation_id"]
            else:
                log.wait_for(_text("INFO", "accepted inbound", f"for studio {studio['id']} via smtp",
                                   f"{len(raw)} bytes: 250 "), "the SMTP acceptance")
                log.wait_for(_text("INFO", f"for studio {studio['id']} via smtp, {len(nameless)} bytes: 250 "),
                             "the null sender's mail")
                log.wait_for(_text("INFO", "quarantined: no sender address in From or the envelope"), "the quarantine")
                log.wait_for(_text("WARNING", "mailgun webhook refused from", "(401): bad Mailgun signature"),
                             "the refusal")
                line = log.wait_for(_text("processed inbound", "rule new"), "processing the SMTP mail")
                found = re.search(r"conversation (\d+)", line)
                assert found, line
                conversation = int(found.group(1))

            # A reply the relay refuses for now (its answer names the guest), then one it takes.
            answer = api.post(f"/api/v1/conversations/{conversation}/replies", json={"text": f"Gern! {BODY_MARKER}"})
            assert answer.status_code == 202, answer.text
            if fmt == "json":
                first = json.loads(log.wait_for(_event("delivery_attempt", result="temporary"), "the refused attempt"))
                assert first["answer"].startswith("451 4.2.1") and "<address>" in first["answer"], first
                assert first["level"] == "WARNING" and isinstance(first["job_id"], int)
            else:
                log.wait_for(_text("WARNING", "outbound job", "attempt 1: temporary:", f"mailbox {GUEST} is busy"),
                             "the refused attempt")
            relay.answer = "250"
            answer = api.post(f"/api/v1/conversations/{conversation}/replies", json={"text": "Bis Freitag."})
            assert answer.status_code == 202, answer.text
            if fmt == "json":
                sent = json.loads(log.wait_for(_event("delivery_attempt", result="sent"), "the accepted attempt"))
                assert "Queued as sink" in sent["answer"] and sent["level"] == "INFO"
            else:
                log.wait_for(_text("INFO", "outbound job", ": sent: ", "Queued as sink"), "the accepted attempt")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            for client in closing:
                client.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            lines = log.rest()
            proc.stderr.close()

    text = "\n".join(lines)
    for secret in (BODY_MARKER, SUBJECT_MARKER, token, secret_key, MAILGUN_KEY, "Gern!", "Bis Freitag"):
        assert secret not in text, secret
    if level == "INFO":
        for address in (GUEST, WEBHOOK_GUEST, "inkwell@mail.test", "ghost@mail.test", "owner@inkwell.example", "@mail.test"):
            assert address not in text, address
        assert "setup plugin" not in text and "Context impl" not in text and "Will assume" not in text
    else:
        assert re.search(r"DEBUG alembic\.runtime\.plugins: setup plugin", text), "alembic's lines go to DEBUG"
    if fmt == "json":
        for line in lines:
            entry = json.loads(line)  # every line is one JSON object, uvicorn's and alembic's too
            assert {"time", "level", "logger", "message"} <= entry.keys(), line


def test_masking_and_the_json_fields_of_one_record() -> None:
    import logging

    from gateway.logs import JsonFormatter, TextFormatter, mask_addresses

    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "to %s: %s", ("a.b+c@Example.org", "ok"), None)
    record.job_id = 7  # as extra= sets it
    record.studio_ids = [1, 2]
    record.when = time  # not JSON: shown as text
    record.answer = "550 5.1.1 <x@y.example> unknown"
    entry = json.loads(JsonFormatter(mask=True).format(record))
    assert entry["message"] == "to <address>: ok" and entry["job_id"] == 7
    assert entry["answer"] == "550 5.1.1 <<address>> unknown"
    assert entry["studio_ids"] == [1, 2] and entry["when"].startswith("<module 'time'")
    assert "a.b+c@Example.org" in TextFormatter(mask=False).format(record)
    assert mask_addresses("no address @ here, user@localhost") == "no address @ here, user@localhost"


def test_a_database_error_does_not_carry_the_statements_values(database_url: str) -> None:
    """A failed statement's text reaches the log (and a message's processing error); with the
    values in it, a body or an address would be there too."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from gateway.store.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as failed:
            conn.execute(text("INSERT INTO no_such_table (body) VALUES (:body)"), {"body": BODY_MARKER})
        assert BODY_MARKER not in str(failed.value)
    finally:
        engine.dispose()


def test_masking_a_long_line_stays_linear() -> None:
    """A traceback or a relay's answer can be long; the mask runs over every line below DEBUG."""
    from gateway.logs import mask_addresses

    line = "x" * 1_000_000 + " a@b.example " + "@" + "y" * 1_000_000
    started = time.monotonic()
    masked = mask_addresses(line)
    assert time.monotonic() - started < 5.0  # quadratic took minutes; linear takes well under a second
    assert "a@b.example" not in masked and "<address>" in masked
