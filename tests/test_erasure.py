"""Hard erasure (gateway/lifecycle/erasure.py): what goes, what stays, and that erased mail stays erased.

Mail arrives over real SMTP into a real database; erasure runs as the purge, guest erasure and
account deletion call it. Shared bytes (the same photo sent to two studios) must survive the
erasure of one of them; everything else of the erased studio must be gone.
"""
from __future__ import annotations

from sqlalchemy import func, select

from gateway.store.db import read_tx, write_tx
from gateway.store.tables import BLOB, CONVERSATION, GUEST, INBOUND, MESSAGE, TOMBSTONE
from gateway.lifecycle.erasure import erase_conversation, erase_guest, erase_message, erase_studio, studio_tables
from gateway.store.blobs import sha256_hex
from tests.conftest import MAIL_DOMAIN, RunningGateway
from tests.mail import make_mail, new_id

PHOTO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
SKETCH = b"%PDF-1.4 only inkwell has this " + bytes(200)


def _rows_of(gw: RunningGateway, studio_id: int) -> dict[str, int]:
    counts = {}
    with read_tx(gw.engine) as conn:
        for table in studio_tables():
            column = table.c.id if table.name == "studio" else table.c.studio_id
            counts[table.name] = conn.execute(select(func.count()).select_from(table)
                                              .where(column == studio_id)).scalar_one()
    return counts


def _blob_exists(gw: RunningGateway, data: bytes) -> bool:
    with read_tx(gw.engine) as conn:
        return conn.execute(select(BLOB.c.sha256).where(BLOB.c.sha256 == sha256_hex(data))).first() is not None


def test_erasing_a_studio_leaves_no_row_or_byte_of_it_and_spares_the_other(gw: RunningGateway) -> None:
    ink, other = gw.add_studio("inkwell"), gw.add_studio("needle")
    shared = make_mail(subject="Same photo to both", attachments=[("arm.png", "image/png", PHOTO)],
                       to=f"{ink.address}, {other.address}")
    assert gw.send(shared, [ink.address, other.address]).code == 250
    assert gw.send(make_mail(subject="Sketch", attachments=[("s.pdf", "application/pdf", SKETCH)]),
                   ink.address).code == 250
    no_sender = b"Subject: who wrote this?\r\n\r\nnobody signs a mail that gets quarantined\r\n"
    assert gw.send(no_sender, ink.address, mail_from="").code == 250
    results = gw.process()
    assert sorted(r.status for r in results) == ["done", "done", "quarantined"]
    before_other = _rows_of(gw, other.id)
    assert _rows_of(gw, ink.id)["message"] == 2

    with write_tx(gw.engine) as conn:
        assert erase_studio(conn, ink.id, MAIL_DOMAIN) is True
    with write_tx(gw.engine) as conn:
        assert erase_studio(conn, ink.id, MAIL_DOMAIN) is False  # idempotent

    assert set(_rows_of(gw, ink.id).values()) == {0}
    assert _rows_of(gw, other.id) == before_other
    assert _blob_exists(gw, PHOTO), "the other studio's copy of the shared photo must stay"
    assert not _blob_exists(gw, SKETCH) and not _blob_exists(gw, no_sender)
    with read_tx(gw.engine) as conn:
        rcpts = list(conn.execute(select(INBOUND.c.rcpt_to)).scalars())
    assert rcpts and all(other.address in r for r in rcpts), "only mail that names the other studio remains"


def test_erased_conversation_stays_erased_when_the_same_mail_is_delivered_again(gw: RunningGateway) -> None:
    ink = gw.add_studio("inkwell")
    raw = make_mail(subject="Cover-up", message_id=new_id(), attachments=[("s.pdf", "application/pdf", SKETCH)])
    assert gw.send(raw, ink.address).code == 250
    [done] = gw.process()
    with read_tx(gw.engine) as conn:
        conversation_id = conn.execute(select(MESSAGE.c.conversation_id)).scalar_one()
    with write_tx(gw.engine) as conn:
        assert erase_conversation(conn, ink.id, conversation_id)
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(func.count()).select_from(CONVERSATION)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(TOMBSTONE)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(INBOUND)).scalar_one() == 0
    assert not _blob_exists(gw, SKETCH)

    assert gw.send(raw, ink.address).code == 250          # a late retry by the guest's server
    [again] = gw.process()
    assert again.status == "done"
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(func.count()).select_from(MESSAGE)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(CONVERSATION)).scalar_one() == 0


def test_erasing_a_message_or_a_guest_takes_only_theirs(gw: RunningGateway) -> None:
    ink = gw.add_studio("inkwell")
    first_id = new_id()
    assert gw.send(make_mail(subject="Rose", message_id=first_id), ink.address).code == 250
    assert gw.send(make_mail(subject="Re: Rose", in_reply_to=first_id, references=[first_id]),
                   ink.address).code == 250
    assert gw.send(make_mail(subject="Lion", from_="Tom <tom@example.net>"), ink.address,
                   mail_from="tom@example.net").code == 250
    gw.process()
    with read_tx(gw.engine) as conn:
        rose = conn.execute(select(MESSAGE.c.id, MESSAGE.c.conversation_id).where(MESSAGE.c.subject == "Re: Rose")).one()
        lena = conn.execute(select(GUEST.c.id).where(GUEST.c.email == "guest@example.org")).scalar_one()
    with write_tx(gw.engine) as conn:
        assert erase_message(conn, ink.id, rose.id)
        assert not erase_message(conn, ink.id + 1, rose.id)
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(CONVERSATION.c.message_count).where(
            CONVERSATION.c.id == rose.conversation_id)).scalar_one() == 1
    with write_tx(gw.engine) as conn:
        assert erase_guest(conn, ink.id, lena, gw.settings.mail_domain)
    with read_tx(gw.engine) as conn:
        assert list(conn.execute(select(GUEST.c.email)).scalars()) == ["tom@example.net"]
        assert list(conn.execute(select(MESSAGE.c.subject)).scalars()) == ["Lion"]
