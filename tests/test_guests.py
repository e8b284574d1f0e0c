"""Guests over HTTP: looked up by the id conversations carry, and erased for good by the owner.

The erasure must leave nothing of the guest: no contact, no conversation (deleted ones
included), no mail they wrote into someone else's conversation, no bytes; every other guest's
data stays as it was, and the deletion log records the erasure.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from gateway.store.blobs import sha256_hex
from gateway.eventlog import events_after
from gateway.store.db import read_tx
from gateway.lifecycle.deletion_log import deletion_log
from gateway.store.tables import AUTOMATIC_MAIL, BLOB, CONVERSATION, GUEST, INBOUND, MESSAGE
from tests.conftest import RunningGateway
from tests.mail import make_mail, new_id
from tests.test_api_tokens import add_member

LENA = "guest@example.org"
TOM = "Tom Berg <tom@example.net>"
ROSE_PHOTO = b"\x89PNG\r\n\x1a\nLena's rose " + bytes(400)
LION_SKETCH = b"%PDF-1.4 Tom's lion " + bytes(400)


def _send(gw: RunningGateway, address: str, **mail: Any) -> int:
    """Deliver and process one mail; the conversation it went to."""
    mail_from = mail.get("from_", LENA).split("<")[-1].rstrip(">")
    assert gw.send(make_mail(**mail), address, mail_from=mail_from).code == 250
    [result] = gw.process()
    conversation_id = result.outcomes[0].conversation_id
    assert conversation_id is not None
    return conversation_id


def _everything(gw: RunningGateway) -> str:
    """Every guest, conversation, message and inbound envelope as text, to search for a trace."""
    with read_tx(gw.engine) as conn:
        rows = [dict(r._mapping) for table in (GUEST, CONVERSATION, MESSAGE, INBOUND)
                for r in conn.execute(select(table))]
    return json.dumps(rows, default=str)


def _blob_exists(gw: RunningGateway, data: bytes) -> bool:
    with read_tx(gw.engine) as conn:
        return conn.execute(select(BLOB.c.sha256).where(BLOB.c.sha256 == sha256_hex(data))).first() is not None


def test_erasing_a_guest_leaves_nothing_of_them_and_spares_the_other_guest(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    tom_mid = new_id()
    lion = _send(gw, studio.address, subject="Löwe", from_=TOM, message_id=tom_mid,
                 attachments=[("loewe.pdf", "application/pdf", LION_SKETCH)])
    rose = _send(gw, studio.address, subject="Rose", body="Lena hier, Rose am Knöchel",
                 attachments=[("rose.png", "image/png", ROSE_PHOTO)])
    cover = _send(gw, studio.address, subject="Cover-up", body="Lena: altes Tattoo abdecken")
    # Lena also writes into Tom's thread (they come together); the studio lets it in.
    assert _send(gw, studio.address, subject="Re: Löwe", in_reply_to=tom_mid, body="Lena: ich komme mit") == lion
    [held] = api.get("/api/v1/held").json()["items"]
    assert api.post(f"/api/v1/held/{held['id']}/accept").status_code == 200
    assert api.post(f"/api/v1/conversations/{rose}/replies", json={"text": "Hallo Lena, gern!"}).status_code == 202
    assert api.delete(f"/api/v1/conversations/{cover}").status_code == 200   # in the trash: erased too
    tom_before = api.get(f"/api/v1/conversations/{lion}").json()
    assert tom_before["message_count"] == 2

    lena = api.get(f"/api/v1/conversations/{rose}").json()["guest"]
    assert lena["email"] == LENA
    shown = api.get(f"/api/v1/guests/{lena['id']}")
    assert shown.status_code == 200
    assert {k: shown.json()[k] for k in ("id", "email", "name", "conversation_count")} == {
        "id": lena["id"], "email": LENA, "name": "Lena Müller", "conversation_count": 1}

    erased = api.post(f"/api/v1/guests/{lena['id']}/erase")
    assert erased.status_code == 200
    assert {k: erased.json()[k] for k in ("id", "conversations", "messages", "attachments")} == {
        "id": lena["id"], "conversations": 2, "messages": 4, "attachments": 1}

    assert api.get(f"/api/v1/guests/{lena['id']}").status_code == 404
    assert api.post(f"/api/v1/guests/{lena['id']}/erase").status_code == 404   # nothing left to erase
    [item] = api.get("/api/v1/conversations").json()["items"]
    assert item["id"] == lion and item["guest"]["email"] == "tom@example.net"
    assert api.get("/api/v1/trash/conversations").json()["items"] == []
    assert api.get(f"/api/v1/conversations/{rose}").status_code == 404
    tom_after = api.get(f"/api/v1/conversations/{lion}").json()
    assert tom_after["messages"] == tom_before["messages"][:1] and tom_after["message_count"] == 1
    everything = _everything(gw)
    assert LENA not in everything and "Lena" not in everything and "Rose" not in everything
    assert not _blob_exists(gw, ROSE_PHOTO)
    assert _blob_exists(gw, LION_SKETCH)
    attachment = tom_after["messages"][0]["attachments"][0]["id"]
    assert api.get(f"/api/v1/attachments/{attachment}").content == LION_SKETCH
    [entry] = deletion_log(gw.settings).entries()
    assert (entry.kind, entry.studio_id, entry.object_id) == ("guest", studio.id, lena["id"])
    # Open pages and the studio's webhooks hear of it: ids and the change, nothing of Lena.
    with read_tx(gw.engine) as conn:
        events = [e.as_dict() for e in events_after(conn, studio.id, 0, 1000)]
    erased = [(e["conversation_id"], e["change"], e.get("message_id")) for e in events
              if e.get("change") in ("erased", "message_erased")]
    lena_in_lion = {m["id"] for m in tom_before["messages"]} - {m["id"] for m in tom_after["messages"]}
    assert sorted(erased, key=str) == sorted([(rose, "erased", None), (cover, "erased", None),
                                              (lion, "message_erased", *lena_in_lion)], key=str)
    assert LENA not in json.dumps(events, default=str)


def test_only_the_owner_erases_a_guest_and_only_their_own_studios(gw: RunningGateway) -> None:
    studio, other = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    rose = _send(gw, studio.address, subject="Rose")
    guest_id = gw.api(studio.token).get(f"/api/v1/conversations/{rose}").json()["guest"]["id"]
    _, member_token = add_member(gw, studio)

    refused = gw.api(member_token).post(f"/api/v1/guests/{guest_id}/erase")
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    assert gw.api(member_token).get(f"/api/v1/guests/{guest_id}").status_code == 200   # members may look
    assert gw.api(other.token).post(f"/api/v1/guests/{guest_id}/erase").status_code == 404
    assert gw.api(other.token).get(f"/api/v1/guests/{guest_id}").status_code == 404
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(func.count()).select_from(MESSAGE)).scalar_one() == 1
    assert deletion_log(gw.settings).entries() == []


def test_erasing_a_guest_takes_their_automatic_mail_and_leaves_the_others(gw: RunningGateway) -> None:
    """An auto-reply from the guest opened no conversation; it is listed under automatic mail with
    their address and subject, so it is theirs and goes with them. Tom's stays."""
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    rose = _send(gw, studio.address, subject="Rose", body="Lena hier")
    for sender, subject in ((LENA, "Abwesend: Lena ist im Urlaub"), ("tom@example.net", "Abwesend: Tom")):
        auto = make_mail(subject=subject, from_=sender, headers={"Auto-Submitted": "auto-replied"})
        assert gw.send(auto, studio.address, mail_from=sender).code == 250
        gw.process()
    listed = api.get("/api/v1/automatic").json()["items"]
    assert sorted(item["subject"] for item in listed) == ["Abwesend: Lena ist im Urlaub", "Abwesend: Tom"]

    lena = api.get(f"/api/v1/conversations/{rose}").json()["guest"]
    assert api.post(f"/api/v1/guests/{lena['id']}/erase").status_code == 200

    [left] = api.get("/api/v1/automatic").json()["items"]
    assert left["subject"] == "Abwesend: Tom"
    with read_tx(gw.engine) as conn:
        rows = json.dumps([dict(r._mapping) for r in conn.execute(select(AUTOMATIC_MAIL))], default=str)
    assert LENA not in rows and "Urlaub" not in rows
