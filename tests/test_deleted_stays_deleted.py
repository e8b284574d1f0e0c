"""Part of "data that stays deleted": what the studio deleted no longer counts for anything.

Mail arrives over real SMTP, the studio acts over real HTTP, on SQLite and PostgreSQL.
"""
from __future__ import annotations

import json

from sqlalchemy import func, select, update

from gateway.store.db import read_tx, write_tx
from gateway.store.tables import BLOB, GUEST, INBOUND, MESSAGE
from tests.access import STRANGER, held_message
from tests.conftest import RunningGateway
from tests.mail import make_mail
from tests.test_api_manage import _open
from tests.test_lifecycle import paid


def _state_of_next(gw: RunningGateway, slug: str, guest_mid: str, body: str) -> str:
    sent = gw.send(make_mail(subject="Re: Tattoo Anfrage", from_=STRANGER, in_reply_to=guest_mid, body=body),
                   f"{slug}@mail.test", mail_from=STRANGER.split("<")[-1].rstrip(">"))
    assert sent.code == 250
    gw.process()
    with read_tx(gw.engine) as conn:
        return str(conn.execute(select(MESSAGE.c.state).where(MESSAGE.c.inbound_mail_id == sent.inbound_id))
                   .scalar_one())


def test_a_deleted_message_no_longer_makes_its_sender_a_participant(gw: RunningGateway) -> None:
    """Before: the accepted-then-deleted mail of a stranger still let their next mail in
    unheld, as if the studio had never changed its mind."""
    studio = gw.add_studio("inkwell")
    paid(gw, studio)
    api = gw.api(studio.token)
    _, guest_mid = _open(gw, studio)
    held = held_message(gw, studio, guest_mid)
    assert api.post(f"/api/v1/held/{held}/accept").status_code == 200
    assert _state_of_next(gw, "inkwell", guest_mid, "Noch eine Frage") == "visible"   # a participant now

    with read_tx(gw.engine) as conn:
        theirs = list(conn.execute(select(MESSAGE.c.id).where(
            MESSAGE.c.from_email == STRANGER.split("<")[-1].rstrip(">"))).scalars())
    for message_id in theirs:
        assert api.delete(f"/api/v1/messages/{message_id}").status_code == 200
    assert _state_of_next(gw, "inkwell", guest_mid, "Und noch eine") == "held"

    assert api.post(f"/api/v1/messages/{theirs[0]}/restore").status_code == 200   # restored: vouches again
    assert _state_of_next(gw, "inkwell", guest_mid, "Zuletzt") == "visible"


def test_erasing_a_guest_takes_their_quarantined_and_automatic_mail_and_their_address_in_cc(
        gw: RunningGateway) -> None:
    """Before: the guest's quarantined mail and their unthreaded auto-reply stayed in
    inbound_mail with their raw bytes, and a friend's inquiry still listed them in Cc."""
    studio = gw.add_studio("inkwell")
    lena = "guest@example.org"
    _open(gw, studio)
    auto = gw.send(make_mail(subject="Abwesenheitsnotiz", body="Ich bin im Urlaub.",
                             headers={"Auto-Submitted": "auto-replied"}), studio.address)
    parked = gw.send(make_mail(subject="Noch eine Frage", body="Kaputt geparkt"), studio.address)
    friend = gw.send(make_mail(subject="Gruppentermin", from_="Tom <tom@example.net>",
                               headers={"Cc": f"Lena <{lena.upper()}>, Ada <ada@example.net>"}),
                     studio.address, mail_from="tom@example.net")
    other = gw.add_studio("needle")
    elsewhere = gw.send(make_mail(subject="Anderes Studio", to=other.address), other.address)
    with write_tx(gw.engine) as conn:   # as the three-attempts rule parks a mail that keeps failing
        conn.execute(update(INBOUND).where(INBOUND.c.id == parked.inbound_id).values(
            status="quarantined", attempts=3, error="RuntimeError: parser bug"))
    gw.process()
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(INBOUND.c.status).where(INBOUND.c.id == auto.inbound_id)).scalar_one() == "done"
        assert conn.execute(select(func.count()).select_from(MESSAGE).where(
            MESSAGE.c.inbound_mail_id.in_([auto.inbound_id, parked.inbound_id]))).scalar_one() == 0
        guest_id = conn.execute(select(GUEST.c.id).where(GUEST.c.studio_id == studio.id,
                                                         GUEST.c.email == lena)).scalar_one()
        shas = list(conn.execute(select(INBOUND.c.raw_sha256).where(
            INBOUND.c.id.in_([auto.inbound_id, parked.inbound_id]))).scalars())

    assert gw.api(studio.token).post(f"/api/v1/guests/{guest_id}/erase").status_code == 200

    with read_tx(gw.engine) as conn:
        left = set(conn.execute(select(INBOUND.c.id)).scalars())
        assert auto.inbound_id not in left and parked.inbound_id not in left
        assert {friend.inbound_id, elsewhere.inbound_id} <= left   # Tom's mail and the other studio's stay
        assert conn.execute(select(func.count()).select_from(BLOB).where(BLOB.c.sha256.in_(shas))).scalar_one() == 0
        cc = conn.execute(select(MESSAGE.c.cc_json).where(MESSAGE.c.inbound_mail_id == friend.inbound_id)).scalar_one()
    assert [p["email"] for p in json.loads(cc)] == ["ada@example.net"]
