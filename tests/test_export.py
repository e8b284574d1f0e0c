"""The owner's export over HTTP: a zip that opens, holds all of the studio's data and bytes,
marks what is deleted, and holds no token, hash or secret."""
from __future__ import annotations

import io
import json
import zipfile

from gateway.access.studios import hash_token
from tests.conftest import SECRET, RunningGateway
from tests.mail import make_mail, new_id
from tests.access import held_message as _hold
from tests.test_api_tokens import add_member

PHOTO = b"\x89PNG\r\n\x1a\nexported photo " + bytes(500)
SKETCH = b"%PDF-1.4 sketch of the deleted conversation " + bytes(200)


def test_the_export_is_a_zip_of_all_the_studios_data_without_secrets(gw: RunningGateway) -> None:
    studio, other = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    mid = new_id()
    inquiry = make_mail(subject="Rose", message_id=mid, body="Eine Rose, bitte.",
                        attachments=[("Rose am Knöchel.png", "image/png", PHOTO)])
    assert gw.send(inquiry, studio.address).code == 250
    assert gw.send(make_mail(subject="Altes Cover-up", from_="Tom <tom@example.net>",
                             attachments=[("skizze.pdf", "application/pdf", SKETCH)]),
                   studio.address, mail_from="tom@example.net").code == 250
    assert gw.send(make_mail(subject="Fremd", body="only blackrose has this"), other.address).code == 250
    gw.process()
    held = _hold(gw, studio, mid)
    _, member_token = add_member(gw, studio)
    api = gw.api(studio.token)
    rose, cover = [i["id"] for i in api.get("/api/v1/conversations").json()["items"]][::-1]
    reply = api.post(f"/api/v1/conversations/{rose}/replies", json={"text": "Gern, Freitag?"}).json()
    assert api.delete(f"/api/v1/conversations/{cover}").status_code == 200

    response = api.get("/api/v1/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith('attachment; filename="inkwell-export-')
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["content-length"]) == len(response.content)
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    doc = json.loads(archive.read("export.json"))

    assert (doc["format"], doc["version"]) == ("studio-mail-gateway-export", 1)
    assert doc["studio"]["slug"] == "inkwell" and doc["studio"]["address"] == "inkwell@mail.test"
    assert sorted(p["role"] for p in doc["profiles"]) == ["member", "owner"]
    assert all(set(p) == {"id", "email", "name", "role", "created_at", "disconnected_at"} for p in doc["profiles"])
    assert sorted(g["email"] for g in doc["guests"]) == ["guest@example.org", "tom@example.net"]
    by_id = {c["id"]: c for c in doc["conversations"]}
    assert set(by_id) == {rose, cover}
    assert by_id[rose]["deleted_at"] is None and by_id[cover]["deleted_at"] is not None   # deleted: marked

    guest_mail, held_mail, studio_reply = by_id[rose]["messages"]
    assert (guest_mail["text"], guest_mail["direction"], guest_mail["state"]) == ("Eine Rose, bitte.", "inbound",
                                                                                 "visible")
    assert guest_mail["message_id"] == mid.strip("<>") and guest_mail["from"]["email"] == "guest@example.org"
    assert archive.read(guest_mail["raw_eml"]) == inquiry
    [photo] = guest_mail["attachments"]
    assert photo["filename"] == "Rose am Knöchel.png"
    assert photo["path"] == f"attachments/{photo['id']}/Rose am Knöchel.png"
    assert archive.read(photo["path"]) == PHOTO
    assert (held_mail["id"], held_mail["state"]) == (held, "held")
    assert (studio_reply["id"], studio_reply["direction"], studio_reply["delivery"]) == (reply["id"], "outbound",
                                                                                        "queued")
    assert studio_reply["raw_eml"] is None and studio_reply["delivery_attempts"] == 0
    [sketch_mail] = by_id[cover]["messages"]
    assert archive.read(sketch_mail["attachments"][0]["path"]) == SKETCH

    assert all(not name.startswith(("/", "..")) and "/../" not in name for name in archive.namelist())
    everything = b"".join(archive.read(name) for name in archive.namelist())
    for secret in (studio.token, member_token, hash_token(studio.token), hash_token(member_token), SECRET):
        assert secret.encode() not in everything
    assert b"only blackrose has this" not in everything and b"token" not in archive.read("export.json")


def test_only_the_owner_exports(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    _, member_token = add_member(gw, studio)
    refused = gw.api(member_token).get("/api/v1/export")
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    assert gw.api(None).get("/api/v1/export").status_code == 401
