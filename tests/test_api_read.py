"""The messenger's read side over HTTP: shapes, ordering, authentication and studio scoping."""
from __future__ import annotations

from sqlalchemy import update

from gateway.db import write_tx
from gateway.studios import TOKEN
from tests.conftest import RunningGateway, fixture_bytes
from tests.mail import make_mail, new_id


def test_health_and_readiness(gw: RunningGateway) -> None:
    client = gw.api(None)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok"}


def test_conversation_list_and_detail_shapes(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    first_id = new_id()
    gw.send(make_mail(subject="Erste Anfrage", message_id=first_id, body="Hallo!\n\nLena"), studio.address)
    gw.send(make_mail(subject="Zweite Anfrage", from_="Tom <tom@example.net>",
                      attachments=[("Skizze Rücken.png", "image/png", b"\x89PNG\r\n\x1a\nfake")]), studio.address)
    gw.process()
    gw.send(make_mail(subject="Re: Erste Anfrage", in_reply_to=first_id,
                      body="Passt Freitag?\n\nAm 20.11.2026 um 10:00 schrieb Inkwell <inkwell@mail.test>:\n> Wann?\n"),
            studio.address)
    gw.process()
    api = gw.api(studio.token)
    items = api.get("/api/v1/conversations").json()["items"]
    assert [i["subject"] for i in items] == ["Erste Anfrage", "Zweite Anfrage"]  # newest activity first
    first = items[0]
    assert set(first) >= {"id", "subject", "status", "guest", "message_count", "last_message_at"}
    assert first["message_count"] == 2 and first["guest"]["email"] == "guest@example.org"

    detail = api.get(f"/api/v1/conversations/{first['id']}").json()
    reply = detail["messages"][1]
    assert set(reply) >= {"id", "direction", "from", "subject", "text", "full_text", "message_id",
                          "received_at", "attachments", "automatic", "thread_rule"}
    assert reply["direction"] == "inbound" and reply["thread_rule"] == "in_reply_to"
    assert reply["text"] == "Passt Freitag?"
    assert "schrieb Inkwell" in reply["full_text"] and "> Wann?" in reply["full_text"]
    assert detail["messages"][0]["message_id"] == first_id.strip("<>")

    second = api.get(f"/api/v1/conversations/{items[1]['id']}").json()
    [attachment] = second["messages"][0]["attachments"]
    assert attachment["filename"] == "Skizze Rücken.png" and attachment["content_type"] == "image/png"
    assert attachment["size"] == len(b"\x89PNG\r\n\x1a\nfake")


def test_html_only_mail_is_shown_as_text_and_sanitised_html(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    gw.send(fixture_bytes("html_only.eml"), studio.address)
    gw.process()
    api = gw.api(studio.token)
    [item] = api.get("/api/v1/conversations").json()["items"]
    [message] = api.get(f"/api/v1/conversations/{item['id']}").json()["messages"]
    assert message["text"] and "<" not in message["text"]
    assert message["html"] is not None and "<script" not in message["html"].lower()


def test_missing_bad_and_revoked_tokens_are_401(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    assert gw.api(None).get("/api/v1/conversations").status_code == 401
    assert gw.api("gw_not-a-real-token").get("/api/v1/conversations").status_code == 401
    response = gw.api(None).get("/api/v1/conversations", headers={"Authorization": f"Basic {studio.token}"})
    assert response.status_code == 401
    with write_tx(gw.engine) as conn:
        conn.execute(update(TOKEN).values(revoked_at=TOKEN.c.created_at))
    assert gw.api(studio.token).get("/api/v1/conversations").status_code == 401


def test_another_studios_conversation_is_404_and_never_listed(gw: RunningGateway) -> None:
    mine, theirs = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    gw.send(make_mail(subject="Geheim"), theirs.address)
    gw.process()
    their_items = gw.api(theirs.token).get("/api/v1/conversations").json()["items"]
    assert len(their_items) == 1
    response = gw.api(mine.token).get(f"/api/v1/conversations/{their_items[0]['id']}")
    assert response.status_code == 404 and "Geheim" not in response.text
    assert gw.api(mine.token).get("/api/v1/conversations").json()["items"] == []


def test_tokens_are_stored_only_as_hashes(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    from sqlalchemy import select

    from gateway.db import read_tx

    with read_tx(gw.engine) as conn:
        row = conn.execute(select(TOKEN)).one()
    assert studio.token not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
    assert studio.token.startswith(row.prefix)


def test_openapi_schema_lists_the_routes(gw: RunningGateway) -> None:
    paths = gw.api(None).get("/schema/openapi.json").json()["paths"]
    assert {"/api/v1/conversations", "/api/v1/conversations/{conversation_id}", "/healthz", "/readyz"} <= set(paths)
