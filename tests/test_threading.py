"""Replies find their conversation, by the rule recorded on each message."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select, update

from gateway.mail.addresses import reply_address, reply_token
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import CONVERSATION, MESSAGE
from tests.conftest import MAIL_DOMAIN, SECRET, RunningGateway, fixture_bytes
from tests.mail import make_mail, new_id

GUEST = "Lena Müller <guest@example.org>"


def _open(gw: RunningGateway, slug: str = "inkwell", **kwargs: object) -> tuple[int, str]:
    """Send a first inquiry; return (conversation id, its Message-ID)."""
    studio = gw.studios.get(slug) or gw.add_studio(slug)
    mid = new_id()
    assert gw.send(make_mail(message_id=mid, to=studio.address, **kwargs), studio.address).code == 250  # type: ignore[arg-type]
    [result] = gw.process()
    [outcome] = result.outcomes
    assert outcome.rule == "new"
    assert outcome.conversation_id is not None
    return outcome.conversation_id, mid.strip("<>")


def _message(gw: RunningGateway, inbound_id: int | None) -> dict[str, object]:
    with read_tx(gw.engine) as conn:
        return dict(conn.execute(select(MESSAGE).where(MESSAGE.c.inbound_mail_id == inbound_id)).one()._mapping)


def test_reply_to_the_signed_reply_address_joins_without_any_headers(gw: RunningGateway) -> None:
    conversation_id, _ = _open(gw)
    studio = gw.studios["inkwell"]
    address = reply_address(SECRET.encode(), "inkwell", studio.id, conversation_id, MAIL_DOMAIN)
    reply = gw.send(make_mail(subject="ganz neuer Betreff", to=address), address)
    gw.process()
    message = _message(gw, reply.inbound_id)
    assert (message["conversation_id"], message["thread_rule"], message["state"]) == (
        conversation_id, "reply_address", "visible")


def test_reply_by_in_reply_to(gw: RunningGateway) -> None:
    conversation_id, mid = _open(gw)
    reply = gw.send(make_mail(subject="Termin?", in_reply_to=f"<{mid}>"), "inkwell@mail.test")
    gw.process()
    message = _message(gw, reply.inbound_id)
    assert (message["conversation_id"], message["thread_rule"]) == (conversation_id, "in_reply_to")


def test_reply_by_references_when_in_reply_to_is_unknown(gw: RunningGateway) -> None:
    conversation_id, mid = _open(gw)
    reply = gw.send(make_mail(subject="Termin?", in_reply_to=new_id(), references=[f"<{mid}>", new_id()]),
                    "inkwell@mail.test")
    gw.process()
    message = _message(gw, reply.inbound_id)
    assert (message["conversation_id"], message["thread_rule"]) == (conversation_id, "references")


def test_subject_fallback_for_clients_that_drop_headers(gw: RunningGateway) -> None:
    conversation_id, _ = _open(gw, subject="Tattoo Anfrage Unterarm")
    reply = gw.send(make_mail(subject="AW: Re: WG:  tattoo anfrage unterarm"), "inkwell@mail.test")
    other = gw.send(make_mail(subject="Etwas ganz anderes"), "inkwell@mail.test")
    gw.process()
    message = _message(gw, reply.inbound_id)
    assert (message["conversation_id"], message["thread_rule"]) == (conversation_id, "subject")
    assert _message(gw, other.inbound_id)["thread_rule"] == "new"


def test_subject_fallback_ignores_conversations_older_than_the_window(gw: RunningGateway) -> None:
    conversation_id, _ = _open(gw, subject="Altes Thema")
    with write_tx(gw.engine) as conn:
        conn.execute(update(CONVERSATION).where(CONVERSATION.c.id == conversation_id).values(
            last_message_at=CONVERSATION.c.last_message_at - timedelta(days=31)))
    reply = gw.send(make_mail(subject="Re: Altes Thema"), "inkwell@mail.test")
    gw.process()
    assert _message(gw, reply.inbound_id)["thread_rule"] == "new"


def test_reply_from_a_stranger_is_held_not_merged(gw: RunningGateway) -> None:
    conversation_id, mid = _open(gw)
    forged = gw.send(make_mail(from_="Mallory <mallory@evil.example>", in_reply_to=f"<{mid}>",
                               headers={"Authentication-Results": "mx.mail.test; dkim=pass; spf=pass"}),
                     "inkwell@mail.test")
    gw.process()
    message = _message(gw, forged.inbound_id)
    assert (message["conversation_id"], message["state"]) == (conversation_id, "held")
    detail = gw.api(gw.studios["inkwell"].token).get(f"/api/v1/conversations/{conversation_id}").json()
    assert detail["held_count"] == 1 and detail["message_count"] == 1
    assert [m["from"]["email"] for m in detail["messages"]] == ["guest@example.org"]


def test_tokens_and_message_ids_of_another_studio_attach_nothing(gw: RunningGateway) -> None:
    other_conversation, other_mid = _open(gw, "blackrose")
    victim = gw.add_studio("inkwell")
    stolen_token = reply_token(SECRET.encode(), gw.studios["blackrose"].id, other_conversation)
    address = f"inkwell+{stolen_token}@{MAIL_DOMAIN}"
    first = gw.send(make_mail(subject="eins", to=address), address)
    second = gw.send(make_mail(subject="zwei", in_reply_to=f"<{other_mid}>"), victim.address)
    guessed = gw.send(make_mail(subject="drei"), f"inkwell+c{other_conversation}-aaaaaaaaaaaaaaaa@{MAIL_DOMAIN}")
    gw.process()
    for reply in (first, second, guessed):
        message = _message(gw, reply.inbound_id)
        assert message["thread_rule"] == "new" and message["conversation_id"] != other_conversation


def test_reply_reopens_a_closed_conversation(gw: RunningGateway) -> None:
    conversation_id, mid = _open(gw)
    with write_tx(gw.engine) as conn:
        conn.execute(update(CONVERSATION).where(CONVERSATION.c.id == conversation_id).values(status="closed"))
    gw.send(make_mail(in_reply_to=f"<{mid}>"), "inkwell@mail.test")
    gw.process()
    detail = gw.api(gw.studios["inkwell"].token).get(f"/api/v1/conversations/{conversation_id}").json()
    assert detail["status"] == "open" and detail["message_count"] == 2


def test_out_of_office_never_opens_a_conversation_but_joins_one(gw: RunningGateway) -> None:
    conversation_id, mid = _open(gw)
    ooo = {"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"}
    lone = gw.send(make_mail(subject="Abwesenheitsnotiz: bin im Urlaub", headers=ooo), "inkwell@mail.test")
    joined = gw.send(make_mail(subject="Automatische Antwort: Tattoo Anfrage", in_reply_to=f"<{mid}>",
                               headers=ooo), "inkwell@mail.test")
    results = {r.inbound_id: r for r in gw.process()}
    assert [o.rule for o in results[lone.inbound_id].outcomes] == ["unthreaded-automatic"]
    message = _message(gw, joined.inbound_id)
    assert (message["conversation_id"], message["automatic"]) == (conversation_id, True)
    items = gw.api(gw.studios["inkwell"].token).get("/api/v1/conversations").json()["items"]
    assert len(items) == 1
    detail = gw.api(gw.studios["inkwell"].token).get(f"/api/v1/conversations/{conversation_id}").json()
    assert [m["automatic"] for m in detail["messages"]] == [False, True]


def test_bounce_links_to_the_message_it_bounces(gw: RunningGateway) -> None:
    conversation_id, _ = _open(gw)
    studio = gw.studios["inkwell"]
    outbound_id = "reply-1@mail.test"
    with write_tx(gw.engine) as conn:  # an outbound reply as the (later) outbox records it
        sent = conn.execute(insert(MESSAGE).returning(MESSAGE.c.id), {
            "studio_id": studio.id, "conversation_id": conversation_id, "direction": "outbound",
            "message_id": outbound_id, "delivery": "sent", "subject": "Re: Tattoo Anfrage"}).scalar_one()
    dsn = fixture_bytes("dsn_bounce.eml").replace(b"studio-5001@ink.example", outbound_id.encode())
    assert outbound_id.encode() in dsn
    reply = gw.send(dsn, studio.address, mail_from="")
    gw.process()
    message = _message(gw, reply.inbound_id)
    assert (message["automatic"], message["auto_kind"], message["conversation_id"]) == (True, "bounce", conversation_id)
    with read_tx(gw.engine) as conn:
        original = conn.execute(select(MESSAGE).where(MESSAGE.c.id == sent)).one()
    assert (original.delivery, original.bounce_of_id) == ("bounced", message["id"])


def test_flood_guard_refuses_new_conversations_but_passes_replies(tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings, start_gateway

    running = start_gateway(make_settings(tmp_path, database_url, flood_max_new_per_hour=3))
    try:
        studio = running.add_studio("inkwell")
        mids = []
        for i in range(3):
            mids.append(new_id())
            assert running.send(make_mail(subject=f"Anfrage {i}", message_id=mids[-1]), studio.address).code == 250
            running.process()
        refused = running.send(make_mail(subject="Anfrage 4"), studio.address)
        assert refused.code == 450 and refused.text.startswith("4.7.1")
        assert running.send(make_mail(subject="Re: egal", in_reply_to=mids[0]), studio.address).code == 250
        assert running.send(make_mail(subject="Re: Anfrage 1"), studio.address).code == 250
        assert running.send(make_mail(subject="Anfrage 5", from_="other@example.org"), studio.address).code == 250
    finally:
        running.stop()


def test_a_chunk_acknowledges_only_for_the_studio_that_asked(gw: RunningGateway) -> None:
    """The processor caches each studio's acknowledgement setting for one chunk: a studio that
    asks for acknowledgements must not make another studio's mail in the same chunk answered,
    nor the other way round."""
    from gateway.store.tables import STUDIO

    quiet = gw.add_studio("quiet")
    asking = gw.add_studio("asking")
    with write_tx(gw.engine) as conn:
        conn.execute(update(STUDIO).where(STUDIO.c.id == asking.id).values(acknowledge_inquiries=True))
    for studio, sender in ((quiet, "ann@example.org"), (asking, "ben@example.org"), (quiet, "cem@example.org"),
                           (asking, "dora@example.org")):
        assert gw.send(make_mail(subject=f"Anfrage von {sender}", from_=sender, to=studio.address),
                       studio.address).code == 250
    results = gw.process()
    assert len(results) == 4 and all(r.status == "done" for r in results)
    with read_tx(gw.engine) as conn:
        answered = sorted(conn.execute(select(MESSAGE.c.studio_id).where(
            MESSAGE.c.direction == "outbound", MESSAGE.c.auto_kind == "acknowledgement")).scalars())
    assert answered == [asking.id, asking.id]


def test_one_chunk_knows_the_guest_it_created_and_the_names_it_learnt(gw: RunningGateway) -> None:
    """A chunk asks for its senders' guest rows once, before threading (threader.ChunkLookups):
    a guest created or named by an earlier message of the chunk must be found by a later one."""
    from gateway.store.tables import GUEST as GUEST_TABLE

    studio = gw.add_studio("inkwell")
    mails = [make_mail(subject="Erste Anfrage", from_="neu@example.org"),
             make_mail(subject="Re: Erste Anfrage", from_="Nora Neu <neu@example.org>"),
             make_mail(subject="Ganz anderes Thema", from_="Nora Neu <neu@example.org>")]
    for raw in mails:
        assert gw.send(raw, studio.address).code == 250
    results = gw.process()
    assert [o.rule for r in results for o in r.outcomes] == ["new", "subject", "new"]
    with read_tx(gw.engine) as conn:
        guests = conn.execute(select(GUEST_TABLE.c.id, GUEST_TABLE.c.name)).all()
        conversations = conn.execute(select(CONVERSATION.c.guest_id)).scalars().all()
    assert len(guests) == 1 and guests[0].name == "Nora Neu"
    assert conversations == [guests[0].id, guests[0].id]


def test_an_erased_mail_delivered_again_stays_erased_beside_new_mail_in_one_chunk(gw: RunningGateway) -> None:
    from gateway.lifecycle.erasure import erase_conversation

    studio = gw.add_studio("inkwell")
    raw = make_mail(subject="Cover-up", message_id=new_id())
    gw.send(raw, studio.address)
    [first] = gw.process()
    with write_tx(gw.engine) as conn:
        assert erase_conversation(conn, studio.id, first.outcomes[0].conversation_id)
    gw.send(make_mail(subject="Neue Idee", from_="other@example.org"), studio.address)
    gw.send(raw, studio.address)              # a late retry by the guest's server
    gw.send(make_mail(subject="Noch eine", from_="third@example.org"), studio.address)
    results = gw.process()
    assert [o.rule for r in results for o in r.outcomes] == ["new", "erased", "new"]


def test_times_the_processor_writes_are_stored_as_sqlalchemy_writes_them(gw: RunningGateway) -> None:
    """The threader's inserts bypass SQLAlchemy (gateway/store/db.DriverSQL): on SQLite their times
    must still be SQLAlchemy's UTC text, or they sort and compare apart from every other row."""
    import re

    if gw.engine.dialect.name != "sqlite":
        return
    studio = gw.add_studio("inkwell")
    gw.send(make_mail(subject="Zeitformat"), studio.address)
    gw.send(make_mail(subject="Re: Zeitformat"), studio.address)
    gw.process()
    with read_tx(gw.engine) as conn:
        stored = [value for row in conn.exec_driver_sql(
            "SELECT m.sent_at, m.received_at, c.created_at, c.last_message_at, g.created_at FROM message m "
            "JOIN conversation c ON c.id = m.conversation_id JOIN guest g ON g.id = c.guest_id") for value in row]
    assert len(stored) == 10
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", value) for value in stored), stored
