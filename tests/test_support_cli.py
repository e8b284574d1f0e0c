"""The operators' `gateway support` commands: reading a studio only under its owner's active
grant, reading only, and leaving an audit entry for each read; support tokens."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator

import pytest
from sqlalchemy import func, select

from gateway.store.tables import AUDIT_ENTRY
from gateway.cli import main
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.settings import get_settings
from gateway.access.support import grant_access
from tests.access import AUDIT as AUDIT_ROUTE, CONVERSATIONS, GRANTS, as_support, grant, open_conversation
from tests.conftest import RunningGateway, StudioInfo


@dataclass
class Run:
    code: int
    out: str
    err: str


Cli = Callable[..., Run]


@pytest.fixture
def cli(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """`gateway ARGS...` as an operator runs it, against the test gateway's database."""
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", gw.settings.resolved_database_url)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(gw.settings.data_dir))
    monkeypatch.setenv("GATEWAY_MAIL_DOMAIN", "mail.test")
    monkeypatch.setenv("GATEWAY_SECRET_KEY", gw.settings.secret_key)

    def run(*args: str) -> Run:
        get_settings.cache_clear()
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    yield run
    get_settings.cache_clear()


def _audit_count(gw: RunningGateway, studio: StudioInfo) -> int:
    with read_tx(gw.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(AUDIT_ENTRY)
                                .where(AUDIT_ENTRY.c.studio_id == studio.id))
                   .scalar_one())


def test_without_a_grant_the_command_fails_and_reads_nothing(gw: RunningGateway, cli: Cli) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio, subject="Geheimes Motiv")
    for extra in ([], ["--conversation", str(mail.conversation_id)]):
        run = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 4711", "--operator", "alice", *extra)
        assert run.code == 1 and run.out == ""
        assert run.err.startswith("gateway: no active support grant for studio 'inkwell'")
    assert _audit_count(gw, studio) == 0
    unknown = cli("support", "read", "--studio", "nosuch", "--reason", "ticket 4711", "--operator", "alice")
    assert unknown.code == 1 and unknown.err.startswith("gateway: no active support grant for studio 'nosuch'")


def test_under_a_grant_it_lists_and_reads_and_audits_each_read(gw: RunningGateway, cli: Cli) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio, subject="Rückenmotiv", body="Wie groß wird es?")
    grant(gw, studio, hours=1)
    owner = gw.api(studio.token)

    listed = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 1", "--operator", "alice", "--json")
    assert listed.code == 0 and json.loads(listed.out) == owner.get(CONVERSATIONS).json()
    read = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 2", "--operator", "alice",
               "--conversation", str(mail.conversation_id), "--json")
    assert read.code == 0
    assert json.loads(read.out) == owner.get(f"{CONVERSATIONS}/{mail.conversation_id}").json()
    text = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 3", "--operator", "alice",
               "--conversation", str(mail.conversation_id))
    assert text.code == 0 and "Rückenmotiv" in text.out and "Wie groß wird es?" in text.out
    assert "[attachments: skizze.png]" in text.out

    entries = owner.get(AUDIT_ROUTE).json()["items"]
    assert [(e["actor"], e["action"], e["target"], e["reason"]) for e in entries[:3]] == [
        ("operator:alice", "conversation.read", f"conversation {mail.conversation_id}", "ticket 3"),
        ("operator:alice", "conversation.read", f"conversation {mail.conversation_id}", "ticket 2"),
        ("operator:alice", "conversation.list", "conversations", "ticket 1"),
    ]
    assert "Rückenmotiv" not in json.dumps(entries)


def test_reading_changes_nothing_in_the_studio(gw: RunningGateway, cli: Cli) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio)
    grant(gw, studio)
    owner = gw.api(studio.token)
    before = owner.get(f"{CONVERSATIONS}/{mail.conversation_id}").json()
    run = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 1", "--operator", "alice",
              "--conversation", str(mail.conversation_id))
    assert run.code == 0
    assert owner.get(f"{CONVERSATIONS}/{mail.conversation_id}").json() == before
    assert before["unread"] is True  # support reading does not mark it read for the studio


def test_an_expired_or_revoked_grant_ends_reading(gw: RunningGateway, cli: Cli) -> None:
    studio = gw.add_studio("inkwell")
    open_conversation(gw, studio)
    with write_tx(gw.engine) as conn:  # granted 8 days ago for 7 days
        grant_access(conn, studio.id, 1, "owner:owner@inkwell.example", timedelta(days=7), "",
                     now=utcnow() - timedelta(days=8))
    expired = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 1", "--operator", "alice")
    assert expired.code == 1 and "no active support grant" in expired.err

    granted = grant(gw, studio)
    assert cli("support", "read", "--studio", "inkwell", "--reason", "ticket 1", "--operator", "alice").code == 0
    assert gw.api(studio.token).delete(f"{GRANTS}/{granted['id']}").status_code == 204
    revoked = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 1", "--operator", "alice")
    assert revoked.code == 1 and revoked.out == ""


def test_a_reason_and_a_plain_operator_name_are_required(gw: RunningGateway, cli: Cli) -> None:
    studio = gw.add_studio("inkwell")
    grant(gw, studio)
    blank = cli("support", "read", "--studio", "inkwell", "--reason", "  ", "--operator", "alice")
    assert blank.code == 1 and blank.err == "gateway: reason must not be empty\n"
    odd = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 1", "--operator", "alice\nbob")
    assert odd.code == 1 and "operator name must be" in odd.err
    missing = cli("support", "read", "--studio", "inkwell", "--reason", "ticket 1", "--operator", "alice",
                  "--conversation", "999999")
    assert missing.code == 1 and missing.err == "gateway: studio 'inkwell' has no conversation 999999\n"
    assert _audit_count(gw, studio) == 2  # the grant, and the attempt at conversation 999999


def test_support_token_command_issues_a_token_for_http_and_revoke_token_ends_it(gw: RunningGateway, cli: Cli) -> None:
    studio = gw.add_studio("inkwell")
    grant(gw, studio)
    issued = cli("support", "token", "--name", "alice", "--json")
    assert issued.code == 0
    token = json.loads(issued.out)
    assert token["name"] == "alice" and token["token"].startswith("gws_") and token["token"].startswith(token["prefix"])
    support = as_support(gw, token["token"], "inkwell")
    assert support.get(CONVERSATIONS).status_code == 200

    assert cli("support", "revoke-token", str(token["id"])).out == f"support token {token['id']} revoked\n"
    assert support.get(CONVERSATIONS).status_code == 401
    unknown = cli("support", "revoke-token", "999999")
    assert unknown.code == 1 and unknown.err == "gateway: no support token 999999\n"
    assert cli("support", "token", "--name", "alice bob").code == 1
