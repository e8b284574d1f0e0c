"""The conversation page's actions over real HTTP against a real gateway (issue 15): every form
refuses a missing CSRF token, another studio's ids are 404, opening reads and "mark unread"
unreads, replies with attachments reach the relay threaded, oversized uploads store nothing,
guest HTML is served sandboxed, a failed reply can be sent again, the trash explains the free
plan, held mail is accepted or rejected. SQLite and PostgreSQL."""
from __future__ import annotations

from html import unescape
import re
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid

import httpx
from sqlalchemy import func, select

from gateway.outbound.replies import create_reply
from gateway.store.db import read_tx, write_tx
from gateway.web.conversation import PAGE_SIZE
from gateway.web.reply_upload import MAX_PARTS
from gateway.store.tables import ATTACHMENT, MESSAGE, OUTBOUND_JOB
from tests.access import connect_member, held_message
from tests.conftest import RunningGateway, StudioInfo
from tests.test_lifecycle import paid
from tests.test_web_login import signed_in_client
from tests.web import Web, csrf_of, web  # noqa: F401

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5d3e7a30000000049454e44ae426082")
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def guest_mail(gw: RunningGateway, studio: StudioInfo, *, html: str | None = None, subject: str = "Tattoo Anfrage",
               attachments: list[tuple[str, str, bytes]] | None = None) -> tuple[int, str]:
    """A guest's inquiry, as text (and HTML when given) with attachments: (conversation id, Message-ID)."""
    mid = make_msgid(domain="example.org")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "Lena <lena@example.org>", studio.address, subject, mid
    msg.set_content("Hallo! Ein kleines Motiv am Unterarm, geht das im März?")
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments or []:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    assert gw.send(msg.as_bytes(policy=SMTP), studio.address, mail_from="lena@example.org").code == 250
    gw.process()
    conversations = gw.api(studio.token).get("/api/v1/conversations").json()["items"]
    [found] = [c for c in conversations if c["subject"] == subject]
    return int(found["id"]), mid


def opened(web: Web) -> tuple[StudioInfo, int, str, httpx.Client, str, str]:
    """A studio with a guest's inquiry, its owner signed in: (studio, conversation id, the
    guest's Message-ID, the owner's client, the conversation page's path, its CSRF token)."""
    studio = web.gw.add_studio("inkwell", "Inkwell")
    conversation_id, mid = guest_mail(web.gw, studio)
    client = signed_in_client(web)
    path = f"/app/c/{conversation_id}"
    return studio, conversation_id, mid, client, path, csrf_of(client.get(path).text)


def unread(web: Web, studio: StudioInfo, conversation_id: int) -> bool:
    return bool(web.gw.api(studio.token).get(f"/api/v1/conversations/{conversation_id}").json()["unread"])


def test_every_form_refuses_a_missing_token_and_another_studios_ids_are_404(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    web.gw.add_studio("blackrose", "Black Rose")
    conversation_id, mid = guest_mail(web.gw, studio, attachments=[("rose.png", "image/png", PNG)],
                                      html="<p>Hallo <b>Inkwell</b></p>")
    held_id = held_message(web.gw, studio, mid)
    api = web.gw.api(studio.token)
    detail = api.get(f"/api/v1/conversations/{conversation_id}").json()
    [message] = detail["messages"]
    [attachment] = message["attachments"]
    owner, outsider = signed_in_client(web), signed_in_client(web, "owner@blackrose.example")
    reply = api.post(f"/api/v1/conversations/{conversation_id}/replies", json={"text": "Gern!"}).json()
    forms = {f"/app/c/{conversation_id}/status": {"status": "closed"}, f"/app/c/{conversation_id}/unread": {},
             f"/app/c/{conversation_id}/delete": {}, f"/app/c/{conversation_id}/reply": {"text": "Hallo"},
             f"/app/m/{reply['id']}/retry": {}, f"/app/trash/{conversation_id}/restore": {},
             f"/app/m/{message['id']}/delete": {}, f"/app/trash/m/{message['id']}/restore": {},
             f"/app/held/{held_id}": {"decision": "accept"}}
    own_token, other_token = csrf_of(owner.get("/app/").text), csrf_of(outsider.get("/app/").text)
    for path, data in forms.items():
        assert owner.post(path, data=data).status_code == 403, path
        assert owner.post(path, data={**data, "csrf_token": "0" * 64}).status_code == 403, path
        assert owner.post(path, data={**data, "csrf_token": own_token},
                          headers={"Origin": "https://evil.example"}).status_code == 403, path
        refused = outsider.post(path, data={**data, "csrf_token": other_token})
        assert refused.status_code == 404, path
    for path in (f"/app/c/{conversation_id}", f"/app/m/{message['id']}/html", f"/app/a/{attachment['id']}",
                 f"/app/a/{attachment['id']}?view=thumbnail", f"/app/m/{message['id']}/delete"):
        assert outsider.get(path).status_code == 404, path
        assert owner.get(path).status_code == 200, path
    shown = [m["id"] for m in api.get(f"/api/v1/conversations/{conversation_id}").json()["messages"]]
    assert held_id not in shown and message["id"] in shown
    assert api.get(f"/api/v1/conversations/{conversation_id}").json()["status"] == "open"
    with read_tx(web.gw.engine) as conn:  # nothing the refused forms named was touched
        assert conn.execute(select(func.count()).select_from(MESSAGE).where(
            MESSAGE.c.conversation_id == conversation_id, MESSAGE.c.direction == "outbound")).scalar_one() == 1


def test_opening_marks_read_and_mark_unread_makes_it_bold_again(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    conversation_id, _ = guest_mail(web.gw, studio)
    client = signed_in_client(web)
    assert unread(web, studio, conversation_id)
    page = client.get(f"/app/c/{conversation_id}", headers={"Accept-Language": "en"})
    assert page.status_code == 200 and "Mark unread" in page.text
    assert not unread(web, studio, conversation_id)
    answer = client.post(f"/app/c/{conversation_id}/unread", data={"csrf_token": csrf_of(page.text)})
    assert answer.status_code == 303 and answer.headers["location"] == "/app/"
    assert unread(web, studio, conversation_id)
    assert 'class="row unread' in client.get("/app/").text


def test_a_reply_with_attachments_is_queued_at_once_and_reaches_the_relay_threaded(web: Web) -> None:
    studio, conversation_id, mid, client, path, token = opened(web)
    sent = client.post(path + "/reply", data={"text": "Klar, im März geht das.", "csrf_token": token},
                       files=[("files", ("entwurf.png", PNG, "image/png")), ("files", ("preise.txt", b"50 EUR", "text/plain"))])
    assert sent.status_code == 303 and sent.headers["location"] == path + "#reply"
    page = client.get(path, headers={"Accept-Language": "en"}).text
    assert "Klar, im März geht das." in page and "Queued" in page and "entwurf.png" in page
    [mail] = web.mailed()
    assert mail.message["In-Reply-To"] == mid and mid in mail.message["References"]
    names = sorted(part.get_filename() for part in mail.message.iter_attachments())
    assert names == ["entwurf.png", "preise.txt"]
    assert "Sent" in client.get(path, headers={"Accept-Language": "en"}).text


def test_an_oversized_upload_is_a_form_error_and_nothing_is_stored(web: Web) -> None:
    studio, conversation_id, _, client, path, token = opened(web)
    big = b"x" * (web.gw.settings.max_attachment_size + 1)
    refused = client.post(path + "/reply", data={"text": "Anbei die Skizze", "csrf_token": token},
                          files=[("files", ("skizze.png", big, "image/png"))], headers={"Accept-Language": "en"})
    assert refused.status_code == 413 and "too large" in refused.text
    assert "Anbei die Skizze" in refused.text  # the draft is kept in the box
    empty = client.post(path + "/reply", data={"text": "  ", "csrf_token": token}, headers={"Accept-Language": "en"})
    assert empty.status_code == 400 and "Please write a text" in empty.text
    with read_tx(web.gw.engine) as conn:
        # No reply (the owner's notification of the inquiry is outbound too, but in no conversation).
        assert conn.execute(select(func.count()).select_from(MESSAGE).where(
            MESSAGE.c.studio_id == studio.id, MESSAGE.c.direction == "outbound",
            MESSAGE.c.conversation_id.is_not(None))).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(
            OUTBOUND_JOB.join(MESSAGE, MESSAGE.c.id == OUTBOUND_JOB.c.message_id)).where(
            OUTBOUND_JOB.c.studio_id == studio.id, MESSAGE.c.conversation_id.is_not(None))).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(ATTACHMENT).where(
            ATTACHMENT.c.studio_id == studio.id)).scalar_one() == 0


def test_an_upload_beyond_any_body_limit_or_with_too_many_files_is_a_form_error_too(web: Web) -> None:
    """Past the 64 MiB the API reads, and past the parts a form may have: the page again with
    the typed text, not Litestar's bare 413 or 400, and nothing stored."""
    studio, conversation_id, _, client, path, token = opened(web)
    huge = client.post(path + "/reply", data={"text": "Die große Mappe", "csrf_token": token},
                       files=[("files", ("mappe.zip", b"\0" * (64 * 1024 * 1024 + 1), "application/zip"))],
                       headers={"Accept-Language": "en"})
    assert huge.status_code == 413 and "too large" in huge.text and "Die große Mappe" in huge.text
    assert 'id="reply-error"' in huge.text and "<html" in huge.text
    many = client.post(path + "/reply", data={"text": "Alle Entwürfe", "csrf_token": token},
                       files=[("files", (f"e{n}.txt", b"x", "text/plain")) for n in range(MAX_PARTS)],
                       headers={"Accept-Language": "en"})
    assert many.status_code == 413 and "Too many files" in many.text and "Alle Entwürfe" in many.text
    forged = client.post(path + "/reply", data={"text": "Hallo", "csrf_token": "0" * 64},
                         files=[("files", ("a.txt", b"x" * 1024, "text/plain"))])
    assert forged.status_code == 403
    with read_tx(web.gw.engine) as conn:
        assert conn.execute(select(func.count()).select_from(MESSAGE).where(
            MESSAGE.c.studio_id == studio.id, MESSAGE.c.direction == "outbound",
            MESSAGE.c.conversation_id.is_not(None))).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(ATTACHMENT).where(
            ATTACHMENT.c.studio_id == studio.id)).scalar_one() == 0


def test_guest_html_is_served_sandboxed_with_remote_images_left_out_until_asked(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    html = ('<p>Hallo</p><img src="https://tracker.example/pixel.gif" alt="pixel">'
            '<script>alert(1)</script><form action="https://evil.example"><input name="x"></form>')
    conversation_id, _ = guest_mail(web.gw, studio, html=html)
    client = signed_in_client(web)
    page = client.get(f"/app/c/{conversation_id}")
    [message] = web.gw.api(studio.token).get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
    frame_url = f"/app/m/{message['id']}/html"
    assert f'src="{frame_url}" sandbox="' in page.text and "<script>alert" not in page.text
    frame = client.get(frame_url)
    policy = frame.headers["content-security-policy"]
    assert policy.startswith("sandbox") and "allow-scripts" not in policy and "allow-same-origin" not in policy
    assert "frame-ancestors 'self'" in policy and "img-src 'none'" in policy
    assert "tracker.example" not in frame.text and "<script" not in frame.text and "<form" not in frame.text
    remote = client.get(frame_url + "?images=remote")
    assert "https://tracker.example/pixel.gif" in remote.text
    assert "img-src http: https:" in remote.headers["content-security-policy"]
    assert remote.headers["content-security-policy"].startswith("sandbox")
    assert web.client().get(frame_url).status_code == 404  # no session: nothing, and no login page in a frame


def test_attachments_show_raster_thumbnails_inline_and_everything_else_as_a_download(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    conversation_id, _ = guest_mail(web.gw, studio, attachments=[("rose.png", "image/png", PNG),
                                                                ("logo.svg", "image/svg+xml", SVG)])
    client = signed_in_client(web)
    page = client.get(f"/app/c/{conversation_id}").text
    [message] = web.gw.api(studio.token).get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
    png, svg = sorted(message["attachments"], key=lambda a: a["filename"], reverse=True)
    assert f'src="/app/a/{png["id"]}?view=thumbnail"' in page and f'src="/app/a/{svg["id"]}?view=thumbnail"' not in page
    thumb = client.get(f"/app/a/{png['id']}?view=thumbnail")
    assert thumb.content == PNG and thumb.headers["content-disposition"] == "inline"
    assert thumb.headers["x-content-type-options"] == "nosniff"
    assert thumb.headers["content-security-policy"].startswith("sandbox")
    forced = client.get(f"/app/a/{svg['id']}?view=thumbnail")  # SVG is never shown inline
    assert forced.headers["content-disposition"].startswith("attachment") and forced.content == SVG
    assert forced.headers["content-security-policy"].startswith("sandbox")


def test_a_failed_reply_shows_the_relays_reason_and_can_be_sent_again(web: Web) -> None:
    studio, conversation_id, mid, client, path, token = opened(web)
    assert client.post(path + "/reply", data={"text": "Bis Freitag!", "csrf_token": token}).status_code == 303
    web.sink.answer = "550 5.1.1 Mailbox unavailable"
    assert web.mailed() == []
    page = client.get(path, headers={"Accept-Language": "en"}).text
    assert "Not delivered" in page and "Mailbox unavailable" in page and "Send again" in page
    [reply] = [m for m in web.gw.api(studio.token).get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
               if m["direction"] == "outbound"]
    web.sink.answer = "250"
    again = client.post(f"/app/m/{reply['id']}/retry", data={"csrf_token": token})
    assert again.status_code == 303 and again.headers["location"] == path
    assert "Queued" in client.get(path, headers={"Accept-Language": "en"}).text
    assert client.post(f"/app/m/{reply['id']}/retry", data={"csrf_token": token}).status_code == 409  # once
    [mail] = web.mailed()
    assert mail.message["In-Reply-To"] == mid and "Bis Freitag!" in mail.message.get_body(("plain",)).get_content()
    assert "Sent" in client.get(path, headers={"Accept-Language": "en"}).text


def test_deleting_moves_to_the_trash_which_explains_the_free_plan(web: Web) -> None:
    studio, conversation_id, _, client, path, token = opened(web)
    deleted = client.post(path + "/delete", data={"csrf_token": token})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/app/trash"
    assert client.get(path).status_code == 404
    trash = client.get("/app/trash", headers={"Accept-Language": "en"})
    assert "Tattoo Anfrage" in trash.text and "Restoring needs a paid plan." in trash.text
    assert f"/app/trash/{conversation_id}/restore" not in trash.text  # no button that cannot work
    refused = client.post(f"/app/trash/{conversation_id}/restore", data={"csrf_token": token},
                          headers={"Accept-Language": "en"})
    assert refused.status_code == 402 and "Restoring needs a paid plan." in refused.text
    assert client.get(path).status_code == 404


def test_held_mail_is_listed_and_accepted_or_rejected(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    conversation_id, mid = guest_mail(web.gw, studio)
    first = held_message(web.gw, studio, mid, body="Ich schreibe für meine Freundin.")
    second = held_message(web.gw, studio, mid, from_="Tom <tom@example.net>", body="Ich komme mit.")
    client = signed_in_client(web)
    page = client.get("/app/held", headers={"Accept-Language": "en"})
    assert "Ich schreibe für meine Freundin." in page.text and "Ich komme mit." in page.text
    token = csrf_of(page.text)
    accepted = client.post(f"/app/held/{first}", data={"decision": "accept", "csrf_token": token})
    assert accepted.status_code == 303 and accepted.headers["location"] == f"/app/c/{conversation_id}"
    rejected = client.post(f"/app/held/{second}", data={"decision": "reject", "csrf_token": token})
    assert rejected.status_code == 303 and rejected.headers["location"] == "/app/held"
    assert "Ich schreibe für meine Freundin." in client.get(f"/app/c/{conversation_id}").text
    assert web.gw.api(studio.token).get("/api/v1/held").json()["items"] == []
    with read_tx(web.gw.engine) as conn:
        assert dict(conn.execute(select(MESSAGE.c.id, MESSAGE.c.state).where(MESSAGE.c.id.in_([first, second]))).all()) \
            == {first: "visible", second: "rejected"}
    assert "No mail is held." in client.get("/app/held", headers={"Accept-Language": "en"}).text


def test_a_member_replies_and_deletes_as_the_api_lets_a_member(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    connect_member(web.gw, studio, "artist@inkwell.example")
    conversation_id, _ = guest_mail(web.gw, studio)
    member = signed_in_client(web, "artist@inkwell.example")
    path = f"/app/c/{conversation_id}"
    token = csrf_of(member.get(path).text)
    assert member.post(path + "/reply", data={"text": "Ich übernehme das Motiv.", "csrf_token": token}).status_code == 303
    assert "Ich übernehme das Motiv." in member.get(path).text
    assert member.post(path + "/delete", data={"csrf_token": token}).status_code == 303
    assert web.gw.api(studio.token).get(f"/api/v1/conversations/{conversation_id}").status_code == 404


def test_on_a_paid_plan_the_trash_restores_the_conversation_as_it_was(web: Web) -> None:
    studio, conversation_id, _, client, path, token = opened(web)
    paid(web.gw, studio)
    assert client.post(path + "/delete", data={"csrf_token": token}).status_code == 303
    trash = client.get("/app/trash", headers={"Accept-Language": "en"}).text
    assert "Restoring needs a paid plan." not in trash and f"/app/trash/{conversation_id}/restore" in trash
    restored = client.post(f"/app/trash/{conversation_id}/restore", data={"csrf_token": token})
    assert restored.status_code == 303 and restored.headers["location"] == path
    assert "geht das im März?" in client.get(path).text
    assert "The trash is empty." in client.get("/app/trash", headers={"Accept-Language": "en"}).text


def test_a_long_conversation_pages_to_its_older_messages(web: Web) -> None:
    studio, conversation_id, _, client, path, _ = opened(web)
    with write_tx(web.gw.engine) as conn:  # more replies than a page holds (the brake is the API's, per hour)
        for n in range(PAGE_SIZE):
            create_reply(conn, studio_id=studio.id, conversation_id=conversation_id, text=f"Antwort Nummer {n}.",
                         settings=web.gw.settings)
    newest = client.get(path, headers={"Accept-Language": "en"}).text
    assert f"Antwort Nummer {PAGE_SIZE - 1}." in newest and "geht das im März?" not in newest
    older = re.search(r'href="(/app/c/\d+\?cursor=[^"]+)">Older messages', newest)
    assert older
    page = client.get(unescape(older.group(1)))
    assert page.status_code == 200 and "geht das im März?" in page.text
    forged = client.get(path + "?cursor=bm90LWEtY3Vyc29y")
    assert forged.status_code == 400 and forged.headers["content-type"].startswith("text/html")


def test_a_single_message_is_deleted_from_its_page_and_restored_from_the_trash(web: Web) -> None:
    studio, conversation_id, _, client, path, token = opened(web)
    api = web.gw.api(studio.token)
    assert api.post(f"/api/v1/conversations/{conversation_id}/replies", json={"text": "Gern, im März."}).status_code == 202
    [guest, _reply] = api.get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
    page = client.get(path, headers={"Accept-Language": "en"}).text
    # The page's "Delete this message" only asks (a page of its own, no script); asking deletes nothing.
    assert f'<a href="/app/m/{guest["id"]}/delete">Delete this message</a>' in page
    assert f'action="/app/m/{guest["id"]}/delete"' not in page
    asked = client.get(f"/app/m/{guest['id']}/delete", headers={"Accept-Language": "en"})
    assert asked.status_code == 200 and "Delete this message?" in asked.text and "geht das im März?" in asked.text
    assert "On the free plan it cannot be restored." in asked.text and f'href="{path}">Keep it' in asked.text
    assert f'action="/app/m/{guest["id"]}/delete"' in asked.text and csrf_of(asked.text) == token
    assert "Diese Nachricht löschen?" in client.get(f"/app/m/{guest['id']}/delete").text
    assert "geht das im März?" in client.get(path).text
    assert client.get(f"/app/m/{guest['id'] + 1000}/delete").status_code == 404
    deleted = client.post(f"/app/m/{guest['id']}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303 and deleted.headers["location"] == path
    after = client.get(path).text
    assert "geht das im März?" not in after and "Gern, im März." in after
    # The free plan: the trash lists the message and explains; a restore posted anyway is refused.
    trash = client.get("/app/trash", headers={"Accept-Language": "en"}).text
    assert "Single messages" in trash and "geht das im März?" in trash and "Restoring needs a paid plan." in trash
    assert f"/app/trash/m/{guest['id']}/restore" not in trash
    refused = client.post(f"/app/trash/m/{guest['id']}/restore", data={"csrf_token": token},
                          headers={"Accept-Language": "en"})
    assert refused.status_code == 402 and "Restoring needs a paid plan." in refused.text
    assert "geht das im März?" not in client.get(path).text
    # A paid plan: restored into its conversation, and the trash is empty again.
    paid(web.gw, studio)
    ours = client.get(f"/app/m/{_reply['id']}/delete", headers={"Accept-Language": "en"}).text  # the studio's reply
    assert "you can restore it there for 30 days" in ours and "Gern, im März." in ours
    trash = client.get("/app/trash", headers={"Accept-Language": "en"}).text
    assert f'action="/app/trash/m/{guest["id"]}/restore"' in trash
    restored = client.post(f"/app/trash/m/{guest['id']}/restore", data={"csrf_token": token})
    assert restored.status_code == 303 and restored.headers["location"] == f"{path}#m{guest['id']}"
    assert "geht das im März?" in client.get(path).text
    assert [m["id"] for m in api.get(f"/api/v1/conversations/{conversation_id}").json()["messages"]][0] == guest["id"]
    assert "The trash is empty." in client.get("/app/trash", headers={"Accept-Language": "en"}).text
    again = client.post(f"/app/trash/m/{guest['id']}/restore", data={"csrf_token": token})  # a double click
    assert again.status_code == 303 and again.headers["location"] == "/app/trash"
