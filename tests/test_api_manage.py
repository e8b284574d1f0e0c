"""The studio manages its mail over HTTP: held messages, close and reopen, attachment downloads."""
from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import select

from gateway.store.db import read_tx
from gateway.store.tables import MESSAGE
from gateway.store.tables import ATTACHMENT
from tests.access import STRANGER, held_message
from tests.conftest import RunningGateway, StudioInfo
from tests.mail import make_mail, new_id


def _open(gw: RunningGateway, studio: StudioInfo, subject: str = "Tattoo Anfrage",
          attachments: list[tuple[str, str, bytes]] | None = None) -> tuple[int, str]:
    """The guest's first mail; (conversation id, its Message-ID)."""
    mid = new_id()
    assert gw.send(make_mail(subject=subject, message_id=mid, attachments=attachments), studio.address).code == 250
    [result] = gw.process()
    [outcome] = result.outcomes
    assert outcome.rule == "new" and outcome.conversation_id is not None
    return outcome.conversation_id, mid


def _state(gw: RunningGateway, message_id: int) -> str:
    with read_tx(gw.engine) as conn:
        return str(conn.execute(select(MESSAGE.c.state).where(MESSAGE.c.id == message_id)).scalar_one())


def _attachment_ids(gw: RunningGateway, message_id: int) -> list[int]:
    with read_tx(gw.engine) as conn:
        return list(conn.execute(select(ATTACHMENT.c.id).where(ATTACHMENT.c.message_id == message_id)
                                 .order_by(ATTACHMENT.c.id)).scalars())


def test_held_messages_are_listed_newest_first_and_not_shown(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    first_conversation, first_mid = _open(gw, studio)
    second_conversation, second_mid = _open(gw, studio, subject="Cover-up")
    older = held_message(gw, studio, first_mid)
    newer = held_message(gw, studio, second_mid, from_="Tom <tom@example.net>", body="Ich komme mit.")
    api = gw.api(studio.token)

    items = api.get("/api/v1/held").json()["items"]
    assert [i["id"] for i in items] == [newer, older]
    assert items[1] == {"id": older, "conversation_id": first_conversation,
                        "from": {"email": "mallory@elsewhere.example", "name": "Mallory Weiß"},
                        "subject": "Re: Tattoo Anfrage", "text": "Ich schreibe für meine Freundin.",
                        "received_at": items[1]["received_at"]}
    assert items[0]["conversation_id"] == second_conversation and items[0]["received_at"] >= items[1]["received_at"]
    detail = api.get(f"/api/v1/conversations/{first_conversation}").json()
    assert older not in [m["id"] for m in detail["messages"]]
    assert (detail["message_count"], detail["held_count"]) == (1, 1)


def test_accepting_shows_the_message_in_its_conversation(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, mid = _open(gw, studio)
    held = held_message(gw, studio, mid)
    api = gw.api(studio.token)

    accepted = api.post(f"/api/v1/held/{held}/accept")
    assert accepted.status_code == 200
    assert accepted.json() == {"id": held, "state": "visible", "conversation_id": conversation_id}
    detail = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert [m["from"]["email"] for m in detail["messages"]] == ["guest@example.org", "mallory@elsewhere.example"]
    assert (detail["message_count"], detail["held_count"]) == (2, 0)
    assert detail["last_message_at"] == detail["messages"][1]["received_at"]  # it arrived later
    assert api.get("/api/v1/held").json()["items"] == []

    # Accepted once, the sender is a participant: their next mail is shown at once.
    again = gw.send(make_mail(subject="Re: Tattoo Anfrage", from_=STRANGER, in_reply_to=mid), studio.address)
    gw.process()
    with read_tx(gw.engine) as conn:
        state = conn.execute(select(MESSAGE.c.state).where(MESSAGE.c.inbound_mail_id == again.inbound_id)).scalar_one()
    assert state == "visible"


def test_accepting_an_older_held_message_keeps_the_latest_activity(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, mid = _open(gw, studio)
    held = held_message(gw, studio, mid)
    gw.send(make_mail(subject="Re: Tattoo Anfrage", in_reply_to=mid, body="Noch eine Frage."), studio.address)
    gw.process()
    api = gw.api(studio.token)
    before = api.get(f"/api/v1/conversations/{conversation_id}").json()

    assert api.post(f"/api/v1/held/{held}/accept").status_code == 200
    after = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert after["last_message_at"] == before["last_message_at"] == after["messages"][2]["received_at"]
    assert after["message_count"] == before["message_count"] + 1 == 3
    assert [m["text"] for m in after["messages"]][1:] == ["Ich schreibe für meine Freundin.", "Noch eine Frage."]


def test_rejecting_keeps_the_message_but_out_of_sight(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, mid = _open(gw, studio)
    held = held_message(gw, studio, mid)
    api = gw.api(studio.token)

    rejected = api.post(f"/api/v1/held/{held}/reject")
    assert rejected.status_code == 200
    assert rejected.json() == {"id": held, "state": "rejected", "conversation_id": conversation_id}
    assert api.get("/api/v1/held").json()["items"] == []
    detail = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert [m["id"] for m in detail["messages"]] != [] and held not in [m["id"] for m in detail["messages"]]
    assert (detail["message_count"], detail["held_count"]) == (1, 0)
    assert _state(gw, held) == "rejected"
    assert held_message(gw, studio, mid, body="Nochmal ich.") != held  # a rejected sender's next mail is held again


def test_deciding_a_message_that_is_not_held_is_409(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, mid = _open(gw, studio)
    accepted, rejected = held_message(gw, studio, mid), held_message(gw, studio, mid, from_="Tom <tom@example.net>")
    api = gw.api(studio.token)
    assert api.post(f"/api/v1/held/{accepted}/accept").status_code == 200
    assert api.post(f"/api/v1/held/{rejected}/reject").status_code == 200

    for message_id, action, state in ((accepted, "accept", "visible"), (accepted, "reject", "visible"),
                                      (rejected, "reject", "rejected"), (rejected, "accept", "rejected")):
        response = api.post(f"/api/v1/held/{message_id}/{action}")
        assert response.status_code == 409
        assert response.json()["detail"] == (f"message {message_id} is not held (it is {state}); "
                                              "only held messages can be accepted or rejected")
    guest_message = api.get(f"/api/v1/conversations/{conversation_id}").json()["messages"][0]["id"]
    assert api.post(f"/api/v1/held/{guest_message}/accept").status_code == 409
    assert api.get(f"/api/v1/conversations/{conversation_id}").json()["message_count"] == 2  # counted once
    assert (_state(gw, accepted), _state(gw, rejected)) == ("visible", "rejected")


def test_another_studios_held_messages_are_404_and_never_listed(gw: RunningGateway) -> None:
    theirs, mine = gw.add_studio("blackrose"), gw.add_studio("inkwell")
    _, mid = _open(gw, theirs)
    held = held_message(gw, theirs, mid)
    api = gw.api(mine.token)
    assert api.get("/api/v1/held").json()["items"] == []
    for action in ("accept", "reject"):
        response = api.post(f"/api/v1/held/{held}/{action}")
        assert response.status_code == 404 and "Freundin" not in response.text
    assert api.post("/api/v1/held/999999/accept").status_code == 404
    assert _state(gw, held) == "held"
    assert [i["id"] for i in gw.api(theirs.token).get("/api/v1/held").json()["items"]] == [held]


def test_close_and_reopen_are_idempotent(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, _ = _open(gw, studio)
    api = gw.api(studio.token)

    def status_filter(status: str) -> list[int]:
        return [i["id"] for i in api.get("/api/v1/conversations", params={"status": status}).json()["items"]]

    for _ in range(2):
        closed = api.post(f"/api/v1/conversations/{conversation_id}/close")
        assert closed.status_code == 200 and closed.json() == {"id": conversation_id, "status": "closed"}
    assert status_filter("closed") == [conversation_id] and status_filter("open") == []
    assert api.get(f"/api/v1/conversations/{conversation_id}").json()["status"] == "closed"
    for _ in range(2):
        reopened = api.post(f"/api/v1/conversations/{conversation_id}/reopen")
        assert reopened.status_code == 200 and reopened.json() == {"id": conversation_id, "status": "open"}
    assert status_filter("open") == [conversation_id] and status_filter("closed") == []

    other = gw.api(gw.add_studio("blackrose").token)
    assert other.post(f"/api/v1/conversations/{conversation_id}/close").status_code == 404
    assert api.post("/api/v1/conversations/999999/reopen").status_code == 404
    assert api.get(f"/api/v1/conversations/{conversation_id}").json()["status"] == "open"


def test_guest_mail_reopens_a_conversation_closed_through_the_api(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, mid = _open(gw, studio)
    api = gw.api(studio.token)
    assert api.post(f"/api/v1/conversations/{conversation_id}/close").json()["status"] == "closed"
    gw.send(make_mail(subject="Re: Tattoo Anfrage", in_reply_to=mid, body="Doch noch eine Frage."), studio.address)
    gw.process()
    detail = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert (detail["status"], detail["message_count"]) == ("open", 2)


HTML = b"<html><body><script>alert(document.cookie)</script>Entwurf</body></html>"
HTML_NAME = 'Entwurf "Rücken" Größe.html'
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def test_attachment_download_sends_the_bytes_and_never_renders_them(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, _ = _open(gw, studio, attachments=[(HTML_NAME, "text/html", HTML),
                                                        ("motiv.svg", "image/svg+xml", SVG)])
    api = gw.api(studio.token)
    [message] = api.get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
    html, svg = message["attachments"]
    assert html["filename"] == HTML_NAME

    response = api.get(f"/api/v1/attachments/{html['id']}")
    assert response.status_code == 200 and response.content == HTML
    assert response.headers["content-type"] == "text/html"  # as stored, no charset invented
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"Entwurf _Rucken_ Gro_e.html\"; "
        "filename*=UTF-8''Entwurf%20%22R%C3%BCcken%22%20Gr%C3%B6%C3%9Fe.html")
    assert quote(HTML_NAME, safe="") in response.headers["content-disposition"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["content-length"] == str(len(HTML))

    response = api.get(f"/api/v1/attachments/{svg['id']}")
    assert response.content == SVG and response.headers["content-type"] == "image/svg+xml"
    assert response.headers["content-disposition"] == "attachment; filename=\"motiv.svg\"; filename*=UTF-8''motiv.svg"
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_attachment_of_another_studio_is_404_and_without_a_token_401(gw: RunningGateway) -> None:
    studio, other = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    conversation_id, _ = _open(gw, studio, attachments=[("skizze.png", "image/png", b"\x89PNG\r\n\x1a\nsecret")])
    [message] = gw.api(studio.token).get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
    [attachment] = message["attachments"]

    response = gw.api(other.token).get(f"/api/v1/attachments/{attachment['id']}")
    assert response.status_code == 404 and b"secret" not in response.content
    anonymous = gw.api(None).get(f"/api/v1/attachments/{attachment['id']}")
    assert anonymous.status_code == 401 and b"secret" not in anonymous.content
    assert gw.api(studio.token).get("/api/v1/attachments/999999").status_code == 404


def test_attachment_of_a_held_message_is_404_until_accepted(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    _, mid = _open(gw, studio)
    to_accept = held_message(gw, studio, mid, attachments=[("vorlage.jpg", "image/jpeg", b"\xff\xd8accepted")])
    to_reject = held_message(gw, studio, mid, from_="Tom <tom@example.net>",
                      attachments=[("werbung.pdf", "application/pdf", b"%PDF-rejected")])
    [accept_attachment], [reject_attachment] = _attachment_ids(gw, to_accept), _attachment_ids(gw, to_reject)
    api = gw.api(studio.token)
    assert api.get(f"/api/v1/attachments/{accept_attachment}").status_code == 404
    assert api.get(f"/api/v1/attachments/{reject_attachment}").status_code == 404

    assert api.post(f"/api/v1/held/{to_accept}/accept").status_code == 200
    assert api.post(f"/api/v1/held/{to_reject}/reject").status_code == 200
    accepted = api.get(f"/api/v1/attachments/{accept_attachment}")
    assert accepted.status_code == 200 and accepted.content == b"\xff\xd8accepted"
    assert api.get(f"/api/v1/attachments/{reject_attachment}").status_code == 404


def test_management_routes_need_a_token(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, mid = _open(gw, studio)
    held = held_message(gw, studio, mid)
    anonymous = gw.api(None)
    assert anonymous.get("/api/v1/held").status_code == 401
    assert anonymous.post(f"/api/v1/held/{held}/accept").status_code == 401
    assert anonymous.post(f"/api/v1/held/{held}/reject").status_code == 401
    assert anonymous.post(f"/api/v1/conversations/{conversation_id}/close").status_code == 401
    assert anonymous.post(f"/api/v1/conversations/{conversation_id}/reopen").status_code == 401
    assert _state(gw, held) == "held"
    assert gw.api(studio.token).get(f"/api/v1/conversations/{conversation_id}").json()["status"] == "open"
