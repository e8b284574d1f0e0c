"""Soft deletion, the trash, restoring (a paid feature, for 30 days) and the purge after them.

Mail arrives over real SMTP, the studio acts over real HTTP, and the purge runs on the real
database with its clock passed in: 30 days are never waited for. Where the API itself must
see an old deletion, the deletion's time is set in the database, as 30 days would have left it.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from gateway.store.blobs import sha256_hex
from gateway.store.db import read_tx, write_tx
from gateway.lifecycle.deletion_log import DeletionLog, Erasure, Kind, deletion_log
from gateway.store.tables import ATTACHMENT, BLOB, CONVERSATION, MESSAGE, TOMBSTONE
from gateway.store.models import Subscription, utcnow
from gateway.outbound.outbox import Outbox
from gateway.runtime import LATE_BODIES
from gateway.lifecycle.purge import purge
from gateway.store.tables import OUTBOUND_JOB
from gateway.lifecycle.trash import RETENTION, STALE_REPLY, restore_conversation
from tests.conftest import RunningGateway, StudioInfo, start_gateway
from tests.mail import make_mail, new_id
from tests.access import held_message as _hold
from tests.test_api_manage import _open
from tests.test_api_tokens import add_member
from tests.test_quarantine import _cli

SUBSCRIPTION = Subscription.__table__  # type: ignore[attr-defined]
SKETCH = b"%PDF-1.4 sketch only the deleted conversation has " + bytes(300)
PHOTO = b"\x89PNG\r\n\x1a\nphoto of the deleted message " + bytes(300)


def paid(gw: RunningGateway, studio: StudioInfo) -> None:
    """Put the studio on the monthly plan, as the billing side records an active subscription."""
    with write_tx(gw.engine) as conn:
        conn.execute(insert(SUBSCRIPTION), {"studio_id": studio.id, "plan": "monthly", "status": "active",
                                            "updated_at": utcnow()})


def backdate(gw: RunningGateway, table: Any, object_id: int, ago: timedelta) -> None:
    """Make a deletion look as old as `ago` (the API runs on the real clock)."""
    with write_tx(gw.engine) as conn:
        conn.execute(update(table).where(table.c.id == object_id).values(deleted_at=utcnow() - ago))


def reply_to(gw: RunningGateway, studio: StudioInfo, mid: str, body: str,
             attachments: list[tuple[str, str, bytes]] | None = None) -> int:
    """The guest's answer in the thread of `mid`; the stored message's id."""
    sent = gw.send(make_mail(subject="Re: Tattoo Anfrage", in_reply_to=mid, references=[mid], body=body,
                             attachments=attachments), studio.address)
    assert sent.code == 250
    gw.process()
    with read_tx(gw.engine) as conn:
        return int(conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.inbound_mail_id == sent.inbound_id)).scalar_one())


def thread_of_two(gw: RunningGateway, *, paid_plan: bool) -> tuple[StudioInfo, Any, int, int]:
    """A studio (on the monthly plan or the free one) with a guest's inquiry and their second
    mail: (studio, its owner's API client, the conversation's id, the second mail's id)."""
    studio = gw.add_studio("inkwell")
    if paid_plan:
        paid(gw, studio)
    conversation_id, mid = _open(gw, studio)
    return studio, gw.api(studio.token), conversation_id, reply_to(gw, studio, mid, "Zweite Nachricht")


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [i["id"] for i in items]


def test_a_deleted_conversation_is_gone_from_every_read_route(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    gone, mid = _open(gw, studio, subject="Cover-up Drache", attachments=[("skizze.pdf", "application/pdf", SKETCH)])
    held = _hold(gw, studio, mid)
    kept, _ = _open(gw, studio, subject="Rose am Knöchel")
    _, member_token = add_member(gw, studio)
    owner, member = gw.api(studio.token), gw.api(member_token)
    [attachment] = owner.get(f"/api/v1/conversations/{gone}").json()["messages"][0]["attachments"]

    deleted = member.delete(f"/api/v1/conversations/{gone}")   # a member may delete, as in a messenger
    assert deleted.status_code == 200
    body = deleted.json()
    assert (body["kind"], body["id"], body["conversation_id"]) == ("conversation", gone, gone)
    assert body["purge_at"] == _iso_plus(body["deleted_at"], RETENTION)

    for params in ({}, {"q": "Drache"}, {"q": "guest@example.org"}, {"unread": "true"}, {"status": "open"}):
        assert ids(owner.get("/api/v1/conversations", params=params).json()["items"]) == (
            [] if params.get("q") == "Drache" else [kept]), params
    assert owner.get("/api/v1/held").json()["items"] == []
    for method, path in (("GET", f"/api/v1/conversations/{gone}"), ("POST", f"/api/v1/conversations/{gone}/read"),
                         ("POST", f"/api/v1/conversations/{gone}/close"),
                         ("POST", f"/api/v1/conversations/{gone}/reopen"),
                         ("GET", f"/api/v1/attachments/{attachment['id']}"),
                         ("POST", f"/api/v1/held/{held}/accept"), ("POST", f"/api/v1/held/{held}/reject"),
                         ("DELETE", f"/api/v1/conversations/{gone}"), ("DELETE", f"/api/v1/messages/{held}")):
        response = owner.request(method, path)
        assert response.status_code == 404, (method, path)
        assert b"Drache" not in response.content and SKETCH not in response.content
    reply = owner.post(f"/api/v1/conversations/{gone}/replies", json={"text": "Noch da?"})
    assert reply.status_code == 404
    assert owner.get(f"/api/v1/conversations/{kept}").status_code == 200
    assert gw.api(gw.add_studio("blackrose").token).delete(f"/api/v1/conversations/{kept}").status_code == 404


def test_a_deleted_message_is_gone_and_the_conversation_counts_without_it(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, mid = _open(gw, studio)
    api = gw.api(studio.token)
    first = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert api.post(f"/api/v1/conversations/{conversation_id}/read").status_code == 200
    unwanted = reply_to(gw, studio, mid, "Hier ein Foto.", attachments=[("foto.png", "image/png", PHOTO)])
    held = _hold(gw, studio, mid)
    detail = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert (detail["message_count"], detail["held_count"], detail["unread"]) == (2, 1, True)
    photo = detail["messages"][1]["attachments"][0]["id"]

    assert api.delete(f"/api/v1/messages/{unwanted}").json()["conversation_id"] == conversation_id
    assert api.delete(f"/api/v1/messages/{held}").status_code == 200   # held mail can go too, undecided
    detail = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert ids(detail["messages"]) == ids(first["messages"])
    assert (detail["message_count"], detail["held_count"], detail["unread"]) == (1, 0, False)
    assert detail["last_message_at"] == first["last_message_at"]   # as if the deleted mail had never come
    [item] = api.get("/api/v1/conversations", params={"unread": "false"}).json()["items"]
    assert (item["id"], item["message_count"]) == (conversation_id, 1)
    assert api.get("/api/v1/conversations", params={"unread": "true"}).json()["items"] == []
    assert api.get(f"/api/v1/attachments/{photo}").status_code == 404
    assert api.get("/api/v1/held").json()["items"] == []
    assert api.post(f"/api/v1/held/{held}/accept").status_code == 404
    assert api.delete(f"/api/v1/messages/{unwanted}").status_code == 404   # already gone from sight
    other = gw.api(gw.add_studio("blackrose").token)
    assert other.delete(f"/api/v1/messages/{first['messages'][0]['id']}").status_code == 404


def test_restoring_on_a_paid_plan_brings_back_exactly_what_was_there(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    paid(gw, studio)
    conversation_id, mid = _open(gw, studio, attachments=[("skizze.pdf", "application/pdf", SKETCH)])
    message = reply_to(gw, studio, mid, "Und noch ein Foto.", attachments=[("foto.png", "image/png", PHOTO)])
    _hold(gw, studio, mid)
    _, member_token = add_member(gw, studio)
    api, member = gw.api(studio.token), gw.api(member_token)
    before_list = api.get("/api/v1/conversations").json()
    before = api.get(f"/api/v1/conversations/{conversation_id}").json()
    held_before = api.get("/api/v1/held").json()

    assert api.delete(f"/api/v1/messages/{message}").status_code == 200
    assert member.delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    restored = member.post(f"/api/v1/conversations/{conversation_id}/restore")
    assert restored.status_code == 200
    assert restored.json() == {"kind": "conversation", "id": conversation_id, "conversation_id": conversation_id,
                               "replies_given_up": 0}
    # The message deleted on its own before stays deleted: the conversation is as it was then.
    partial = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert message not in ids(partial["messages"]) and partial["message_count"] == 1
    assert ids(api.get("/api/v1/trash/messages").json()["items"]) == [message]
    assert api.post(f"/api/v1/messages/{message}/restore").json()["conversation_id"] == conversation_id

    # Exactly as it was, but for the time of the change (what `updated_since` finds it by).
    after = api.get(f"/api/v1/conversations/{conversation_id}").json()
    assert after.pop("updated_at") > before.pop("updated_at") and after == before
    after_list = api.get("/api/v1/conversations").json()
    assert after_list["items"][0].pop("updated_at") > before_list["items"][0].pop("updated_at")
    assert after_list == before_list
    assert api.get("/api/v1/held").json() == held_before
    for m in before["messages"]:
        for a in m["attachments"]:
            assert api.get(f"/api/v1/attachments/{a['id']}").status_code == 200
    assert api.get("/api/v1/trash/conversations").json()["items"] == []


def test_restoring_on_the_free_plan_is_402_with_an_explanation(gw: RunningGateway) -> None:
    studio, api, conversation_id, message = thread_of_two(gw, paid_plan=False)
    assert api.delete(f"/api/v1/messages/{message}").status_code == 200
    assert api.delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    assert api.get("/api/v1/trash").json()["restorable"] is False
    assert ids(api.get("/api/v1/trash/conversations").json()["items"]) == [conversation_id]

    refused = api.post(f"/api/v1/conversations/{conversation_id}/restore")
    assert refused.status_code == 402
    assert refused.headers["content-type"].startswith("application/json")
    answer = refused.json()
    assert "restoring deleted data is a paid feature" in answer["detail"]
    assert "monthly or yearly plan" in answer["detail"]
    assert answer["code"] == "paid_plan_required" and "extra" not in answer
    assert api.get(f"/api/v1/conversations/{conversation_id}").status_code == 404   # still deleted

    paid(gw, studio)   # upgrading within the 30 days makes it restorable after all
    assert api.get("/api/v1/trash").json()["restorable"] is True
    assert api.post(f"/api/v1/conversations/{conversation_id}/restore").status_code == 200
    with write_tx(gw.engine) as conn:
        conn.execute(update(SUBSCRIPTION).values(status="canceled"))
    refused = api.post(f"/api/v1/messages/{message}/restore")
    assert refused.status_code == 402 and "paid feature" in refused.json()["detail"]


def test_after_30_days_restoring_is_410_and_after_the_purge_404(gw: RunningGateway) -> None:
    _, api, conversation_id, kept_message = thread_of_two(gw, paid_plan=True)
    assert api.delete(f"/api/v1/messages/{kept_message}").status_code == 200
    assert api.delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    backdate(gw, CONVERSATION, conversation_id, RETENTION + timedelta(minutes=1))

    gone = api.post(f"/api/v1/conversations/{conversation_id}/restore")
    assert gone.status_code == 410
    assert "more than 30 days ago" in gone.json()["detail"] and "cannot be restored" in gone.json()["detail"]
    assert api.get("/api/v1/trash/conversations").json()["items"] == []   # not offered any more

    report = purge(gw.engine, gw.settings)
    assert report.conversations == [conversation_id] and report.messages == []
    after = api.post(f"/api/v1/conversations/{conversation_id}/restore")
    assert after.status_code == 404 and "erased for good 30 days after" in after.json()["detail"]
    assert api.post(f"/api/v1/messages/{kept_message}/restore").status_code == 404   # went with its conversation


def test_restoring_what_is_not_deleted_is_409(gw: RunningGateway) -> None:
    _, api, conversation_id, message = thread_of_two(gw, paid_plan=True)
    live = api.post(f"/api/v1/conversations/{conversation_id}/restore")
    assert live.status_code == 409 and "is not deleted" in live.json()["detail"]
    assert api.post(f"/api/v1/messages/{message}/restore").status_code == 409
    assert api.delete(f"/api/v1/messages/{message}").status_code == 200
    assert api.delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    hidden = api.post(f"/api/v1/messages/{message}/restore")
    assert hidden.status_code == 409 and "restore the conversation first" in hidden.json()["detail"]
    assert api.post(f"/api/v1/conversations/{conversation_id}/restore").status_code == 200
    assert api.post(f"/api/v1/conversations/{conversation_id}/restore").status_code == 409   # a double tap
    assert api.post("/api/v1/messages/999999/restore").status_code == 404
    assert gw.api(gw.add_studio("blackrose").token).post(
        f"/api/v1/conversations/{conversation_id}/restore").status_code == 404


def test_the_trash_lists_what_can_still_be_restored_newest_deletion_first(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    older, _ = _open(gw, studio, subject="Erste")
    newer, mid = _open(gw, studio, subject="Zweite")
    kept, kept_mid = _open(gw, studio, subject="Dritte")
    message = reply_to(gw, studio, kept_mid, "Bitte löschen: falsches Foto")
    member_profile, member_token = add_member(gw, studio)
    api = gw.api(studio.token)
    for path in (f"/api/v1/conversations/{older}", f"/api/v1/conversations/{newer}"):
        assert api.delete(path).status_code == 200
    assert gw.api(member_token).delete(f"/api/v1/messages/{message}").status_code == 200

    trash = api.get("/api/v1/trash").json()
    assert trash["retention_days"] == 30 and trash["restorable"] is False
    conversations = api.get("/api/v1/trash/conversations").json()
    assert ids(conversations["items"]) == [newer, older] and conversations["next_cursor"] is None
    first = conversations["items"][0]
    assert (first["subject"], first["guest"]["email"], first["message_count"]) == ("Zweite", "guest@example.org", 1)
    assert first["purge_at"] == _iso_plus(first["deleted_at"], RETENTION)
    [deleted_message] = api.get("/api/v1/trash/messages").json()["items"]
    assert (deleted_message["id"], deleted_message["conversation_id"], deleted_message["deleted_by"]) == (
        message, kept, member_profile)
    assert deleted_message["excerpt"] == "Bitte löschen: falsches Foto" and deleted_message["state"] == "visible"
    assert gw.api(gw.add_studio("blackrose").token).get("/api/v1/trash/conversations").json()["items"] == []


def test_guest_mail_to_a_deleted_conversation_opens_a_new_one_and_leaves_the_old_deleted(
        gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    paid(gw, studio)
    raw_first = make_mail(subject="Tattoo Anfrage", message_id=new_id(), body="Alter Inhalt: Drache")
    assert gw.send(raw_first, studio.address).code == 250
    [first] = gw.process()
    old = first.outcomes[0].conversation_id
    api = gw.api(studio.token)
    [old_message] = api.get(f"/api/v1/conversations/{old}").json()["messages"]
    assert api.delete(f"/api/v1/conversations/{old}").status_code == 200

    # A reply naming the old thread by In-Reply-To and by subject, and a late retry of the old mail.
    reply = make_mail(subject="Re: Tattoo Anfrage", in_reply_to=f"<{old_message['message_id']}>",
                      references=[f"<{old_message['message_id']}>"], body="Neue Frage: geht Freitag?")
    assert gw.send(reply, studio.address).code == 250
    assert gw.send(raw_first, studio.address).code == 250
    outcomes = [o for r in gw.process() for o in r.outcomes]
    assert sorted(o.rule for o in outcomes) == ["duplicate", "new"]
    [new] = [o.conversation_id for o in outcomes if o.rule == "new"]
    assert new != old

    [item] = api.get("/api/v1/conversations").json()["items"]
    assert (item["id"], item["message_count"], item["unread"]) == (new, 1, True)
    detail = api.get(f"/api/v1/conversations/{new}").json()
    assert [m["text"] for m in detail["messages"]] == ["Neue Frage: geht Freitag?"]
    assert "Drache" not in json.dumps(detail)
    assert api.get(f"/api/v1/conversations/{old}").status_code == 404
    assert ids(api.get("/api/v1/trash/conversations").json()["items"]) == [old]

    assert api.post(f"/api/v1/conversations/{old}/restore").status_code == 200   # restored unchanged, beside it
    restored = api.get(f"/api/v1/conversations/{old}").json()
    assert [m["text"] for m in restored["messages"]] == ["Alter Inhalt: Drache"] and restored["message_count"] == 1


def test_queued_replies_wait_while_deleted_and_go_out_when_restored(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    paid(gw, studio)
    conversation_id, _ = _open(gw, studio)
    api = gw.api(studio.token)
    queued = api.post(f"/api/v1/conversations/{conversation_id}/replies", json={"text": "Freitag passt."})
    assert queued.status_code == 202 and queued.json()["delivery"] == "queued"
    outbox = Outbox(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=[])

    assert api.delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    assert outbox.claim(limit=10) == []
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(OUTBOUND_JOB.c.status)).scalar_one() == "queued"
    assert api.post(f"/api/v1/conversations/{conversation_id}/restore").status_code == 200
    assert [job.message_row_id for job in outbox.claim(limit=10)] == [queued.json()["id"]]

    # A reply deleted on its own waits too.
    second = api.post(f"/api/v1/conversations/{conversation_id}/replies", json={"text": "Oder Samstag?"}).json()
    assert api.delete(f"/api/v1/messages/{second['id']}").status_code == 200
    assert outbox.claim(limit=10) == []
    assert api.post(f"/api/v1/messages/{second['id']}/restore").status_code == 200
    assert [job.message_row_id for job in outbox.claim(limit=10)] == [second["id"]]


def test_a_reply_restored_after_its_retry_window_is_failed_not_sent_late(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    paid(gw, studio)
    conversation_id, _ = _open(gw, studio)
    api = gw.api(studio.token)
    queued = api.post(f"/api/v1/conversations/{conversation_id}/replies", json={"text": "Freitag passt."}).json()
    deleted = api.delete(f"/api/v1/conversations/{conversation_id}").json()
    later = _parse(deleted["deleted_at"]) + timedelta(seconds=gw.settings.outbound_retry_for + 60)

    with write_tx(gw.engine) as conn:
        restored = restore_conversation(conn, studio.id, conversation_id, gw.settings, later)
    assert restored is not None and restored.replies_given_up == 1
    assert Outbox(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=[]).claim(limit=10) == []
    [message] = [m for m in api.get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
                 if m["id"] == queued["id"]]
    assert (message["delivery"], message["delivery_error"]) == ("failed", STALE_REPLY)


# --- the purge ---------------------------------------------------------------------------------

def _counts(gw: RunningGateway) -> tuple[int, int, int]:
    with read_tx(gw.engine) as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()  # type: ignore[return-value]
                     for t in (CONVERSATION, MESSAGE, ATTACHMENT))


def _blob_exists(gw: RunningGateway, data: bytes) -> bool:
    with read_tx(gw.engine) as conn:
        return conn.execute(select(BLOB.c.sha256).where(BLOB.c.sha256 == sha256_hex(data))).first() is not None


def test_the_purge_erases_what_was_deleted_30_days_ago_logging_each_erasure_first(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    gone, _ = _open(gw, studio, subject="Weg damit", attachments=[("skizze.pdf", "application/pdf", SKETCH)])
    kept, mid = _open(gw, studio, subject="Bleibt")
    message = reply_to(gw, studio, mid, "Foto", attachments=[("foto.png", "image/png", PHOTO)])
    api = gw.api(studio.token)
    deleted_at = _parse(api.delete(f"/api/v1/conversations/{gone}").json()["deleted_at"])
    assert api.delete(f"/api/v1/messages/{message}").status_code == 200
    before = _counts(gw)
    log = deletion_log(gw.settings)

    assert purge(gw.engine, gw.settings, deleted_at + RETENTION - timedelta(seconds=5)).conversations == []
    dry = purge(gw.engine, gw.settings, deleted_at + RETENTION + timedelta(minutes=1), dry_run=True)
    assert (dry.conversations, dry.messages, dry.dry_run) == ([gone], [message], True)
    assert _counts(gw) == before and log.entries() == []

    now = deleted_at + RETENTION + timedelta(minutes=1)
    report = purge(gw.engine, gw.settings, now)
    assert (report.conversations, report.messages) == ([gone], [message])
    assert [(e.kind, e.studio_id, e.object_id, e.at) for e in log.entries()] == [
        ("conversation", studio.id, gone, now), ("message", studio.id, message, now)]
    assert _counts(gw) == (1, 1, 0)
    assert not _blob_exists(gw, SKETCH) and not _blob_exists(gw, PHOTO)
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(func.count()).select_from(TOMBSTONE)).scalar_one() == 2
    detail = api.get(f"/api/v1/conversations/{kept}").json()
    assert detail["message_count"] == 1 and ids(detail["messages"]) != [message]
    assert purge(gw.engine, gw.settings, now).conversations == []   # nothing twice
    assert len(log.entries()) == 2


class BrokenLog(DeletionLog):
    """A deletion log on a full or vanished disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, b"k" * 32)
        self.tried: list[tuple[Kind, int]] = []

    def append(self, kind: Kind, studio_id: int, object_id: int, at: Any = None, by: Any = None) -> Erasure:
        self.tried.append((kind, object_id))
        raise OSError(28, "No space left on device")


def test_the_purge_erases_nothing_it_could_not_log(gw: RunningGateway, tmp_path: Path) -> None:
    studio = gw.add_studio("inkwell")
    paid(gw, studio)
    conversation_id, _ = _open(gw, studio, attachments=[("skizze.pdf", "application/pdf", SKETCH)])
    api = gw.api(studio.token)
    deleted_at = _parse(api.delete(f"/api/v1/conversations/{conversation_id}").json()["deleted_at"])
    broken = BrokenLog(tmp_path / "full-disk" / "deletion-log.jsonl")

    with pytest.raises(OSError):
        purge(gw.engine, gw.settings, deleted_at + RETENTION, erasures=broken)
    assert broken.tried == [("conversation", conversation_id)]
    assert _counts(gw) == (1, 1, 1) and _blob_exists(gw, SKETCH)
    assert api.post(f"/api/v1/conversations/{conversation_id}/restore").status_code == 200


def test_the_worker_purges_by_itself(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    conversation_id, _ = _open(gw, studio)
    assert gw.api(studio.token).delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    backdate(gw, CONVERSATION, conversation_id, RETENTION + timedelta(minutes=1))

    worker = start_gateway(gw.settings, roles=("worker",))
    try:
        assert worker.gateway.purger is not None and worker.gateway.purger.wait_rounds(1)
    finally:
        worker.stop()
    assert _counts(gw) == (0, 0, 0)
    assert [(e.kind, e.object_id) for e in deletion_log(gw.settings).entries()] == [("conversation", conversation_id)]


def test_gateway_purge_command(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    old, _ = _open(gw, studio, subject="Alt")
    recent, _ = _open(gw, studio, subject="Neu")
    api = gw.api(studio.token)
    for conversation_id in (old, recent):
        assert api.delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    backdate(gw, CONVERSATION, old, RETENTION + timedelta(hours=1))

    dry = json.loads(_cli(gw, "purge", "--dry-run", "--json"))
    assert (dry["conversations"], dry["messages"], dry["dry_run"]) == ([old], [], True)
    assert _counts(gw)[0] == 2
    assert "1 conversation(s) and 0 message(s)" in _cli(gw, "purge")
    with read_tx(gw.engine) as conn:
        assert list(conn.execute(select(CONVERSATION.c.id)).scalars()) == [recent]
    assert [(e.kind, e.object_id) for e in deletion_log(gw.settings).entries()] == [("conversation", old)]


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso_plus(value: str, delta: timedelta) -> str:
    return (_parse(value) + delta).isoformat().replace("+00:00", "Z")
