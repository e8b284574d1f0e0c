"""GET /api/v1/conversations/{id} for large conversations and guest HTML, and the reply brake
(issue 13): messages in pages, remote images left out unless asked for, 429 past the brake."""
from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from pathlib import Path

from sqlalchemy import select

from gateway.store.db import read_tx
from gateway.store.tables import MESSAGE
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.mail import make_mail

PIXEL = "https://track.example/open.gif?guest=lena"
PHOTO = "//photos.example/arm.jpg"


def _html_mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Lena <guest@example.org>"
    msg["To"] = "inkwell@mail.test"
    msg["Subject"] = "Motiv"
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content("Hallo, hier mein Motiv.")
    msg.add_alternative(
        f'<p>Hallo, <b>hier</b> mein Motiv:</p><img src="{PHOTO}" alt="Arm">'
        f'<img src="{PIXEL}" width="1" height="1"><script>alert(1)</script>'
        '<a href="https://lena.example/" onclick="x()">Portfolio</a>', subtype="html")
    return msg.as_bytes(policy=SMTP)


def _only_conversation(gw: RunningGateway, token: str) -> int:
    [item] = gw.api(token).get("/api/v1/conversations").json()["items"]
    return int(item["id"])


def test_remote_images_are_left_out_unless_asked_for(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    assert gw.send(_html_mail(), studio.address).code == 250
    gw.process()
    api = gw.api(studio.token)
    conversation = _only_conversation(gw, studio.token)

    [message] = api.get(f"/api/v1/conversations/{conversation}").json()["messages"]
    assert message["remote_images_blocked"] is True
    assert "track.example" not in message["html"] and "photos.example" not in message["html"]
    assert "<b>hier</b>" in message["html"] and 'alt="Arm"' in message["html"]
    assert "<script" not in message["html"] and "onclick" not in message["html"]

    [message] = api.get(f"/api/v1/conversations/{conversation}", params={"images": "remote"}).json()["messages"]
    assert message["remote_images_blocked"] is False
    assert PIXEL.replace("&", "&amp;") in message["html"] and PHOTO in message["html"]
    assert "<script" not in message["html"] and "onclick" not in message["html"]   # sanitised all the same

    with read_tx(gw.engine) as conn:   # the stored HTML keeps them
        stored = conn.execute(select(MESSAGE.c.html).where(MESSAGE.c.id == message["id"])).scalar_one()
    assert PIXEL in stored and PHOTO in stored
    assert api.get(f"/api/v1/conversations/{conversation}", params={"images": "all"}).status_code == 400


def test_plain_text_mail_has_nothing_blocked(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    gw.send(make_mail(), studio.address)
    gw.process()
    conversation = _only_conversation(gw, studio.token)
    [message] = gw.api(studio.token).get(f"/api/v1/conversations/{conversation}").json()["messages"]
    assert message["html"] is None and message["remote_images_blocked"] is False


def _conversation_of(gw: RunningGateway, count: int) -> tuple[int, str, list[str]]:
    """One conversation of `count` guest messages; several arrive in one batch, so some
    share a received_at and only the id tells them apart."""
    studio = gw.add_studio("inkwell")
    first = make_msgid(domain="example.org")
    gw.send(make_mail(subject="Termin", message_id=first, body="Nachricht 0"), studio.address)
    gw.process()
    for batch in range(0, count - 1, 3):
        for n in range(batch + 1, min(batch + 4, count)):
            gw.send(make_mail(subject="Re: Termin", in_reply_to=first, body=f"Nachricht {n}"), studio.address)
        gw.process()
    return _only_conversation(gw, studio.token), studio.token, [f"Nachricht {n}" for n in range(count)]


def test_messages_come_in_pages_newest_first(gw: RunningGateway) -> None:
    conversation, token, texts = _conversation_of(gw, 8)
    api = gw.api(token)
    whole = api.get(f"/api/v1/conversations/{conversation}").json()
    assert [m["text"] for m in whole["messages"]] == texts and whole["next_cursor"] is None
    assert whole["message_count"] == 8

    pages, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.get(f"/api/v1/conversations/{conversation}", params=params).json()
        pages.append([m["text"] for m in page["messages"]])
        assert page["id"] == conversation and page["message_count"] == 8
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [texts[5:], texts[2:5], texts[:2]]   # newest page first, each oldest first


def test_bad_page_parameters_are_400(gw: RunningGateway) -> None:
    conversation, token, _ = _conversation_of(gw, 2)
    api = gw.api(token)
    for params in ({"cursor": "not-a-cursor"}, {"limit": 0}, {"limit": 201}):
        assert api.get(f"/api/v1/conversations/{conversation}", params=params).status_code == 400, params


def test_replies_past_the_brake_are_429_with_retry_after(tmp_path: Path, database_url: str) -> None:
    gw = start_gateway(make_settings(tmp_path, database_url, reply_max_per_conversation_per_hour=3))
    try:
        studio = gw.add_studio("inkwell")
        gw.send(make_mail(subject="Eins"), studio.address)
        gw.send(make_mail(subject="Zwei", from_="Tom <tom@example.net>"), studio.address)
        gw.process()
        api = gw.api(studio.token)
        one, two = sorted(i["id"] for i in api.get("/api/v1/conversations").json()["items"])
        for n in range(3):
            assert api.post(f"/api/v1/conversations/{one}/replies", json={"text": f"Antwort {n}"}).status_code == 202
        braked = api.post(f"/api/v1/conversations/{one}/replies", json={"text": "noch eine"})
        assert braked.status_code == 429, braked.text
        assert 3590 <= int(braked.headers["Retry-After"]) <= 3600
        assert "3 replies per conversation per hour" in braked.json()["detail"]
        # another conversation has its own brake; a deleted reply still counts
        assert api.post(f"/api/v1/conversations/{two}/replies", json={"text": "Hallo Tom"}).status_code == 202
        replies = [m for m in api.get(f"/api/v1/conversations/{one}").json()["messages"]
                   if m["direction"] == "outbound"]
        assert api.delete(f"/api/v1/messages/{replies[0]['id']}").status_code == 200
        assert api.post(f"/api/v1/conversations/{one}/replies", json={"text": "x"}).status_code == 429
        # the braked reply was never stored, and a foreign or unknown id is still 404
        assert len(replies) == 3
        assert api.post("/api/v1/conversations/999999/replies", json={"text": "x"}).status_code == 404
    finally:
        gw.stop()


def test_html_view_without_images_is_the_stored_html_and_any_img_spelling_is_caught() -> None:
    from gateway.inbox.html_view import html_view

    stored = '<p>Hallo <a href="https://lena.example/" rel="noopener noreferrer">Lena</a></p>'
    assert html_view(stored).html is stored and not html_view(stored).remote_images_blocked
    odd = '<P>x<IMG SRC="https://t.example/p.gif" ALT="p"><img src=//t.example/q.gif></P>'
    view = html_view(odd)
    assert view.remote_images_blocked and "t.example" not in view.html and 'alt="p"' in view.html
    assert "t.example/p.gif" in html_view(odd, remote_images=True).html
