"""Accepted but unthreadable mail is parked with its reason, visible and retryable, never lost."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from sqlalchemy import delete, select

from gateway.inbound import threader
from gateway.store.tables import BLOB
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import INBOUND, MESSAGE
from gateway.store.tables import PROFILE, STUDIO, API_TOKEN
from tests.conftest import RunningGateway, gateway_subprocess_env
from tests.mail import make_mail
from tests.test_serve import gateway_command

NO_SENDER = b"To: inkwell@mail.test\r\nSubject: wer bin ich\r\n\r\nkein Absender\r\n"


def _cli(gw: RunningGateway, *args: str) -> str:
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATABASE_URL=gw.settings.resolved_database_url, GATEWAY_MAIL_DOMAIN="mail.test",
               GATEWAY_DATA_DIR=str(gw.settings.data_dir), GATEWAY_SECRET_KEY=gw.settings.secret_key)
    done = subprocess.run(gateway_command() + list(args), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_mail_without_any_sender_is_quarantined_with_reason_and_raw_kept(gw: RunningGateway) -> None:
    gw.add_studio("inkwell")
    reply = gw.send(NO_SENDER, "inkwell@mail.test", mail_from="")
    assert reply.code == 250
    [result] = gw.process()
    assert result.status == "quarantined" and "no sender" in (result.error or "")
    with read_tx(gw.engine) as conn:
        raw = conn.execute(select(BLOB.c.data).join(INBOUND, INBOUND.c.raw_sha256 == BLOB.c.sha256)).scalar_one()
    assert raw == NO_SENDER
    listed = json.loads(_cli(gw, "quarantine", "list", "--json"))
    assert [(q["id"], q["reason"]) for q in listed] == [(reply.inbound_id, result.error)]


def test_retry_after_the_cause_is_fixed_threads_the_parked_mail(
        gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    studio = gw.add_studio("inkwell")
    reply = gw.send(make_mail(), studio.address)

    def parser_bug(text: str) -> str:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(threader, "split_reply", parser_bug)
    assert gw.process()[-1].status == "quarantined"
    monkeypatch.undo()  # the fixed release; the retry below runs in a process of its own anyway
    out = _cli(gw, "quarantine", "retry", str(reply.inbound_id))
    assert "1 put back; 1 processed, 0 quarantined again" in out
    items = gw.api(studio.token).get("/api/v1/conversations").json()["items"]
    assert [i["subject"] for i in items] == ["Tattoo Anfrage"]
    assert json.loads(_cli(gw, "quarantine", "list", "--json")) == []


def test_mail_for_a_studio_deleted_after_rcpt_is_discarded_not_parked(gw: RunningGateway) -> None:
    """A deleted studio's mail must not stay anywhere, the quarantine included (account deletion)."""
    studio = gw.add_studio("inkwell")
    assert gw.send(make_mail(), studio.address).code == 250
    with write_tx(gw.engine) as conn:  # the studio goes between RCPT and processing
        conn.execute(delete(API_TOKEN))
        conn.execute(delete(PROFILE))
        conn.execute(delete(STUDIO))
    [result] = gw.process()
    assert result.status == "discarded" and "deleted" in (result.error or "")
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(INBOUND.c.id)).first() is None
        assert conn.execute(select(BLOB.c.sha256)).first() is None


def test_a_message_that_keeps_crashing_is_set_aside_after_max_attempts(
        gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the quote splitter blows up (a parser bug), the pipeline must survive it."""
    studio = gw.add_studio("inkwell")
    poison = gw.send(make_mail(body="poison"), studio.address)
    healthy = gw.send(make_mail(subject="gesund", from_="ok@example.org"), studio.address)
    real_split = threader.split_reply

    def exploding(text: str) -> str:
        if "poison" in text:
            raise RuntimeError("parser bug")
        return real_split(text)

    monkeypatch.setattr(threader, "split_reply", exploding)
    statuses = [(r.inbound_id, r.status) for r in gw.process()]
    assert (healthy.inbound_id, "done") in statuses
    history = [status for inbound_id, status in statuses if inbound_id == poison.inbound_id]
    # drain() keeps going until nothing is pending: pending, pending, then quarantined
    assert history == ["pending", "pending", "quarantined"]
    with read_tx(gw.engine) as conn:
        row = conn.execute(select(INBOUND).where(INBOUND.c.id == poison.inbound_id)).one()
        assert row.status == "quarantined" and row.attempts == 3 and "RuntimeError: parser bug" in row.error
        assert conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.inbound_mail_id == poison.inbound_id)).first() is None
