"""Part of "data that stays deleted": what the studio deleted no longer counts for anything.

Mail arrives over real SMTP, the studio acts over real HTTP, on SQLite and PostgreSQL.
"""
from __future__ import annotations

from sqlalchemy import select

from gateway.store.db import read_tx
from gateway.store.tables import MESSAGE
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
