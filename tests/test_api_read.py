"""The messenger's read side over HTTP: shapes, ordering, authentication and studio scoping."""
from __future__ import annotations

from sqlalchemy import update

from gateway.store.db import write_tx
from gateway.store.tables import API_TOKEN
from tests.conftest import RunningGateway, fixture_bytes
from tests.mail import make_mail, new_id


def test_health_and_readiness(gw: RunningGateway) -> None:
    client = gw.api(None)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok", "writes": "ok",
                                            "outbox": {"waiting": 0, "oldest_age_seconds": None}, "quarantined": 0}


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
        conn.execute(update(API_TOKEN).values(revoked_at=API_TOKEN.c.created_at))
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

    from gateway.store.db import read_tx

    with read_tx(gw.engine) as conn:
        row = conn.execute(select(API_TOKEN)).one()
    assert studio.token not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
    assert studio.token.startswith(row.prefix)


def test_openapi_schema_lists_the_routes(gw: RunningGateway) -> None:
    paths = gw.api(None).get("/schema/openapi.json").json()["paths"]
    assert {"/api/v1/conversations", "/api/v1/conversations/{conversation_id}", "/healthz", "/readyz"} <= set(paths)


def test_list_filters_unread_and_cursor_pagination(gw: RunningGateway) -> None:
    from tests.mail import make_mail as mail

    studio = gw.add_studio("inkwell")
    for i in range(7):
        gw.send(mail(subject=f"Anfrage {i}", from_=f"Gast {i} <gast{i}@example.org>"), studio.address)
        gw.process()
    gw.send(mail(subject="100% Rabatt_aktion?", from_="Müller <mueller@example.net>"), studio.address)
    gw.process()
    api = gw.api(studio.token)

    pages, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        answer = api.get("/api/v1/conversations", params=params).json()
        pages.append([i["subject"] for i in answer["items"]])
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    flat = [s for page in pages for s in page]
    assert [len(p) for p in pages] == [3, 3, 2] and len(set(flat)) == 8
    assert flat == [i["subject"] for i in api.get("/api/v1/conversations").json()["items"]]  # same order

    def subjects(**params: object) -> list[str]:
        return [i["subject"] for i in api.get("/api/v1/conversations", params=params).json()["items"]]

    assert subjects(q="100%") == ["100% Rabatt_aktion?"]  # LIKE wildcards are literal
    assert subjects(q="MÜLLER") == ["100% Rabatt_aktion?"] and subjects(q="gast3@") == ["Anfrage 3"]
    assert len(subjects(unread=True)) == 8 and subjects(unread=False) == []
    first = api.get("/api/v1/conversations", params={"q": "Anfrage 2"}).json()["items"][0]
    marked = api.post(f"/api/v1/conversations/{first['id']}/read")
    assert marked.status_code == 200 and marked.json()["unread"] is False
    assert subjects(unread=False) == ["Anfrage 2"] and "Anfrage 2" not in subjects(unread=True)
    gw.send(mail(subject="Re: Anfrage 2", from_="Gast 2 <gast2@example.org>"), studio.address)
    gw.process()
    assert "Anfrage 2" in subjects(unread=True)  # new mail makes it unread again
    assert subjects(status="closed") == [] and len(subjects(status="open")) == 8
    assert api.get("/api/v1/conversations", params={"status": "deleted"}).status_code == 400
    assert api.get("/api/v1/conversations", params={"cursor": "bm9wZQ"}).status_code == 400
    other = gw.add_studio("nadelwerk")
    assert gw.api(other.token).post(f"/api/v1/conversations/{first['id']}/read").status_code == 404


def test_openapi_schema_lists_every_route_with_typed_bodies(gw: RunningGateway) -> None:
    import re

    paths = gw.api(None).get("/schema/openapi.json").json()["paths"]
    app = gw.gateway._uvicorn.config.app  # type: ignore[union-attr]
    # Webhooks, the account-deletion page and the pages (/app, /f) are for providers and browsers,
    # not API clients.
    routes = {re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path) for route in app.routes
              if any(getattr(handler, "include_in_schema", True) for handler in getattr(route, "route_handlers", []))}
    missing = {r for r in routes if not r.startswith(("/schema", "/app", "/f/")) and r not in paths}
    assert missing == set(), f"routes missing from the OpenAPI schema: {missing}"
    reply = paths["/api/v1/conversations/{conversation_id}/replies"]["post"]
    assert "application/json" in reply["requestBody"]["content"] and "202" in reply["responses"]


def test_the_reply_answer_is_the_message_as_stored(gw: RunningGateway) -> None:
    """The 202 is built from what was written, not read back: it must match the stored row."""
    studio = gw.add_studio("inkwell", name="Inkwell Tattoo")
    first_id = new_id()
    gw.send(make_mail(subject="Tattoo Anfrage", message_id=first_id), studio.address)
    gw.process()
    api = gw.api(studio.token)
    [conversation] = api.get("/api/v1/conversations").json()["items"]
    answer = api.post(f"/api/v1/conversations/{conversation['id']}/replies", json={"text": "Freitag passt!\r\n"})
    assert answer.status_code == 202
    detail = api.get(f"/api/v1/conversations/{conversation['id']}").json()
    assert detail["messages"][-1] == answer.json()
    assert answer.json()["in_reply_to"] == first_id.strip("<>") and answer.json()["text"] == "Freitag passt!"
    assert answer.json()["subject"] == "Re: Tattoo Anfrage" and answer.json()["delivery"] == "queued"
    assert detail["message_count"] == 2 and detail["unread"] is False
